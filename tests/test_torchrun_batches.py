"""Batches over several processes: ``torchrun --nproc_per_node=2 demo.py`` (no process group; two CPU ranks) gives
the files one process gives, each item animated once, and a rerun skips what is done; the evaluation protocols
shared the same way give the report of one process."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, make_test_clip
from dagan.io import open_video, write_png

pytestmark = pytest.mark.slow


def run(command: list[str], tmp_path: Path) -> str:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DAGAN_CACHE": str(tmp_path / "cache"),
                   "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-1000:] + completed.stderr[-3000:]
    return completed.stderr


def torchrun(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *arguments]


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_checkpoint):
    """Five source images and a driving clip: demo.py's arguments for a batch into a folder."""
    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for index in range(5):
        write_png(root / "photos" / f"face{index}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    clip = make_test_clip(root / "driving.mp4", seconds=0.5, fps=10)
    return ["demo.py", "--checkpoint", tiny_checkpoint, "--source_image", str(root / "photos"), "--driving_video",
            str(clip), "--crop", "none", "--cpu", "--backend", "torch", "--relative"]


def written(stderr: str) -> list[str]:
    return re.findall(r"\[(\d+)/5\] \S+ \+ \S+: wrote", stderr)


def test_two_torchrun_ranks_write_the_files_of_one_process_each_item_once(batch, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, *batch, "--result_video", f"{one}/"], tmp_path)
    stderr = run(torchrun(*batch, "--result_video", f"{two}/"), tmp_path)
    assert sorted(written(stderr), key=int) == ["1", "2", "3", "4", "5"]  # each item once
    assert re.findall(r"rank 1 of 2: \[(\d+)/5\]", stderr) == ["2", "4"]  # rank r takes i % 2 == r
    names = sorted(path.name for path in one.iterdir())
    assert names == sorted(path.name for path in two.iterdir()) and len(names) == 5
    for name in names:
        single, shared = open_video(one / name).read_all(), open_video(two / name).read_all()
        assert single.shape == shared.shape and np.array_equal(single, shared)

    os.remove(two / names[3])  # an interrupted batch: a rerun animates only what is missing
    stderr = run(torchrun(*batch, "--result_video", f"{two}/"), tmp_path)
    assert written(stderr) == ["4"] and stderr.count("exists, skipped") == 4
    assert np.array_equal(open_video(two / names[3]).read_all(), open_video(one / names[3]).read_all())


def test_two_torchrun_ranks_score_the_pairs_protocol_as_one_process(tiny_checkpoint, tmp_path):
    """scripts/evaluate.py --protocol pairs: the two ranks' report (JSON summary, per-item CSV) is the one process's,
    written by the rank that finds every item done; a rerun finds every item done and evaluates nothing."""
    make_test_clip(tmp_path / "clip.mp4", seconds=1.0, fps=10)
    rows = ["source,driving,mode"] + [f"clip.mp4:{index},clip.mp4:{index + 3}," for index in range(5)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    arguments = ["scripts/evaluate.py", "--checkpoint", tiny_checkpoint, "--protocol", "pairs", "--pairs",
                 str(tmp_path / "pairs.csv"), "--metrics", "l1,psnr,ssim", "--device", "cpu", "--no_progress"]
    run([sys.executable, *arguments, "--output", str(tmp_path / "one")], tmp_path)
    stderr = run(torchrun(*arguments, "--output", str(tmp_path / "two")), tmp_path)
    assert stderr.count("wrote ") >= 1  # by the rank that found every item done (both, if they finish together)
    for name in ("results.json", "per_item.csv"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text().replace(
            str(tmp_path / "two"), str(tmp_path / "one"))
    assert json.loads((tmp_path / "two" / "results.json").read_text())["items"] == 5
    assert len(list((tmp_path / "two" / "items").glob("0*.json"))) == 5
    (tmp_path / "two" / "results.json").unlink()
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "two" / "items").glob("0*.json")}
    run(torchrun(*arguments, "--output", str(tmp_path / "two")), tmp_path)  # resumed: nothing left to evaluate
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps and (tmp_path / "two" / "results.json").exists()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Five items to compare by name: generated frame folders (noise) and reference clips, 3 frames each."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(1)
    for index in range(5):
        (root / "generated" / f"item{index}").mkdir(parents=True)
        (root / "reference").mkdir(exist_ok=True)
        make_test_clip(root / "reference" / f"item{index}.mp4", seconds=0.3, fps=10)
        for frame in range(3):
            write_png(root / "generated" / f"item{index}" / f"{frame:03d}.png",
                      rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return root


def test_two_torchrun_ranks_compare_files_as_one_process(files, tmp_path):
    """scripts/evaluate.py --generated --reference: the ranks share the items (rank 0 three, rank 1 two) and keep
    them beside the summary (results.items/); the report is the one process's; a rerun evaluates nothing."""
    arguments = ["scripts/evaluate.py", "--generated", str(files / "generated"), "--reference",
                 str(files / "reference"), "--metrics", "l1,psnr,ssim", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    run([sys.executable, *arguments, "--no_progress", "--output", str(one / "results.json"), "--csv",
         str(one / "per_item.csv")], tmp_path)
    assert not (one / "results.items").exists()  # one process keeps no items
    shared = [*arguments, "--output", str(two / "results.json"), "--csv", str(two / "per_item.csv")]
    stderr = run(torchrun(*shared), tmp_path)
    assert set(re.findall(r"items: +\d+%\|[^|]*\| \d/(\d)", stderr)) == {"2", "3"}  # rank 0 three, rank 1 two
    for name in ("results.json", "per_item.csv"):
        assert (one / name).read_text() == (two / name).read_text()
    report = json.loads((two / "results.json").read_text())
    assert report["items"] == 5 and report["metrics"]["l1"]["mean"] > 0
    stamps = {path: path.stat().st_mtime_ns for path in (two / "results.items").glob("0*.json")}
    assert len(stamps) == 5
    (two / "results.json").unlink()
    run(torchrun(*shared), tmp_path)  # resumed: nothing left to evaluate
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps and (two / "results.json").exists()


def test_kept_file_items_belong_to_their_inputs(files, tmp_path):
    """A folder of kept items is reused while the inputs are unchanged, and refused once an input file changed
    (rather than mixed with new scores)."""
    from dagan.eval import Share, build_scorer, evaluate_files

    scorer = build_scorer(["l1"], device="cpu")
    generated = shutil.copytree(files / "generated", tmp_path / "generated")
    share = Share(0, 1, tmp_path / "items")
    first = evaluate_files(scorer, generated, files / "reference", progress=False, share=share)
    assert len(first.items) == 5 and len(list((tmp_path / "items").glob("0*.json"))) == 5
    again = evaluate_files(scorer, generated, files / "reference", progress=False, share=share)
    assert [item.to_json() for item in again.items] == [item.to_json() for item in first.items]
    os.utime(generated / "item2" / "001.png", ns=(0, 0))
    with pytest.raises(ValueError, match="other settings or inputs"):
        evaluate_files(scorer, generated, files / "reference", progress=False, share=share)
