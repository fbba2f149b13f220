"""The quickstart's stages on the tiny config (two steps per training stage): outputs, skipping, redoing, and the
set-up script's choice of torch build."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, config_path, make_test_clip
from dagan.io import open_video
from dagan.cli.quickstart import (CAPTION_HEIGHT, PANEL_SIZE, QuickstartError, QuickstartPaths, print_next,
                                  run_quickstart, split_clip)

TINY_STEPS = ["train_params.num_steps=2", "depth_train_params.num_steps=2", "depth_train_params.batch_size=2",
              "train_params.vgg19_weights=random", "train_params.num_workers=0", "train_params.checkpoint_every=2",
              "train_params.image_every=100"]


def run(run_dir: Path, clip: Path) -> tuple[QuickstartPaths, str]:
    out = io.StringIO()
    paths = run_quickstart(run_dir, config_path("tiny.yaml"), clip, TINY_STEPS, out=out)
    return paths, out.getvalue()


def modification_times(paths: QuickstartPaths) -> dict[str, int]:
    files = [paths.source, paths.depth_weights / "depth.pth", paths.model, paths.result, paths.side_by_side]
    return {file.name: file.stat().st_mtime_ns for file in files}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quickstart")
    clip = make_test_clip(folder / "clip.mp4", seconds=1.2, fps=10)  # 12 frames: 9 to train on, 3 held out
    paths, output = run(folder / "runs" / "quickstart", clip)  # as in a clone: the app looks in runs/*/models/
    return paths, output, clip


def test_split_holds_out_the_last_quarter():
    assert split_clip(96) == (96, 72, 84)  # the sample clip: frames 0-71 train, frame 84 is the source
    assert split_clip(12) == (12, 9, 10)
    with pytest.raises(QuickstartError, match="at least 8"):
        split_clip(5)


def test_first_run_writes_every_output_and_keeps_no_training_checkpoint(first_run):
    paths, output, clip = first_run
    assert output.count("=== [") == 4 and "already done" not in output
    assert len(list(paths.train_clip.glob("*.png"))) == 9 and paths.source.is_file()
    assert {file.name for file in paths.depth_weights.iterdir()} == {"encoder.pth", "depth.pth"}
    assert paths.model.is_file() and not (paths.gan_run / "checkpoints").exists()
    assert not (paths.depth_run / "checkpoints").exists()
    side_by_side = open_video(paths.side_by_side)
    assert side_by_side.size == (3 * PANEL_SIZE, PANEL_SIZE + CAPTION_HEIGHT)
    assert side_by_side.num_frames == open_video(paths.result).num_frames == open_video(clip).num_frames


def test_side_by_side_shows_source_driving_and_result(first_run):
    paths, _, clip = first_run
    frame = next(iter(open_video(paths.side_by_side)))[CAPTION_HEIGHT:].astype(np.float32)
    driving = next(iter(open_video(clip)))
    source_panel, driving_panel = frame[:, :PANEL_SIZE], frame[:, PANEL_SIZE:2 * PANEL_SIZE]
    from dagan.cli.quickstart import to_panel
    assert np.abs(driving_panel - to_panel(driving, PANEL_SIZE)).mean() < 8  # H.264 tolerance
    assert np.abs(source_panel - driving_panel).mean() > 8  # the source is a later, held-out frame


def test_rerun_skips_every_finished_stage(first_run):
    paths, _, clip = first_run
    before = modification_times(paths)
    _, output = run(paths.run_dir, clip)
    assert output.count("already done, skipped") == 4
    assert modification_times(paths) == before


def test_rerun_redoes_a_missing_stage(first_run):
    paths, _, clip = first_run
    before = modification_times(paths)
    os.remove(paths.side_by_side)
    _, output = run(paths.run_dir, clip)
    after = modification_times(paths)
    assert output.count("already done, skipped") == 3  # data, depth, gan
    assert [name for name in before if after[name] != before[name]] == ["result.mp4", "result_side_by_side.mp4"]


def test_the_next_commands_run_as_printed_and_the_app_lists_the_model(first_run, tmp_path):
    """Every printed demo command runs verbatim (from the repository root, this interpreter as ``python``) on the
    model the quickstart trained; the printed app command starts on it and the app lists it without being told."""
    import shlex
    import sys

    paths, _, _ = first_run
    sample = REPO_ROOT / "data" / "samples" / "driving.mp4"
    out = io.StringIO()
    print_next(paths, sample, out)
    lines = [line.strip() for line in out.getvalue().strip().splitlines()[1:]]
    commands = [shlex.split(line, comments=True) for line in lines if not line.startswith("#")]
    assert [command[0] for command in commands] == ["source", "python", "python", "pip", "python", "bash"]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DAGAN_CACHE": str(tmp_path / "cache")}
    demos = [command for command in commands if command[:2] == ["python", "demo.py"]]
    assert "--crop" not in demos[1]  # the photo goes through the default face crop and paste-back
    for command in demos:
        result = Path(command[command.index("--result_video") + 1])
        completed = subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, env=environment,
                                   capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert open_video(result).num_frames == open_video(sample).num_frames
    photo = REPO_ROOT / "data" / "samples" / "source.png"
    assert open_video(paths.run_dir / "my_photo.mp4").size == open_video(photo).size  # the whole photo

    (app,) = [command for command in commands if command[:2] == ["python", "scripts/app.py"]]
    import runpy

    arguments = runpy.run_path(str(REPO_ROOT / "scripts" / "app.py"))["build_parser"]().parse_args(app[2:])
    assert Path(arguments.checkpoint) == paths.model and paths.model.is_file()
    from dagan.app.common import find_checkpoints

    assert "runs/quickstart/models/dagan.pt" in find_checkpoints(paths.run_dir.parent.parent)


@pytest.mark.parametrize("gpu, build", [(False, "cpu"), (True, "cuda")])
def test_setup_picks_the_cpu_build_unless_a_gpu_is_present(tmp_path, gpu, build):
    if gpu:
        fake = tmp_path / "nvidia-smi"
        fake.write_text("#!/bin/sh\necho 'GPU 0: test GPU'\n")
        fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    environment.pop("DAGAN_TORCH_BUILD", None)
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install_torch.sh"), "--print-build"],
                            capture_output=True, text=True, env=environment, check=True)
    if not gpu and subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi, so the CPU case cannot be checked here")
    assert result.stdout.strip() == build
