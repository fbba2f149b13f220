"""The import contract of dagan/ (.importlinter): floors, no circles, independent rooms.

import-linter builds the import graph from the source (imports inside functions included) and checks each contract;
these tests run it on the repository and on a copy with a deliberately broken import, to show that a new circle or
an upward import fails the suite with the offending import named.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter is a [dev] extra: "
                                "pip install -e '.[dev]' (bash scripts/test.sh installs it)")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run lint-imports on the ``dagan`` package under ``root`` with ``root``'s .importlinter."""
    environment = {**os.environ, "PYTHONPATH": str(root)}  # ahead of the editable install's finder
    command = [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--config", str(root / ".importlinter")]  # import-linter
    #         2.17 also takes the file as an argument; 2.15 (Python 3.10's) only --config
    return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of dagan/ and .importlinter to break on purpose."""
    shutil.copytree(REPO_ROOT / "dagan", tmp_path / "dagan", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_repository_keeps_every_contract():
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    for contract in ("Floors", "No import circles", "One network per file", "tabs", "modes", "training stages"):
        assert contract in result.stdout


def test_an_upward_import_breaks_the_floors_and_is_named(package_copy):
    add_line(package_copy / "dagan" / "networks" / "blocks.py", "from dagan.app.common import scrub  # noqa")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "Floors" in result.stdout and "BROKEN" in result.stdout
    assert "dagan.networks.blocks -> dagan.app.common" in result.stdout


def test_a_circle_inside_a_package_is_named(package_copy):
    add_line(package_copy / "dagan" / "faces" / "pose.py", "def _circle():\n    from dagan.faces import detection")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "No import circles" in result.stdout and "BROKEN" in result.stdout
    assert "No cycles are allowed in dagan.faces" in result.stdout
    assert ".pose -> .detection" in result.stdout


def test_a_new_room_must_be_given_a_floor(package_copy):
    (package_copy / "dagan" / "unplaced.py").write_text('"""A module that no floor lists."""\n', encoding="utf-8")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "dagan.unplaced" in result.stdout


def test_independent_rooms_stay_apart(package_copy):
    add_line(package_copy / "dagan" / "app" / "speech_tab.py", "from dagan.app.video_tab import Animator  # noqa")
    result = lint_imports(package_copy)
    assert result.returncode != 0
    assert "dagan.app.speech_tab -> dagan.app.video_tab" in result.stdout
