"""The speech stages' corpus: prepared audio-video items (:mod:`dagan.audio.data`) from a folder of ``.npz`` files
(scripts/prepare_av.py) or from a streaming dataset of them (``scripts/make_shards.py --speech``, encoding
``speech``), on a disk or in an object store, read through litdata like the frame datasets.

Both give the same items in the same order (the folder's sorted file names), so the speech stage samples the same
batches from either. A streamed item is one litdata item of plain arrays (no pickles, no .npz parsing), checked
against its digest and then against the item schema as a file is; a corrupt item is skipped with a warning and
counted in ``skipped``, as a corrupt frame skips its clip.
"""
from __future__ import annotations

import warnings
from typing import Optional

from dagan.audio.data import AVItem, item_paths, load_item
from dagan.data.stream import (CLIPS_NAME, DEFAULT_CACHE_SIZE, StreamError, check_index, join, open_description,
                               open_engine, read_metadata, read_speech_item)
from dagan.io import MediaError


class SpeechStore:
    """The speech items of a streaming dataset: ``names`` (file names of the items, sorted as the folder's),
    ``item(number)`` -> AVItem (one litdata read), ``bytes_read`` (array bytes read by this process)."""

    def __init__(self, root: str, cache_dir: Optional[str] = None, max_cache_size: str = DEFAULT_CACHE_SIZE):
        self.root, self.cache_dir, self.max_cache_size = str(root).rstrip("/"), cache_dir or None, max_cache_size
        open_description(self.root, self.cache_dir, ("speech",))
        self.split_dir = join(self.root, "train")
        table = read_metadata(self.split_dir, CLIPS_NAME, self.cache_dir)
        rows = sorted(table["clips"], key=lambda row: row[0])  # file names: the order of sorted(folder.glob("*.npz"))
        if not rows:
            raise StreamError(f"'{self.split_dir}' holds no speech item; write it again with make_shards.py --speech")
        self.names, self.first = [row[0] for row in rows], [int(row[3]) for row in rows]
        check_index(self.split_dir, self.cache_dir)
        self.bytes_read = 0
        self._engine = None

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_engine": None}

    def label(self, number: int) -> str:
        return join(self.split_dir, self.names[number])

    def item(self, number: int) -> AVItem:
        """Item ``number``, checked against its digest and the item schema (MediaError otherwise)."""
        if self._engine is None:
            self._engine = open_engine(self.split_dir, self.cache_dir, self.max_cache_size)
        item, size = read_speech_item(self._engine, self.first[number], self.split_dir, self.label(number))
        self.bytes_read += size
        return item


def speech_items(location: str, format: str = "folders", cache_dir: str = "",
                 cache_size: str = DEFAULT_CACHE_SIZE) -> tuple[list[str], list[AVItem], list[tuple[str, str]]]:
    """``(labels, items, skipped)`` of a speech corpus: ``format`` folders (``location`` = a folder of .npz
    items, every one must load) or stream (``location`` = a streaming dataset of encoding speech, local or a URL;
    corrupt items are skipped, listed in ``skipped`` with the reason, with a warning)."""
    if format != "stream":
        paths = item_paths(location)
        return [str(path) for path in paths], [load_item(path) for path in paths], []
    store = SpeechStore(location, cache_dir or None, cache_size)
    labels, items, skipped = [], [], []
    for number in range(len(store)):
        try:
            items.append(store.item(number))
            labels.append(store.label(number))
        except MediaError as error:
            skipped.append((store.names[number], str(error)))
            warnings.warn(f"skipping speech item '{store.names[number]}': {error}", stacklevel=2)
    if not items:
        raise StreamError(f"no speech item of '{location}' could be read ({len(skipped)} corrupt); check it with "
                          "make_shards.py --verify")
    return labels, items, skipped
