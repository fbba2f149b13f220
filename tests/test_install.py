"""The README's install line gives demo.py's default behaviour at its default speed: in a Python that sees only the
distributions ``pip install -e .`` brings (setup.py's core requirements and theirs, found in this environment and
linked into a fresh folder; nothing is downloaded), ``demo.py`` with the default flags crops the face of an uncropped
photo (dlib) and runs OpenVINO on the CPU."""
from __future__ import annotations

import os
import platform
import runpy
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, config_path

pytestmark = pytest.mark.skipif(
    (platform.system(), platform.machine()) not in (("Linux", "x86_64"), ("Windows", "AMD64")),
    reason="the default path is core only where PyPI has wheels of dlib-bin and OpenVINO (setup.py WHEELS)")


def core_requirements() -> list[str]:
    """setup.py's ``install_requires``, read by running setup.py with ``setuptools.setup`` replaced."""
    import setuptools

    captured = {}
    original = setuptools.setup
    setuptools.setup = lambda **arguments: captured.update(arguments)
    try:
        cwd = os.getcwd()
        os.chdir(REPO_ROOT)
        runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
        setuptools.setup = original
    return captured["install_requires"]


def requirement_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions that ``requirements`` pull in (markers evaluated here, extras not taken)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    pending = list(requirements)
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        distribution = metadata.distribution(requirement.name)  # PackageNotFoundError: not installed here
        found[name] = distribution
        pending += distribution.requires or []
    return found


def link_distributions(distributions, folder: Path) -> None:
    """A site folder holding links to each distribution's top-level files (packages, modules, .dist-info)."""
    folder.mkdir()
    for distribution in distributions:
        root = Path(distribution.locate_file(""))
        for top in {Path(file).parts[0] for file in distribution.files or [] if not str(file).startswith("..")}:
            if not (folder / top).exists() and (root / top).exists():
                (folder / top).symlink_to(root / top)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny checkpoint, the whole astronaut photo (uncropped) and the sample clip's first 8 frames."""
    from skimage import data

    from dagan.config import load_config
    from dagan.io import open_video, open_writer, write_png
    from dagan.model import DaGAN

    root = tmp_path_factory.mktemp("install")
    torch.manual_seed(0)
    DaGAN(load_config(config_path("tiny.yaml"))).save(root / "dagan.pt")
    write_png(root / "photo.png", data.astronaut())
    frames = open_video(REPO_ROOT / "data" / "samples" / "driving.mp4").read_all()[:8]
    with open_writer(root / "driving.mp4", 25.0) as writer:
        for frame in frames:
            writer.write(frame)
    return root


def test_the_lead_install_line_runs_demo_with_face_crop_and_openvino(inputs, tmp_path):
    try:
        distributions = requirement_closure(core_requirements())
    except metadata.PackageNotFoundError as error:
        pytest.skip(f"a core requirement is not installed in this environment: {error}")
    assert {"dlib-bin", "openvino", "onnxruntime", "opencv-python-headless"} <= set(distributions)
    site = tmp_path / "site"
    link_distributions(distributions.values(), site)
    result = tmp_path / "result.mp4"
    argv = ["demo.py", "--checkpoint", str(inputs / "dagan.pt"), "--source_image", str(inputs / "photo.png"),
            "--driving_video", str(inputs / "driving.mp4"), "--result_video", str(result)]
    code = (f"import runpy, sys; sys.path[:0] = [{str(REPO_ROOT)!r}, {str(site)!r}]; sys.argv = {argv!r}; "
            "runpy.run_path('demo.py', run_name='__main__')")
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "DAGAN_"))}
    environment["DAGAN_CACHE"] = str(tmp_path / "cache")
    completed = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=REPO_ROOT, env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "backend: OpenVINO" in completed.stderr, completed.stderr[-2000:]
    from dagan.io import open_video

    video = open_video(result)
    assert video.size == (512, 512) and video.num_frames == 8  # the whole photo, the face pasted back


SPEAK = """
import ctypes.util, json, sys
find_library = ctypes.util.find_library
if sys.argv[1] == "wheel":  # as on a machine without Debian's espeak-ng: only the espeakng-loader wheel
    ctypes.util.find_library = lambda name: None if name == "espeak-ng" else find_library(name)
from dagan.data.synthetic import talking
speech = talking.synthesize("open the window")
print(json.dumps({"library": talking._espeak()[0]._name, "seconds": speech.audio.duration,
                  "phonemes": [phoneme.name for phoneme in speech.phonemes]}))
"""


def test_speech_tests_run_on_the_espeakng_loader_wheel_without_debians_espeak_ng(tmp_path):
    """The speech-learning tests' text-to-speech falls back to the espeakng-loader wheel (what scripts/test.sh
    installs where it cannot apt-get espeak-ng); it speaks the same phonemes as Debian's library, when that is here."""
    import importlib.util
    import json

    if importlib.util.find_spec("espeakng_loader") is None:
        pytest.skip("the espeakng-loader wheel is not installed: pip install -e \".[dev]\"")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    results = {}
    for source in ("wheel", "system"):
        completed = subprocess.run([sys.executable, "-c", SPEAK, source], env=environment, capture_output=True,
                                   text=True, timeout=120)
        if source == "system" and completed.returncode != 0:
            break  # no espeak-ng library from the system: only the wheel's is checked
        assert completed.returncode == 0, completed.stderr[-2000:]
        results[source] = json.loads(completed.stdout.strip().splitlines()[-1])
    wheel = results["wheel"]
    assert "espeakng_loader" in wheel["library"] and 0.5 < wheel["seconds"] < 3 and len(wheel["phonemes"]) >= 8
    if "system" in results and "espeakng_loader" not in results["system"]["library"]:
        unstressed = [[name.strip("',") for name in result["phonemes"]] for result in (wheel, results["system"])]
        assert unstressed[0] == unstressed[1]  # the versions may mark stress differently
