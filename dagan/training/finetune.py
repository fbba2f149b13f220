"""Fine-tuning: start a training stage from existing weights (``train_params.init_checkpoint``, ``train.py --init``)
and keep chosen networks fixed (``train_params.freeze``).

An init file can be
* the official release's main file (``DaGAN_vox_adv_256.pth.tar``, keys with or without ``module.``): generator,
  keypoint detector and discriminator;
* an official-layout depth folder (``encoder.pth`` + ``depth.pth``): the depth encoder and decoder;
* one of our checkpoints (``.pt``): every network it holds, and for the depth stage the pose (and uncertainty)
  network of its training state.

Every network found is loaded strictly on the keys the file has; the model's DaGAN++ blocks that the file lacks
(``generator.layer_attention.*``, the pose network's uncertainty head) keep their initialisation, which is
zero-gated for the attention, so a DaGAN file gives DaGAN's output at the first step. A grown model
(``model_params.highres_levels``, e.g. ``configs/vox-512.yaml``) starts from a released-size file the same way: its
new levels (``generator.highres.*``, the discriminator's new full-resolution scale) keep their initialisation, the
released discriminator moves to the scale that sees released-size images, and the first output is the released
output upsampled (:func:`dagan.checkpoint.grow_states`). Optimisers, schedulers
and the step counter start fresh (to continue a run with its optimisers, use ``--resume``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from dagan.checkpoint import (CheckpointError, check_fits, grow_states, load_shared, read_file,
                              read_official_checkpoint, read_official_depth, FORMAT_NAME)
from dagan.model import DaGAN

DEPTH_NETWORKS = ("depth_encoder", "depth_decoder")
STAGE_NETWORKS = {"gan": ("kp_detector", "generator", "discriminator"), "depth": DEPTH_NETWORKS}


@dataclass
class InitReport:
    """What an init file provided: ``loaded`` networks, ``new`` blocks (network.block) that kept their init."""

    path: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # networks of the stage that the file does not hold

    def line(self) -> str:
        parts = [f"init from {self.path}: loaded {', '.join(self.loaded)}"]
        if self.new:
            parts.append(f"new (initialised here: attention gates and grown levels' image residuals at 0): "
                         f"{', '.join(self.new)}")
        if self.missing:
            parts.append(f"not in the file: {', '.join(self.missing)}")
        return "; ".join(parts) + "; optimizers start fresh"


def _load_into(modules: dict[str, nn.Module], states: dict[str, dict], report: InitReport,
               new_prefixes: dict[str, tuple[str, ...]]) -> None:
    for name, state_dict in states.items():
        if name in modules and state_dict:
            blocks = load_shared(modules[name], state_dict, name, new_prefixes.get(name, ()))
            report.new += [f"{name}.{block}" for block in blocks]
            report.loaded.append(name)


def read_init_states(path: str, model: DaGAN, stage: str) -> dict[str, dict]:
    """{network name: state dict} from an official main file, an official depth folder or our checkpoint."""
    if os.path.isdir(path):
        encoder, decoder = read_official_depth(path)
        check_fits(model.config, {}, encoder)
        return {"depth_encoder": encoder, "depth_decoder": decoder}
    state = read_file(path, what="init checkpoint")
    if isinstance(state, dict) and state.get("format") == FORMAT_NAME:
        states = dict(state.get("networks", {}))
        training = state.get("training", {})
        if stage == "depth" and training.get("stage") == "depth":
            states.update({name: training[name] for name in ("pose_network", "uncertainty") if training.get(name)})
        return states
    networks = read_official_checkpoint(path)
    check_fits(model.config, networks)
    return networks


def initialize_from(model: DaGAN, path: Optional[str], stage: str,
                    extra_networks: Optional[dict[str, nn.Module]] = None) -> Optional[InitReport]:
    """Load ``path`` (see the module docstring) into ``model`` and ``extra_networks`` (the depth stage's pose and
    uncertainty networks); None when ``path`` is None. Raises :class:`CheckpointError` when the file holds none of
    the networks that ``stage`` trains."""
    if path is None:
        return None
    modules: dict[str, nn.Module] = {name: getattr(model, name) for name in
                                     ("depth_encoder", "depth_decoder", "kp_detector", "generator", "discriminator")}
    modules.update({name: module for name, module in (extra_networks or {}).items() if module is not None})
    report = InitReport(path)
    params = model.config.model_params
    states, new_prefixes = grow_states(read_init_states(path, model, stage), params.highres_levels,
                                       params.discriminator_params.scales)
    _load_into(modules, states, report, new_prefixes)
    report.missing = [name for name in (*STAGE_NETWORKS[stage], *(extra_networks or {}))
                      if name in modules and name not in report.loaded]
    if not any(name in report.loaded for name in STAGE_NETWORKS[stage]):
        raise CheckpointError(f"train_params.init_checkpoint {path!r} holds none of the networks that the {stage} "
                              f"stage trains ({', '.join(STAGE_NETWORKS[stage])})"
                              + ("; for the depth stage give the depth folder (encoder.pth, depth.pth) or a depth "
                                 "checkpoint" if stage == "depth" else ""))
    return report


def freeze(modules: dict[str, nn.Module], names: list[str]) -> list[nn.Module]:
    """Stop the gradients of the named networks (``depth`` = encoder and decoder) or dotted submodules (e.g.
    ``generator.dense_motion_network``); returns the frozen modules, which :func:`keep_fixed` holds in eval mode
    (BatchNorm statistics fixed too). ``modules``: the networks this stage has, by name."""
    frozen = []
    for name in names:
        root, _, rest = name.partition(".")
        roots = DEPTH_NETWORKS if root == "depth" else (root,)
        for network in roots:
            if network not in modules:
                raise CheckpointError(f"train_params.freeze: {name!r} is not trained in this stage (its networks: "
                                      f"{', '.join(modules)})")
            try:
                module = modules[network].get_submodule(rest) if rest else modules[network]
            except AttributeError:
                raise CheckpointError(f"train_params.freeze: {network} has no submodule {rest!r}") from None
            module.requires_grad_(False)
            frozen.append(module)
    return frozen


def keep_fixed(frozen: list[nn.Module]) -> None:
    """Eval mode for frozen modules (call after the networks' ``.train()``)."""
    for module in frozen:
        module.eval()


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of ``module`` that are not frozen."""
    return [parameter for parameter in module.parameters() if parameter.requires_grad]
