"""The quickstart's stages (``bash scripts/quickstart.sh`` sets up ``.venv`` and then runs ``scripts/quickstart.py``).

A smoke-scale model learns the one person in the sample clip, then animates a frame of that clip it never trained
on. Each stage ends by writing one final output; a rerun skips every stage whose final output exists and resumes an
interrupted training stage from its newest checkpoint (``train.py --resume auto``).

Stages and their final outputs, all in the run folder (``runs/quickstart``):

1. data: ``data/train/clip/*.png`` (the clip without its last quarter) and ``source.png`` (a held-out frame).
2. depth: ``models/depth/{encoder,depth}.pth``, the self-supervised depth network (official layout).
3. gan: ``models/dagan.pt``, the inference checkpoint (every network and the config, no optimiser state).
4. animate: ``result.mp4`` (the source driven by the whole clip) and ``result_side_by_side.mp4``
   (source | driving | result, enlarged).

Training checkpoints (with optimiser states) are deleted once a stage's inference weights are exported.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dagan.io import open_video, open_writer, read_image_uint8, write_png

PANEL_SIZE = 256  # pixels per panel of the side-by-side video
CAPTION_HEIGHT = 28
HELD_OUT_FRACTION = 0.25  # the clip's last quarter is never trained on
MIN_FRAMES = 8


class QuickstartError(RuntimeError):
    """A stage could not run; the message says what to do."""


@dataclass(frozen=True)
class QuickstartPaths:
    """Where each stage writes, inside ``run_dir``."""

    run_dir: Path

    @property
    def data_dir(self) -> Path:  # the training set (VoxCeleb layout, one video)
        return self.run_dir / "data"

    @property
    def train_clip(self) -> Path:
        return self.data_dir / "train" / "clip"

    @property
    def source(self) -> Path:
        return self.run_dir / "source.png"

    @property
    def depth_run(self) -> Path:
        return self.run_dir / "depth-training"

    @property
    def gan_run(self) -> Path:
        return self.run_dir / "gan-training"

    @property
    def depth_weights(self) -> Path:
        return self.run_dir / "models" / "depth"

    @property
    def model(self) -> Path:
        return self.run_dir / "models" / "dagan.pt"

    @property
    def result(self) -> Path:
        return self.run_dir / "result.mp4"

    @property
    def side_by_side(self) -> Path:
        return self.run_dir / "result_side_by_side.mp4"


class Split(NamedTuple):
    """The clip's frames used for training (``range(num_train)``) and the held-out frame used as the source."""

    num_frames: int
    num_train: int
    source_index: int


