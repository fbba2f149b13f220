"""The common case in one call: a short clip of the target (about 300 frames) -> a personalised audio model.

Prepares the clip (frozen DaGAN keypoints, audio features), then runs the ``personalize`` stage (from a general
model when given, else from scratch) in a run directory next to the output, and copies the best model to the
output. ``scripts/personalize.py`` is its command line.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from dagan.audio.animate import check_compatible
from dagan.audio.data import save_item
from dagan.audio.model import AudioDrivenModel
from dagan.audio.prepare import prepare_clip
from dagan.config import Config, config_from_dict, config_to_dict, load_config
from dagan.io.files import atomic_write_bytes, atomic_write_text, content_digest, guard_output
from dagan.training.audio_stage import train_audio
from dagan.training.run import has_run

RUN_INPUTS = "inputs.json"  # in the run directory: SHA-256 of the clip, checkpoint and starting model it was made for


def personalize_config(base: Config, target: str, init: Optional[str], steps: Optional[int],
                       train_frames: int) -> Config:
    """``base`` set up for stage personalize on ``target``; sequences fit in the clip's training part."""
    values = config_to_dict(base)
    values["train_params"]["stage"] = "personalize"
    params = values["audio_train_params"]
    params.update(target=target, init_checkpoint=init)
    if steps is not None:
        params["num_steps"] = steps
    params["sequence_length"] = max(4, min(params["sequence_length"], train_frames // 2))
    return config_from_dict(values)


def default_log_dir(output: str) -> str:
    """The run directory next to ``output``: ``<output stem>_run``."""
    return f"{os.path.splitext(output)[0]}_run"


def check_personalize_outputs(video: str, output: str, log_dir: Optional[str], inputs: tuple, overwrite: bool) -> None:
    """OutputError/ValueError before any work: ``output`` must not be an input, a file this project did not write,
    nor (without ``overwrite``) an existing model; the run directory must not hold an input."""
    inputs = (video, *inputs)
    guard_output(output, inputs, "--output", "personalised model")
    if os.path.exists(output) and not overwrite:
        raise ValueError(f"{output!r} exists; choose another --output or pass --overwrite")
    guard_output(log_dir or default_log_dir(output), inputs, "--log_dir", "run directory",
                 others=[("--output", output)], folder=True)


def bind_run(log_dir: str, fingerprint: dict, overwrite: bool) -> None:
    """A run directory is resumed only by the run it was made for (same clip, checkpoint and starting model:
    ``inputs.json``); another one is refused, or moved aside to ``<log_dir>.old-<time>`` with ``overwrite``."""
    record = os.path.join(log_dir, RUN_INPUTS)
    stored = None
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as stream:
            stored = json.load(stream)
    if stored == fingerprint or not has_run(log_dir) and stored is None:
        atomic_write_text(record, json.dumps(fingerprint, indent=1) + "\n")
        return
    changed = ", ".join(name for name in fingerprint if (stored or {}).get(name) != fingerprint[name])
    if not overwrite:
        raise ValueError(f"the run directory {log_dir!r} holds a run for other inputs ({changed} differ); give "
                         "another --log_dir, or pass --overwrite to move the old run aside")
    moved = f"{log_dir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(log_dir, moved)
    print(f"moved the run for other inputs to {moved}", file=sys.stderr)
    atomic_write_text(record, json.dumps(fingerprint, indent=1) + "\n")


def input_fingerprint(video: str, init: Optional[str], inputs: tuple) -> dict:
    """SHA-256 of each input the run depends on: the clip, the starting model and the DaGAN checkpoint(s)."""
    named = {"clip": video, "init": init, **{f"checkpoint{index}": path for index, path in enumerate(inputs)}}
    return {name: content_digest(path) if path else None for name, path in named.items()}


def personalize(pipeline, video: str, output: str, init: Optional[str] = None, steps: Optional[int] = None,
                config_path: Optional[str] = None, overrides: tuple[str, ...] = (), log_dir: Optional[str] = None,
                overwrite: bool = False, inputs: tuple = ()) -> dict:
    """Write the personalised model to ``output``; returns the training result (step, losses, run directory).

    ``inputs``: the DaGAN checkpoint (and depth folder) ``pipeline`` was loaded from; with the clip and ``init``
    they bind the run directory (:func:`bind_run`) and are never written over."""
    check_personalize_outputs(video, output, log_dir, (init, config_path, *inputs), overwrite)
    if init:
        general = AudioDrivenModel.load(init)
        check_compatible(general, pipeline)  # before the slow part
        base = general.config
    else:
        base = load_config(config_path, list(overrides))
    log_dir = log_dir or default_log_dir(output)
    bind_run(log_dir, input_fingerprint(video, init, tuple(path for path in inputs if path)), overwrite)
    item, offset = prepare_clip(pipeline, video, base.audio_params.num_mels)
    if not offset.is_synced():
        print(f"warning: the audio of {video!r} seems {offset.lag_frames} frames off its mouth motion "
              f"(correlation {offset.correlation:.2f}); lip sync will suffer", file=sys.stderr)
    target = os.path.join(log_dir, "target.npz")
    save_item(target, item)
    train_frames = int(round(item.num_frames * (1 - base.audio_train_params.validation_fraction)))
    config = personalize_config(base, target, init, steps, train_frames)
    result = train_audio(config, log_dir, resume="auto")
    with open(result["model"], "rb") as stream:
        atomic_write_bytes(output, stream.read())
    return {**result, "log_dir": log_dir, "output": output}
