"""Atomic files (JSON summaries, CSV tables, YAML configs, .npz items): a failed write never leaves a half file."""
from __future__ import annotations

import os
import tempfile


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path``: a hidden temporary file in the same folder, then ``os.replace``.

    The folder is created when missing. If anything fails, the temporary file is removed and an existing
    ``path`` keeps its old content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` for ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
