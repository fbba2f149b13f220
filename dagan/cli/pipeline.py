"""What the demo's three modes share (video, photos and faces, speech): loading the pipeline the flags ask for
(checkpoint or export, backend, auto-tune) and checking the output paths before any work."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch

from dagan.checkpoint import CheckpointError, is_our_checkpoint
from dagan.config import load_config
from dagan.inference import DaGANPipeline, autotune, exported_pipeline, exported_pipeline_or_none, resolve_device
from dagan.io import check_result_path
from dagan.io.files import guard_output
from dagan.model import load_checkpoint_or_official
from dagan.runtime.backends import BackendError, choose_backend, is_installed
from dagan.runtime.export import is_export_folder


def load_pipeline(args: argparse.Namespace) -> DaGANPipeline:
    """The pipeline demo.py's flags describe: an export folder, our checkpoint or the official release, on the
    backend ``--backend`` names (``auto``: OpenVINO on a CPU when installed and the model exports, else torch)."""
    overrides = list(args.overrides)
    if args.kp_num is not None and args.kp_num != -1:
        overrides.append(f"model_params.common_params.num_kp={args.kp_num}")
    if args.generator is not None:
        overrides.append(f"model_params.generator={args.generator}")
    device = "cpu" if args.cpu else args.device
    if os.path.isdir(args.checkpoint) and is_export_folder(args.checkpoint):
        backend = args.backend
        if backend == "auto":
            backend = "openvino" if is_installed("openvino") else "onnxruntime"
        if backend == "torch":
            raise BackendError(f"{args.checkpoint!r} holds exported ONNX graphs: add --backend onnxruntime or openvino")
        return DaGANPipeline.from_exported(args.checkpoint, backend, batch_size=args.batch_size)
    if is_our_checkpoint(args.checkpoint):
        model = load_checkpoint_or_official(args.checkpoint, args.depth_checkpoint)
        if overrides:
            wanted = load_config(None, overrides).model_params
            stored = model.config.model_params
            if args.kp_num not in (None, -1) and wanted.common_params.num_kp != stored.common_params.num_kp:
                raise CheckpointError(f"the checkpoint holds {stored.common_params.num_kp} keypoints; "
                                      f"drop --kp_num or use --kp_num {stored.common_params.num_kp}")
            if args.generator is not None and wanted.generator != stored.generator:
                raise CheckpointError(f"the checkpoint holds a {stored.generator}; drop --generator")
    else:
        model = load_checkpoint_or_official(args.checkpoint, args.depth_checkpoint, load_config(args.config, overrides))
    backend = args.backend
    if args.autotune and backend in ("auto", "torch"):
        run_autotune(args, model, resolve_device(device))  # stored: read back by the choices below
    if backend == "auto":
        choice = choose_backend(resolve_device(device), model, torch_only_flag(args))
        print(f"backend: {choice.reason}", file=sys.stderr)
        backend = choice.backend
        if backend != "torch":
            exported = exported_pipeline_or_none(model, backend, batch_size=args.batch_size)
            if exported is not None:
                return exported
            backend = "torch"
    if backend != "torch":
        return exported_pipeline(model, backend, batch_size=args.batch_size)
    return DaGANPipeline(model, device=device, precision=args.precision, batch_size=args.batch_size,
                         compile=args.compile)


def run_autotune(args: argparse.Namespace, model, device: torch.device) -> None:
    """``--autotune``: time the torch settings, plus OpenVINO when ``--backend auto`` could pick it, and store the
    fastest for this machine (:mod:`dagan.runtime.autotune`)."""
    backends = ("torch",)
    if args.backend == "auto" and choose_backend(device, model, torch_only_flag(args)).backend == "openvino":
        backends = ("torch", "openvino")
    tuned = autotune(model, device, backends=backends)
    print(f"auto-tuned: {tuned.backend}, batch {tuned.batch_size}, channels_last {tuned.channels_last} (cached)",
          file=sys.stderr)


def torch_only_flag(args: argparse.Namespace) -> Optional[str]:
    """The first requested option only the torch backend has, or None."""
    for flag, requested in (("--compile", args.compile), (f"--precision {args.precision}", args.precision != "fp32")):
        if requested:
            return flag
    return None


def visualization_path(result: str) -> str:
    """Where ``--visualize`` writes beside ``result``: ``<stem>_visualization<ext>`` (or ``<folder>_visualization/``)."""
    stripped = result.rstrip("/\\")
    if result.endswith(("/", os.sep)) or os.path.isdir(result):
        return stripped + "_visualization" + os.sep
    stem, extension = os.path.splitext(stripped)
    return f"{stem}_visualization{extension or '.mp4'}"


def check_outputs(args: argparse.Namespace, result: str, inputs: list[Optional[str]]) -> None:
    """Refuse, before any work, a result (its visualisation, its motion file) that would replace an input, a file
    this project did not write or another output of the command, or land in an unwritable folder."""
    inputs = [*inputs, args.checkpoint, args.depth_checkpoint]
    check_result_path(result, inputs)
    outputs = [("--result_video", result)]
    if args.visualize:
        check_result_path(visualization_path(result), inputs)
        outputs.append(("--visualize", visualization_path(result)))
    guard_output(getattr(args, "save_motion", None), inputs, "--save_motion", "motion file", others=outputs)
