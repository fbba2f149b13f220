"""The speech stages' corpus: prepared audio-video items (:mod:`dagan.audio.data`) from a folder of ``.npz`` files
(scripts/prepare_av.py) or from a streaming dataset of them (``scripts/make_shards.py --speech``, encoding
``speech``), on a disk or in an object store, read through litdata like the frame datasets.

Both give the same items in the same order (the folder's sorted file names), so the speech stage samples the same
batches from either. A streamed item is one litdata item of plain arrays (no pickles, no .npz parsing), checked
against its digest and then against the item schema as a file is; a corrupt item is skipped with a warning and
counted in ``skipped``, as a corrupt frame skips its clip.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Iterator, Optional, Union

from dagan.audio.data import AVItem, item_paths, load_item
from dagan.data.stream import (CLIPS_NAME, DEFAULT_CACHE_SIZE, INDEX_NAME, StreamError, check_index, chunk_fetcher,
                               is_remote, join, open_description, open_engine, read_metadata, read_speech_item,
                               store_error)
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
        return self._read_from(self._engine, number)

    def read_all(self) -> Iterator[tuple[int, Union[AVItem, MediaError]]]:
        """Every item as ``(number, item or the MediaError of a corrupt one)``, in storage order. From a remote
        store the chunks are fetched whole, one at a time, into a scratch folder under ``cache_dir`` (one GET per
        chunk instead of one per item, as reading the whole corpus wants) and removed once read."""
        by_first = {first: number for number, first in enumerate(self.first)}
        if not is_remote(self.split_dir):
            for first in sorted(by_first):
                yield by_first[first], self._item_or_error(self.item, by_first[first])
            return
        index = read_metadata(self.split_dir, INDEX_NAME, self.cache_dir)
        fetch = chunk_fetcher(self.split_dir, self.cache_dir)
        if self.cache_dir:
            os.makedirs(self.cache_dir, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as scratch:
            Path(scratch, INDEX_NAME).write_text(json.dumps(index))
            local, start = None, 0
            for chunk in index["chunks"]:
                wanted = [first for first in range(start, start + chunk["chunk_size"]) if first in by_first]
                start += chunk["chunk_size"]
                if not wanted:
                    continue
                path = Path(scratch, chunk["filename"])
                try:
                    fetch(join(self.split_dir, chunk["filename"]), path)
                except Exception as error:  # the backends raise their own types
                    raise store_error(join(self.split_dir, chunk["filename"]), error) from error
                local = local or open_engine(scratch, None, self.max_cache_size)
                for first in wanted:
                    yield by_first[first], self._item_or_error(partial(self._read_from, local), by_first[first])
                path.unlink()

    def _read_from(self, engine, number: int) -> AVItem:
        item, size = read_speech_item(engine, self.first[number], self.split_dir, self.label(number))
        self.bytes_read += size
        return item

    @staticmethod
    def _item_or_error(read, number: int) -> Union[AVItem, MediaError]:
        try:
            return read(number)
        except MediaError as error:
            return error


def speech_items(location: str, format: str = "folders", cache_dir: str = "",
                 cache_size: str = DEFAULT_CACHE_SIZE) -> tuple[list[str], list[AVItem], list[tuple[str, str]]]:
    """``(labels, items, skipped)`` of a speech corpus: ``format`` folders (``location`` = a folder of .npz
    items, every one must load) or stream (``location`` = a streaming dataset of encoding speech, local or a URL;
    corrupt items are skipped, listed in ``skipped`` with the reason, with a warning)."""
    if format != "stream":
        paths = item_paths(location)
        return [str(path) for path in paths], [load_item(path) for path in paths], []
    store = SpeechStore(location, cache_dir or None, cache_size)
    read, skipped = dict(store.read_all()), []
    for number, result in sorted(read.items()):
        if isinstance(result, MediaError):
            skipped.append((store.names[number], str(result)))
            warnings.warn(f"skipping speech item '{store.names[number]}': {result}", stacklevel=2)
    labels = [store.label(number) for number in sorted(read) if not isinstance(read[number], MediaError)]
    items = [read[number] for number in sorted(read) if not isinstance(read[number], MediaError)]
    if not items:
        raise StreamError(f"no speech item of '{location}' could be read ({len(skipped)} corrupt); check it with "
                          "make_shards.py --verify")
    return labels, items, skipped
