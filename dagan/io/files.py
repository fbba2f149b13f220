"""Files that survive crashes and never damage what the user already has.

* Atomic writes: every result (checkpoint, video, PNG, JSON, CSV, YAML) is written under a temporary name in its
  destination folder (:func:`temporary_sibling`), flushed to disk (``fsync``) and renamed into place, so a crash,
  a kill or a full disk leaves either the old file or the new one, never half of one.
* Temporary names carry the writer's host and process id (``.<stem>.partial-<host>-<pid>-<token><suffix>``), so
  :func:`remove_stale_temporaries` can delete those left by killed processes without touching a live writer's.
* The one output guard, :func:`guard_output`, run by every command on every output before any work starts: an
  output may replace only a file this project wrote (recorded by :func:`record_written`, which every atomic write
  calls: an extended attribute on the file, or the folder's ``.dagan-written`` log where there are none), never an input (compared by real path and inode), nor
  another output of the same command. :func:`refuse_to_overwrite` (inputs only) and :func:`check_writable` (the
  folder can be written to) are its parts.
* :func:`describe_write_error` turns ``OSError`` (full disk, read-only folder) and torch's serialisation errors
  into one line that names the file and the cause.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import IO, Callable, Iterable, Optional, Union

PathLike = Union[str, os.PathLike]

HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
TEMPORARY_NAME = re.compile(r"^\..*\.partial-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}")
LOW_DISK_BYTES = 64 * 2**20  # below this much free space, a failed write is reported as a full disk
WRITTEN_ATTRIBUTE = "user.dagan.written"  # on each file this project wrote: its [size, mtime_ns, inode] then
WRITTEN_LOG = ".dagan-written"  # per folder, where files keep no attributes: one JSON line (name, identity) per file
WRITTEN_LOG_COMPACT_BYTES = 2**20  # the log is rewritten with the latest line per file beyond this size


class OutputError(ValueError):
    """An output path cannot be used (it is an input, a folder of someone else's files, or not writable)."""


# Temporary names and their clean-up.
def temporary_sibling(path: PathLike) -> Path:
    """A hidden, unique name next to ``path`` (same folder, so ``os.replace`` is an atomic rename)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial-{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Delete the temporary files and folders in ``directory`` that killed processes of this host left behind.

    Only names made by :func:`temporary_sibling` whose process no longer runs are removed; returns them.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or match["host"] != HOST_TAG or process_is_alive(int(match["pid"])):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
        except OSError:  # another process cleaned it first, or we may not: leave it
            pass
    return removed


# Atomic writing.
def fsync_directory(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(stream)`` on a temporary file next to ``path``, then :func:`publish` it as ``path``.

    The folder is created when missing. If anything fails (the disk fills up, the process is interrupted), the
    temporary file is removed, an existing ``path`` keeps its old content, and the error is an
    :class:`OutputError` naming the file and the cause.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "wb") as stream:
            write(stream)
        publish(temporary, path)
    except BaseException as error:
        remove_quietly(temporary)
        if isinstance(error, (OSError, RuntimeError)):
            raise OutputError(describe_write_error(path, error)) from error
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def remove_quietly(path: PathLike) -> None:
    """Delete a file if it exists; a failure to delete never hides the error being handled."""
    try:
        os.remove(path)
    except OSError:
        pass


def describe_write_error(path: PathLike, error: BaseException) -> str:
    """One line for a failed write: the file, then 'the disk is full', 'permission denied', ... ."""
    directory = Path(path).parent
    number = getattr(error, "errno", None)
    if number == errno.ENOSPC or "No space left" in str(error) or disk_is_nearly_full(directory):
        return f"could not write '{path}': the disk is full ({free_space(directory)} free); free some space"
    if number in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"could not write '{path}': the folder '{directory}' is not writable; choose another output path"
    reason = getattr(error, "strerror", None) or first_line(error)
    return f"could not write '{path}': {reason}"


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def free_space(directory: PathLike) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown"


def disk_is_nearly_full(directory: PathLike) -> bool:
    try:
        return shutil.disk_usage(directory).free < LOW_DISK_BYTES
    except OSError:
        return False


# Checks before the work starts.
def check_writable(path: PathLike, what: str = "output") -> None:
    """Raise OutputError unless a file can be created next to ``path`` (its folder is made when missing)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe_path = temporary_sibling(directory / "write-check")
        with open(probe_path, "wb"):
            pass
        os.remove(probe_path)
    except OSError as error:
        raise OutputError(f"cannot write the {what} '{path}': {folder_problem(directory, error)}; choose another "
                          "path") from None
    if disk_is_nearly_full(directory):
        raise OutputError(f"cannot write the {what} '{path}': the disk is full ({free_space(directory)} free in "
                          f"'{directory}'); free some space or choose another path")


def folder_problem(directory: Path, error: OSError) -> str:
    """Why files cannot be created in ``directory``, in words."""
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"the folder '{directory}' is not writable"
    blocking = next((part for part in (directory, *directory.parents) if part.exists() and not part.is_dir()), None)
    if blocking is not None:
        return f"'{blocking}' is a file, not a folder"
    return f"the folder '{directory}' cannot be written ({error.strerror or first_line(error)})"


def is_inside(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies (at any depth) inside it, after resolving links."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def refuse_to_overwrite(output: PathLike, inputs: Iterable[Optional[PathLike]], what: str = "output",
                        flag: Optional[str] = None, output_is_folder: bool = False) -> None:
    """Raise OutputError if writing ``output`` could replace one of ``inputs``.

    An input is at risk when it is the output itself (also through a link), or, for a folder of results
    (``output_is_folder``), when it lies inside that folder. ``None`` inputs are skipped; ``flag`` names the
    option to change in the message.
    """
    for item in inputs:
        if item is None:
            continue
        same = os.path.realpath(item) == os.path.realpath(output) or _same_file(output, item)
        if same or (output_is_folder and is_inside(item, output)):
            fix = f"give {flag} another path" if flag else "choose a different output path"
            raise OutputError(f"refusing to write the {what} '{output}': that would overwrite the input '{item}'; "
                              f"{fix}")


def _same_file(first: PathLike, second: PathLike) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist
        return False


# Which files this project wrote: an extended attribute on the file, else a line in the folder's log.
def _identity(path: PathLike) -> Optional[list[int]]:
    """(size, mtime_ns, inode) of a file, or None when it is missing or not a regular file."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino] if os.path.isfile(path) else None


def publish(temporary: PathLike, path: PathLike) -> None:
    """Sync the finished, closed ``temporary`` to disk, rename it to ``path`` and record it as this project's.
    Where files keep user attributes the record is put on ``temporary`` before the rename (a rename keeps the size,
    the modification time and the inode), so ``path`` never appears, even for a moment, as a file someone else
    wrote: another process checking it with :func:`guard_output` meanwhile (a second torchrun rank) is not
    refused."""
    with open(temporary, "rb") as stream:
        os.fsync(stream.fileno())
    marked = _set_written_attribute(Path(temporary))
    os.replace(temporary, path)
    fsync_directory(Path(path).parent)
    if not marked:
        record_written(path)


def _set_written_attribute(path: Path) -> bool:
    """Put the record on the file itself (:data:`WRITTEN_ATTRIBUTE`); False where that is impossible."""
    identity = _identity(path)
    if identity is None:
        return False
    try:
        os.setxattr(path, WRITTEN_ATTRIBUTE, json.dumps(identity).encode())
        return True
    except (AttributeError, OSError):  # no os.setxattr here, or the file system keeps no user attributes
        return False


def record_written(path: PathLike) -> None:
    """Note that this project wrote ``path`` as it is now (call it right after the final rename): an extended
    attribute ``user.dagan.written`` on the file (Linux), else one line in the folder's ``.dagan-written`` log
    (macOS, Windows, file systems without user attributes). A failure to record is ignored: the file then only
    counts as the user's, which is the safe side."""
    path = Path(path)
    identity = _identity(path)
    if identity is None or _set_written_attribute(path):
        return
    log = path.parent / WRITTEN_LOG
    try:
        with open(log, "a", encoding="utf-8") as stream:
            stream.write(json.dumps({"name": path.name, "file": identity}) + "\n")
        if log.stat().st_size > WRITTEN_LOG_COMPACT_BYTES:
            _compact_written_log(log)
    except OSError:
        pass


def _recorded_identity(path: Path) -> Optional[list[int]]:
    """The identity recorded for ``path`` (its attribute, else its folder's log), or None."""
    try:
        return [int(value) for value in json.loads(os.getxattr(path, WRITTEN_ATTRIBUTE))]
    except (AttributeError, OSError, ValueError, TypeError):
        pass
    log = path.parent / WRITTEN_LOG
    return _read_written_log(log).get(path.name) if log.is_file() else None


def _read_written_log(log: Path) -> dict[str, list[int]]:
    """name -> the identity last recorded for it (unreadable lines are skipped)."""
    entries: dict[str, list[int]] = {}
    try:
        with open(log, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                try:
                    entry = json.loads(line)
                    entries[str(entry["name"])] = [int(value) for value in entry["file"]]
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return entries


def _compact_written_log(log: Path) -> None:
    """Keep one line per file that still exists as recorded."""
    entries = {name: identity for name, identity in _read_written_log(log).items()
               if _identity(log.parent / name) == identity}
    text = "".join(json.dumps({"name": name, "file": identity}) + "\n" for name, identity in entries.items())
    temporary = temporary_sibling(log)
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, log)


def written_by_this_project(path: PathLike) -> bool:
    """Whether ``path`` is a file this project wrote and nobody changed since (size, mtime and inode as recorded)."""
    identity = _identity(path)
    return identity is not None and _recorded_identity(Path(path)) == identity


# The one output guard.
def guard_output(output: PathLike, inputs: Iterable[Optional[PathLike]] = (), flag: Optional[str] = None,
                 what: str = "output", others: Iterable[tuple[str, Optional[PathLike]]] = (),
                 folder: bool = False) -> None:
    """Raise OutputError, before any work, unless ``output`` may be written.

    Refused: an output that is one of ``inputs`` (real path or inode; for a ``folder`` output, one that holds an
    input), one that names the same file as another output of the command (``others``: (flag, path) pairs), and an
    existing file this project did not write (:func:`written_by_this_project`). A folder output may exist: what
    is written into it is guarded file by file. ``flag`` names the option to change in the message.
    """
    if output is None:
        return
    refuse_to_overwrite(output, inputs, what, flag, output_is_folder=folder)
    for other_flag, other in others:
        if other is not None and (os.path.realpath(other) == os.path.realpath(output) or _same_file(other, output)):
            raise OutputError(f"{flag or what} and {other_flag} name the same file '{output}': one would replace "
                              "the other; give them different paths")
    if folder:
        if os.path.exists(output) and not os.path.isdir(output):
            raise OutputError(f"the {what} '{output}' is a file, not a folder; give {flag or 'a folder path'} a "
                              "folder")
        return
    refuse_foreign_file(output, flag, what)


def refuse_foreign_file(output: PathLike, flag: Optional[str] = None, what: str = "output") -> None:
    """OutputError if ``output`` exists and is not a file this project wrote (a folder, a link, the user's file)."""
    if not os.path.lexists(output) or written_by_this_project(output) and not os.path.islink(output):
        return
    kind = "a folder" if os.path.isdir(output) else "a file this project did not write"
    fix = f"give {flag} another path" if flag else "choose another output path"
    raise OutputError(f"refusing to write the {what} '{output}': it is {kind}; {fix} (or move it away yourself)")


def content_digest(path: PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (relative names and bytes, in sorted order)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
    for item in files:
        if path.is_dir():
            digest.update(item.relative_to(path).as_posix().encode() + b"\0")
        with open(item, "rb") as stream:
            for block in iter(lambda: stream.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()