def split_clip(num_frames: int, held_out_fraction: float = HELD_OUT_FRACTION) -> Split:
    """Train on the first frames, keep the last ``held_out_fraction`` back; the source is the middle of that part."""
    if num_frames < MIN_FRAMES:
        raise QuickstartError(f"the training clip has {num_frames} frames; the quickstart needs at least {MIN_FRAMES}")
    num_train = num_frames - max(1, int(round(num_frames * held_out_fraction)))
    return Split(num_frames, num_train, (num_train + num_frames) // 2)


# Stages.
def prepare_data(video: Path, paths: QuickstartPaths) -> Split:
    """Write the training frames and the held-out source frame (``source.png`` last: it marks the stage done)."""
    frames = open_video(video).read_all()  # (T, H, W, 3) uint8
    split = split_clip(len(frames))
    paths.train_clip.mkdir(parents=True, exist_ok=True)
    for index in range(split.num_train):
        write_png(paths.train_clip / f"{index:06d}.png", frames[index])
    write_png(paths.source, frames[split.source_index])
    return split


def train_stage(stage: str, config: str, overrides: Sequence[str], log_dir: Path) -> None:
    """Run ``train.py`` in this process, resuming the newest checkpoint of ``log_dir`` if there is one."""
    from dagan.cli.train import main as train_main

    argv = ["--config", config, "--log_dir", str(log_dir), "--resume", "auto",
            "--set", f"train_params.stage={stage}"]
    for override in overrides:
        argv += ["--set", override]
    with warnings.catch_warnings():  # the quickstart installs no TensorBoard on purpose; stats.jsonl is written
        warnings.filterwarnings("ignore", message="tensorboard is not installed")
        code = train_main(argv)
    if code != 0:
        raise QuickstartError(f"the {stage} stage failed (message above); fix it and rerun the quickstart, which "
                              f"resumes from the newest checkpoint in {log_dir}")
    check_finished(stage, config, overrides, log_dir)


def check_finished(stage: str, config: str, overrides: Sequence[str], log_dir: Path) -> None:
    """A stop request (SIGTERM, Ctrl-C) ends train.py early without an error: then the stage is not done."""
    from dagan.config import load_config
    from dagan.training.run import CheckpointManager

    resolved = load_config(config, [f"train_params.stage={stage}", *overrides])
    wanted = resolved.depth_train_params.num_steps if stage == "depth" else resolved.train_params.num_steps
    latest = CheckpointManager(str(log_dir / "checkpoints"), keep=1).latest()
    step = int(Path(latest).stem) if latest else 0  # checkpoints are named <step:08d>.pt
    if wanted is not None and step < wanted:
        raise QuickstartError(f"the {stage} stage stopped at step {step} of {wanted}; rerun the quickstart to resume it")


def train_depth(paths: QuickstartPaths, config: str, overrides: Sequence[str]) -> None:
    """Stage 1, then its official-layout depth folder moved to ``models/depth``; its training checkpoints go."""
    train_stage("depth", config, overrides, paths.depth_run)
    paths.depth_weights.parent.mkdir(parents=True, exist_ok=True)
    os.replace(paths.depth_run / "depth", paths.depth_weights)
    remove_training_checkpoints(paths.depth_run)


def train_gan(paths: QuickstartPaths, config: str, overrides: Sequence[str]) -> None:
    """Stage 2 on the frozen depth of stage 1, then exported as ``models/dagan.pt``."""
    train_stage("gan", config, [f"model_params.depth_params.checkpoint_dir={paths.depth_weights}", *overrides],
                paths.gan_run)
    export_model(paths)


def export_model(paths: QuickstartPaths) -> None:
    """Write stage 2's newest checkpoint as an inference checkpoint and delete the training checkpoints."""
    from dagan.model import DaGAN
    from dagan.training.run import CheckpointManager

    latest = CheckpointManager(str(paths.gan_run / "checkpoints"), keep=1).latest()
    if latest is None:
        raise QuickstartError(f"the gan stage wrote no checkpoint in {paths.gan_run / 'checkpoints'}")
    model = DaGAN.from_checkpoint(latest)
    model.save(paths.model, step=model.step)
    remove_training_checkpoints(paths.gan_run)


def remove_training_checkpoints(log_dir: Path) -> None:
    shutil.rmtree(log_dir / "checkpoints", ignore_errors=True)


def animate(paths: QuickstartPaths, video: Path) -> None:
    """``demo.py`` on the held-out source with the whole clip (relative motion), then the side-by-side video."""
    from dagan.cli.demo import main as demo_main

    argv = ["--checkpoint", str(paths.model), "--source_image", str(paths.source), "--driving_video", str(video),
            "--result_video", str(paths.result), "--relative", "--adapt_scale",
            "--crop", "none"]  # the clip's frames already are face crops
    if demo_main(argv) != 0:
        raise QuickstartError("animating failed (message above)")
    write_side_by_side(paths.source, video, paths.result, paths.side_by_side)


# The side-by-side video.
def write_side_by_side(source: Path, driving: Path, result: Path, output: Path, panel_size: int = PANEL_SIZE) -> int:
    """[source | driving frame | result frame], each enlarged to ``panel_size``, with captions, at the driving
    frame rate and with its audio. Returns the number of frames written."""
    driving_video, result_video = open_video(driving), open_video(result)
    source_panel = to_panel(read_image_uint8(source), panel_size)
    captions = caption_strip(["source (held-out frame)", "driving (sample clip)",
                              f"result ({result_video.size[0]}x{result_video.size[1]}, enlarged)"], panel_size)
    count = 0
    audio = driving if driving_video.has_audio else None
    with open_writer(output, driving_video.fps, audio_from=audio, protected_paths=[source, result]) as writer:
        for driving_frame, result_frame in zip(driving_video, result_video):
            panels = np.concatenate([source_panel, to_panel(driving_frame, panel_size),
                                     to_panel(result_frame, panel_size)], axis=1)
            writer.write(np.concatenate([captions, panels], axis=0))
            count += 1
    return count


def to_panel(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 (bicubic, so that an enlarged small result stays smooth)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def caption_strip(labels: Sequence[str], panel_size: int) -> np.ndarray:
    """A (CAPTION_HEIGHT, len(labels) * panel_size, 3) uint8 strip with one centred white label per panel."""
    strip = Image.new("RGB", (panel_size * len(labels), CAPTION_HEIGHT), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    for index, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        x = index * panel_size + (panel_size - (right - left)) // 2
        draw.text((x, (CAPTION_HEIGHT - (bottom - top)) // 2 - top), label, fill=(255, 255, 255), font=font)
    return np.asarray(strip)


def motion_from_first_frame(video: Path, size: int = 64) -> float:
    """Mean absolute difference (0-255) between each frame and the first, on greyscale frames at ``size``: how
    much a video visibly moves (a still picture gives 0)."""
    frames = [np.asarray(Image.fromarray(frame).convert("L").resize((size, size), Image.Resampling.BILINEAR),
                         dtype=np.float32) for frame in open_video(video)]
    return float(np.mean([np.abs(frame - frames[0]).mean() for frame in frames[1:]])) if len(frames) > 1 else 0.0


# Running the stages.
class Stage(NamedTuple):
    name: str
    title: str
    done: Callable[[QuickstartPaths], bool]
    outputs: Callable[[QuickstartPaths], list[Path]]


STAGES = (
    Stage("data", "training frames and a held-out source frame", lambda paths: paths.source.is_file(),
          lambda paths: [paths.train_clip, paths.source]),
    Stage("depth", "self-supervised depth (train.py, train_params.stage=depth)",
          lambda paths: (paths.depth_weights / "depth.pth").is_file(), lambda paths: [paths.depth_weights]),
    Stage("gan", "keypoints, generator and discriminator with the depth network frozen (train.py)",
          lambda paths: paths.model.is_file(), lambda paths: [paths.model]),
    Stage("animate", "the held-out source driven by the clip (demo.py) and a side-by-side video",
          lambda paths: paths.side_by_side.is_file(), lambda paths: [paths.result, paths.side_by_side]),
)


def run_quickstart(run_dir: str | os.PathLike, config: str, video: str | os.PathLike,
                   overrides: Sequence[str] = (), first_stage_number: int = 1, total_stages: Optional[int] = None,
                   out=sys.stdout) -> QuickstartPaths:
    """Run every unfinished stage in order with a heading each; ``overrides`` apply to both training stages."""
    paths, video = QuickstartPaths(Path(run_dir)), Path(video)
    total = total_stages or first_stage_number + len(STAGES) - 1
    common = [f"dataset_params.root_dir={paths.data_dir}", *overrides]
    actions = {"data": lambda: prepare_data(video, paths), "depth": lambda: train_depth(paths, config, common),
               "gan": lambda: train_gan(paths, config, common), "animate": lambda: animate(paths, video)}
    redone = False  # once a stage runs, the later stages' outputs are stale and run again too
    for number, stage in enumerate(STAGES, start=first_stage_number):
        print(f"\n=== [{number}/{total}] {stage.name}: {stage.title} ===", file=out, flush=True)
        if stage.done(paths) and not redone:
            print(f"already done, skipped (delete {stage.outputs(paths)[-1]} to redo it)", file=out, flush=True)
        else:
            started = time.monotonic()
            actions[stage.name]()
            redone = True
            print(f"done in {time.monotonic() - started:.0f} s", file=out, flush=True)
        for output in stage.outputs(paths):
            print(f"  -> {output}", file=out, flush=True)
    return paths


def summary(paths: QuickstartPaths, video: str | os.PathLike, out=sys.stdout) -> None:
    """How much the result moves compared with the driving clip, and the disk space the run folder uses."""
    driving, result = motion_from_first_frame(Path(video)), motion_from_first_frame(paths.result)
    print(f"\nmotion (mean change from the first frame, 0-255): driving {driving:.1f}, result {result:.1f} "
          "(a still picture would be 0)", file=out)
    print(f"disk used by {paths.run_dir}: {disk_usage(paths.run_dir) / 2 ** 20:.0f} MB "
          "(inference weights, logs, images, videos; no training checkpoints)", file=out)
    print(f"watch: {paths.side_by_side}", file=out, flush=True)


def next_commands(paths: QuickstartPaths, video: str | os.PathLike) -> list[str]:
    """What to run after the quickstart, on the model it trained: each line runs as printed from the repository
    root in the quickstart's environment (a line starting with ``#`` says what the next one does)."""
    model, video = shlex.quote(str(paths.model)), shlex.quote(str(video))
    run_dir = paths.run_dir
    return [
        "source .venv/bin/activate     # every command below runs in this environment",
        "# 1. the held-out frame again, into a file of your own (the clip's frames are face crops: --crop none)",
        f"python demo.py --checkpoint {model} --source_image {shlex.quote(str(paths.source))} --driving_video "
        f"{video} --relative --adapt_scale --crop none --result_video {shlex.quote(str(run_dir / 'my_result.mp4'))}",
        "# 2. a photo as it comes (put yours in place of data/samples/source.png): the face is found, animated and",
        "#    pasted back into the whole photo. This model learned one woman from one clip: other faces come out blurry",
        f"python demo.py --checkpoint {model} --source_image data/samples/source.png --driving_video {video} "
        f"--relative --adapt_scale --result_video {shlex.quote(str(run_dir / 'my_photo.mp4'))}",
        "# 3. the web app with this model selected (the first line installs gradio, about 150 MB)",
        'pip install -c .ci/constraints.txt -e ".[app]"',
        f"python scripts/app.py --checkpoint {model}     # then open http://127.0.0.1:7860",
        "# the official DaGAN weights (checkpoints/README.md) animate anyone: the README's demo and app commands use",
        "# them (--checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar --depth_checkpoint checkpoints/depth_face_model)",
        "bash scripts/test.sh          # installs the test extras and runs the test suite",
    ]


def print_next(paths: QuickstartPaths, video: str | os.PathLike, out=sys.stdout) -> None:
    """The :func:`next_commands`, under a ``next:`` heading."""
    print("\nnext (each command runs as printed, from this folder):", file=out)
    for line in next_commands(paths, video):
        print(f"  {line}", file=out)
    out.flush()


def disk_usage(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())
