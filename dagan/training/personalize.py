"""The common case in one call: a short clip of the target (about 300 frames) -> a personalised audio model.

Prepares the clip (frozen DaGAN keypoints, audio features), then runs the ``personalize`` stage (from a general
model when given, else from scratch) in a run directory next to the output, and copies the best model to the
output. ``scripts/personalize.py`` is its command line.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

from dagan.audio.animate import check_compatible
from dagan.audio.data import save_item
from dagan.audio.model import AudioDrivenModel
from dagan.audio.prepare import prepare_clip
from dagan.config import Config, config_from_dict, config_to_dict, load_config
from dagan.training.audio_stage import train_audio


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


def personalize(pipeline, video: str, output: str, init: Optional[str] = None, steps: Optional[int] = None,
                config_path: Optional[str] = None, overrides: tuple[str, ...] = (), log_dir: Optional[str] = None,
                overwrite: bool = False) -> dict:
    """Write the personalised model to ``output``; returns the training result (step, losses, run directory)."""
    if os.path.exists(output) and not overwrite:
        raise ValueError(f"{output!r} exists; choose another --output or pass --overwrite")
    if init:
        general = AudioDrivenModel.load(init)
        check_compatible(general, pipeline)  # before the slow part
        base = general.config
    else:
        base = load_config(config_path, list(overrides))
    log_dir = log_dir or f"{os.path.splitext(output)[0]}_run"
    item, offset = prepare_clip(pipeline, video, base.audio_params.num_mels)
    if not offset.is_synced():
        print(f"warning: the audio of {video!r} seems {offset.lag_frames} frames off its mouth motion "
              f"(correlation {offset.correlation:.2f}); lip sync will suffer", file=sys.stderr)
    target = os.path.join(log_dir, "target.npz")
    save_item(target, item)
    train_frames = int(round(item.num_frames * (1 - base.audio_train_params.validation_fraction)))
    config = personalize_config(base, target, init, steps, train_frames)
    result = train_audio(config, log_dir, resume="auto")
    temporary = f"{output}.partial"
    shutil.copyfile(result["model"], temporary)
    os.replace(temporary, output)
    return {**result, "log_dir": log_dir, "output": output}
