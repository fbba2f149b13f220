"""The export cache checks what it loads and repairs itself: each graph's SHA-256 is stored in the manifest and checked
on load (an edited graph that still parses would give wrong frames), a damaged cached export is exported again once,
with one line, and what a killed export left behind is removed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, config_path
from dagan.io.files import TEMPORARY_NAME

pytest.importorskip("onnx")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def test_an_edited_graph_is_refused_and_a_damaged_cache_exported_again_once(tiny_model, cache, capsys):
    from dagan.runtime.cache import cached_export
    from dagan.runtime.export import ExportError, read_manifest

    directory = cached_export(tiny_model)
    manifest = json.loads(open(os.path.join(directory, "manifest.json")).read())
    assert all(len(spec["sha256"]) == 64 for spec in manifest["graphs"].values())
    capsys.readouterr()
    graph = os.path.join(directory, manifest["graphs"]["generator"]["file"])
    data = bytearray(open(graph, "rb").read())
    data[len(data) // 2] ^= 0x01  # one bit of one weight: the graph still parses, its frames would be off
    open(graph, "wb").write(bytes(data))
    with pytest.raises(ExportError, match="changed since it was exported"):
        read_manifest(directory)
    assert cached_export(tiny_model) == directory
    assert "is damaged" in capsys.readouterr().err
    read_manifest(directory)  # repaired
    assert cached_export(tiny_model) == directory and capsys.readouterr().err == ""  # once


KILLED_EXPORT = """
import os, sys, time
import torch
from dagan.config import load_config
from dagan.model import DaGAN
from dagan.runtime import export

original = export.export_graph
def slow(*arguments, **keywords):
    original(*arguments, **keywords)
    print("exported one graph", flush=True)
    time.sleep(60)
export.export_graph = slow
torch.manual_seed(0)
from dagan.runtime.cache import cached_export
cached_export(DaGAN(load_config(sys.argv[1])).eval())
"""


def test_what_a_killed_export_leaves_is_removed_by_the_next_run(tiny_model, cache, monkeypatch):
    from dagan.runtime import cache as cache_module
    from dagan.runtime.export import ExportError

    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, config_path("tiny.yaml")], env=environment,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "exported one graph"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    leftovers = [name for name in os.listdir(cache) if TEMPORARY_NAME.match(name)]
    assert len(leftovers) == 1 and os.listdir(cache / leftovers[0])  # the killed export's partial folder

    def no_export(model, directory):  # the next run, up to where it would export
        raise ExportError("not exported in this test")
    monkeypatch.setattr(cache_module, "export_onnx", no_export)
    with pytest.raises(ExportError):
        cache_module.cached_export(tiny_model)
    assert os.listdir(cache) == []
