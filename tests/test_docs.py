"""The README and the guides in docs/ say only what the repository does.

- Every command of a ```bash block (and every inline command such as `python scripts/x.py --flag`) that runs
  demo.py, train.py or a script names a file that exists and only flags that its ``--help`` lists.
- Every relative link and image points at a file that exists, and every anchor at a heading of that file.
- The README stays a short front door and links every guide; every guide links back to it.
- Every dotted ``dagan.x.y`` name (and ``dagan/x/y.py`` path) in backticks, and every ``from dagan... import``
  of a Python block, is a module or a module attribute; names from before the layout change are gone.

CPU only, no network: each script's ``--help`` runs once, in one subprocess for all, from the repository root.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
GUIDES = sorted((REPO_ROOT / "docs").glob("*.md"))
DOC_FILES = [README, *GUIDES]
README_MAX_LINES = 300

# Rooms the architecture reserves a floor for (optional layers of .importlinter) before their code lands.
PLANNED_MODULES: set[str] = set()
# Names from before the layout change: the docs must not mention them (in backticks or Python blocks).
OLD_NAMES = (
    "dagan.crop", "dagan/crop.py", "dagan.eval_depth", "dagan/eval_depth.py", "dagan.quickstart",
    "dagan/quickstart.py", "dagan.audio.personalize", "dagan/audio/personalize.py", "dagan.audio.app_mode",
    "dagan/audio/app_mode.py", "dagan/app.py", "dagan/data/synthetic.py", "dagan.data.synthetic_dataset",
    "dagan/data/synthetic_dataset.py", "dagan.data.synthetic_talking", "dagan/data/synthetic_talking.py",
    "dagan.checkpoint.load_official", "dagan.checkpoint.load_checkpoint_or_official",
    "dagan.runtime.cache.exported_pipeline", "dagan.runtime.autotune.autotune",
)

FENCE = re.compile(r"^(```|~~~)(\w*)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SCRIPT = re.compile(r"^(demo\.py|train\.py|scripts/[\w-]+\.(py|sh))$")


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


@functools.cache
def read_lines(path: Path) -> tuple[str, ...]:
    return tuple(path.read_text(encoding="utf-8").split("\n"))


@functools.cache
def split_fences(path: Path) -> tuple[tuple[tuple[str, int, tuple[str, ...]], ...], tuple[str, ...]]:
    """((language, first line number, lines) per fenced block, the file's lines with fenced lines blanked)."""
    blocks, prose, current, fence = [], [], None, ""
    for number, line in enumerate(read_lines(path), start=1):
        match = FENCE.match(line)
        if current is None and match:
            current, fence = (match.group(2), number + 1, []), match.group(1)
        elif current is not None and line.strip() == fence:
            blocks.append((current[0], current[1], tuple(current[2])))
            current = None
        elif current is not None:
            current[2].append(line)
        prose.append(line if current is None and not match else "")
    assert current is None, f"{relative(path)}: unclosed code block from line {current[1] - 1}"
    return tuple(blocks), tuple(prose)


def code_spans(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every inline `code` span outside fenced blocks (a span may wrap a line)."""
    text = "\n".join(split_fences(path)[1])
    spans = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        spans.append((text.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return spans


# Commands.

@dataclass(frozen=True)
class Command:
    file: str
    line: int
    script: str  # demo.py, train.py, scripts/NAME.py or scripts/NAME.sh
    flags: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.script}"


def bash_commands(lines: tuple[str, ...], first_line: int) -> list[tuple[int, str]]:
    """(line number, command) per logical line of a bash block: continuations joined, comments dropped."""
    commands, pending, start = [], "", None
    for number, line in enumerate(lines, start=first_line):
        if start is None:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        commands.append((start, pending))
        pending, start = "", None
    if pending:
        commands.append((start, pending))
    return commands


def parse_command(file: str, line: int, command: str) -> list[Command]:
    """The demo.py / train.py / script invocations of one shell command line (out of scope: python -m, others)."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError as error:
        raise AssertionError(f"{file}:{line}: cannot parse {command!r}: {error}") from error
    found, part = [], []
    for token in [*tokens, "&&"]:
        if token not in ("&&", "||", ";", "|"):
            part.append(token)
            continue
        for index, word in enumerate(part):
            interpreter = part[index - 1] if index else ""
            via_python = interpreter in ("python", "python3") or interpreter.endswith("/python")
            if SCRIPT.match(word) and (via_python or interpreter in ("bash", "sh") or "torchrun" in part[:index]):
                flags = tuple(FLAG.match(arg.split("=", 1)[0]).group(0) for arg in part[index + 1:]
                              if FLAG.match(arg.split("=", 1)[0]))
                found.append(Command(file, line, word, flags))
                break
        part = []
    return found


def collect_commands() -> list[Command]:
    commands = []
    for path in DOC_FILES:
        blocks, _ = split_fences(path)
        for language, first_line, lines in blocks:
            if language in ("bash", "sh", "shell"):
                for line, command in bash_commands(lines, first_line):
                    commands.extend(parse_command(relative(path), line, command))
        for line, span in code_spans(path):
            words = span.split()
            if words and (words[0] in ("python", "bash") or SCRIPT.match(words[0])):
                command = span if words[0] in ("python", "bash") else "python " + span
                commands.extend(parse_command(relative(path), line, command))
    return commands


COMMANDS = collect_commands()


# Runs ``SCRIPT --help`` for each script given, in this one process, as ``python SCRIPT --help`` would (sys.argv,
# sys.path[0] = the script's folder, __main__), and prints {script: [exit status, output]} as JSON. One process
# for all scripts: most import torch first, which costs ~2 s per process and would make this file slow.
HELP_DRIVER = r"""
import contextlib, io, json, os, runpy, sys
results, path = {}, list(sys.path)
for script in sys.argv[1:]:
    sys.argv, sys.path[:] = [script, "--help"], [os.path.dirname(os.path.abspath(script))] + path[1:]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(script, run_name="__main__")
            status = 0
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except Exception as error:
            print(f"{type(error).__name__}: {error}")
            status = 1
    results[script] = [status, out.getvalue()]
sys.stdout.write(json.dumps(results))
"""


@functools.cache
def help_of_all() -> dict[str, tuple[int, str, frozenset[str]]]:
    """script -> (exit status, output, flags) of its ``--help``, every script once, from the repository root."""
    scripts = sorted({c.script for c in COMMANDS if c.script.endswith(".py") and (REPO_ROOT / c.script).is_file()})
    env = dict(os.environ, COLUMNS="1000", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-c", HELP_DRIVER, *scripts], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"--help of {scripts} failed:\n{result.stderr[-3000:]}"
    return {script: (status, output, frozenset(FLAG.findall(output)))
            for script, (status, output) in json.loads(result.stdout).items()}


def test_commands_found():
    scripts = {c.script for c in COMMANDS}
    assert {"demo.py", "train.py", "scripts/test.sh"} <= scripts, scripts


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_flags_exist(command: Command):
    path = REPO_ROOT / command.script
    assert path.is_file(), f"{command.file}:{command.line}: {command.script} does not exist"
    if command.script.endswith(".sh"):
        # A shell script's --help would run it: its flags must at least appear in its text.
        text = path.read_text(encoding="utf-8")
        missing = [flag for flag in command.flags if flag not in text]
    else:
        status, output, flags = help_of_all()[command.script]
        assert status == 0, f"{command.script} --help failed:\n{output[-2000:]}"
        missing = [flag for flag in command.flags if flag not in flags]
    assert not missing, (f"{command.file}:{command.line}: {command.script} has no "
                         f"{', '.join(missing)} (not in its --help)")


# Links.

def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in split_fences(path)[1]:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            anchor = github_anchor(match.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            result.add(anchor if count == 0 else f"{anchor}-{count}")
    return frozenset(result)


# [text](target), ![alt](target "title") (the text may hold one level of brackets), or <img src="target">.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
                  r"|<img\s[^>]*src=\"([^\"]+)\"")


def collect_links() -> list[tuple[str, int, str]]:
    links = []
    for path in DOC_FILES:
        for number, line in enumerate(split_fences(path)[1], start=1):
            for match in LINK.finditer(re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)):
                links.append((relative(path), number, match.group(1) or match.group(2)))
    return links


LINKS = collect_links()
RELATIVE_LINKS = [link for link in LINKS if not re.match(r"^[a-z][a-z0-9+.-]*:", link[2])]


def test_links_found():
    assert len(RELATIVE_LINKS) >= len(GUIDES), RELATIVE_LINKS


@pytest.mark.parametrize("file,line,target", RELATIVE_LINKS, ids=[f"{f}:{n}:{t}" for f, n, t in RELATIVE_LINKS])
def test_relative_link_exists(file: str, line: int, target: str):
    source = REPO_ROOT / file
    name, _, anchor = target.partition("#")
    resolved = (source.parent / name).resolve() if name else source
    assert resolved.exists(), f"{file}:{line}: {target} -> {name} does not exist"
    assert REPO_ROOT in resolved.parents or resolved == REPO_ROOT, f"{file}:{line}: {target} leaves the repository"
    if anchor:
        assert resolved.suffix == ".md", f"{file}:{line}: anchor #{anchor} on a file that is not Markdown"
        assert anchor in anchors(resolved), (f"{file}:{line}: {target}: {relative(resolved)} has no heading "
                                             f"#{anchor} (it has {sorted(anchors(resolved))})")


# The front door.

def test_readme_is_short():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines (at most {README_MAX_LINES}): move text to docs/"


def test_every_guide_linked_from_readme():
    linked = {(REPO_ROOT / target.partition("#")[0]).resolve() for file, _, target in RELATIVE_LINKS
              if file == "README.md" and target.partition("#")[0]}
    missing = [relative(guide) for guide in GUIDES if guide.resolve() not in linked]
    assert GUIDES and not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("guide", GUIDES, ids=relative)
def test_guide_links_back_to_readme(guide: Path):
    targets = {target.partition("#")[0] for file, _, target in RELATIVE_LINKS if file == relative(guide)}
    assert "../README.md" in targets, f"{relative(guide)} has no link back to ../README.md"


# Module names.

def mentioned_names() -> list[tuple[str, int, str, str]]:
    """(file, line, as written, dotted name) for every dagan module name or path in backticks or Python imports."""
    names = []
    for path in DOC_FILES:
        for line, span in code_spans(path):
            if re.fullmatch(r"dagan(\.[A-Za-z_]\w*)+", span):
                names.append((relative(path), line, span, span))
            elif re.fullmatch(r"dagan(/[A-Za-z_]\w*)+(\.py|/)?", span):
                dotted = span.removesuffix("/").removesuffix(".py").replace("/", ".")
                names.append((relative(path), line, span, dotted))
        for language, first_line, lines in split_fences(path)[0]:
            if language != "python":
                continue
            for number, text in enumerate(lines, start=first_line):
                match = re.match(r"\s*from\s+(dagan[\w.]*)\s+import\s+(.+)", text)
                if match:
                    for name in match.group(2).split("#")[0].strip("() ").split(","):
                        name = name.split(" as ")[0].strip()
                        names.append((relative(path), number, text.strip(), f"{match.group(1)}.{name}"))
                for match in re.finditer(r"^\s*import\s+(dagan[\w.]*)", text):
                    names.append((relative(path), number, text.strip(), match.group(1)))
    return names


NAMES = mentioned_names()


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            spec = importlib.util.find_spec(module_name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        target = importlib.import_module(module_name)
        for attribute in parts[end:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_names_found():
    assert len(NAMES) >= 10, NAMES


@pytest.mark.parametrize("file,line,written,dotted", NAMES, ids=[f"{f}:{n}:{d}" for f, n, _, d in NAMES])
def test_module_name_resolves(file: str, line: int, written: str, dotted: str):
    if dotted in PLANNED_MODULES:
        pytest.skip(f"{dotted}: a planned room (PLANNED_MODULES), not written yet")
    assert resolves(dotted), f"{file}:{line}: {written}: {dotted} is neither a module nor a module attribute"


def test_no_names_from_before_the_layout_change():
    stale = []
    for file, line, written, dotted in NAMES:
        for old in OLD_NAMES:
            if written == old or dotted == old or dotted.startswith(old + ".") or old in written.split():
                stale.append(f"{file}:{line}: {written} (old name {old})")
                break
    assert not stale, "\n".join(stale)
