"""What the demo's three modes share (video, photos and faces, speech): loading the pipeline the flags ask for
(checkpoint or export, backend, auto-tune), the face options and photos fitted to ``--max_size``, the motion-control
flags (:mod:`dagan.motion`), and checking the output paths before any work."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional

import numpy as np
import torch

from dagan.checkpoint import CheckpointError, is_our_checkpoint
from dagan.config import ConfigError, load_config
from dagan.faces.alignment import Framing
from dagan.faces.animation import FaceOptions, MotionOptions, fit_picture
from dagan.faces.restore import RESTORE_MODELS, RestoreOptions
from dagan.inference import DaGANPipeline, InferenceError, autotune, exported_pipeline, exported_pipeline_or_none, resolve_device
from dagan.io import MediaError, check_result_path, read_image_uint8
from dagan.io.files import guard_output
from dagan.model import load_checkpoint_or_official
from dagan.motion import ANIMATE, MotionControl, parse_region_scales, parse_still
from dagan.runtime.backends import BackendError, choose_backend, is_installed
from dagan.runtime.export import ExportError, is_export_folder


# The problems a user can cause and fix: the commands print their message alone (one line, no traceback).
KNOWN_ERRORS = (MediaError, CheckpointError, ConfigError, InferenceError, BackendError, ExportError, ImportError,
                ValueError)


def error_line(error: BaseException, debug: bool, known: tuple = KNOWN_ERRORS) -> str:
    """The one line a command prints for ``error``: its message for a known problem, else its type and a pointer
    to ``--debug`` (which prints the traceback too)."""
    if debug:
        traceback.print_exc()
    if isinstance(error, known):
        return str(error)
    return f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"


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
    check_motion_output(args, inputs, outputs)


# Motion control: every driver (video, image, speech, motion file) takes these flags (docs/demo.md, "Motion control").
def add_motion_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "motion control (every driver: video, image, speech, motion file; docs/demo.md \"Motion control\")",
        "the driver's keypoint motion is split into a head pose and a local expression (dagan.motion), which are "
        "scaled apart: 0 = the source's, 1 = the driver's, >1 exaggerates")
    group.add_argument("--animate", choices=ANIMATE, default="all", help="what the portrait copies: all (default), "
                       "pose (head pose only: the source's expression) or expression (the source's head pose)")
    group.add_argument("--pose_scale", type=float, default=1.0, help="head-pose strength (default 1)")
    group.add_argument("--expression_scale", type=float, default=1.0, help="expression strength (default 1)")
    group.add_argument("--region_scale", default=None, metavar="REGION=SCALE,...", help="strength of each face "
                       "region's expression, e.g. mouth=1.3,eyes=0 (regions: eyes, brows, mouth, rest; each keypoint "
                       "gets the region of its nearest source landmark; needs a face backend)")
    group.add_argument("--still", default=None, metavar="REGION,...", help="keep these regions as in the source, "
                       "e.g. eyes or eyes,brows (= --region_scale REGION=0)")
    group.add_argument("--eye_openness", type=float, default=None, metavar="RATIO", help="target eye openness (eye "
                       "aspect ratio on the output's landmarks: ~0.3 open, <0.1 closed); solved and reported")
    group.add_argument("--mouth_openness", type=float, default=None, metavar="RATIO", help="target mouth openness "
                       "(inner-lip gap / mouth width on the output's landmarks: 0 closed, ~0.6 wide open)")
    group.add_argument("--save_motion", default=None, metavar="NPZ", help="also write the driving motion as a motion "
                       "file (.npz of plain arrays: keypoints, Jacobians, pose/local split, fps, anchor), for "
                       "--driving_motion")
    group.add_argument("--driving_motion", default=None, metavar="NPZ", help="drive with a motion file saved by "
                       "--save_motion instead of a video (no driving frames needed)")
    group.add_argument("--driving_image", default=None, metavar="IMAGE", help="drive with one photo: with "
                       "--source_image the result is a still image (give --result_video a .png or .jpg), with "
                       "--source_video a video whose every frame takes the photo's expression")


def motion_control(args: argparse.Namespace) -> MotionControl:
    """The :class:`~dagan.motion.MotionControl` of a command line (ValueError, one line, for a bad value)."""
    return MotionControl(animate=args.animate, pose_scale=args.pose_scale, expression_scale=args.expression_scale,
                         region_scales=parse_region_scales(args.region_scale), still=parse_still(args.still),
                         eye_openness=args.eye_openness, mouth_openness=args.mouth_openness)


def motion_analyzer(args: argparse.Namespace, control: MotionControl, visualize: bool = False):
    """The face analyzer regions and openness targets need (None when they are not asked for; with only
    ``visualize``, None when no face backend is installed)."""
    if not (control.needs_regions or visualize):
        return None
    from dagan.faces import MissingFaceBackend, get_face_analyzer

    try:
        return get_face_analyzer(getattr(args, "face_backend", "auto"))
    except MissingFaceBackend as error:
        if control.needs_regions:
            raise ValueError(f"--region_scale, --still and openness targets find the source's landmarks: {error}") \
                from None
        return None


def driver_kind(path: str) -> str:
    """What a driving path holds: "motion" (.npz), "image" (an image file) or "video"."""
    from pathlib import Path

    from dagan.io import is_image_file

    if str(path).lower().endswith(".npz"):
        return "motion"
    return "image" if is_image_file(Path(path)) and not os.path.isdir(path) else "video"


def driving_path(args: argparse.Namespace) -> Optional[str]:
    """The one driver given: --driving_video, --driving_image or --driving_motion (ValueError for several)."""
    given = [(flag, value) for flag, value in (("--driving_video", args.driving_video),
                                               ("--driving_image", args.driving_image),
                                               ("--driving_motion", args.driving_motion)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one driver, not {' and '.join(flag for flag, _ in given)}")
    return given[0][1] if given else None


def check_motion_output(args: argparse.Namespace, inputs: list[Optional[str]],
                        outputs: list[tuple[str, str]]) -> None:
    """Refuse, before any work, a --save_motion path that would replace an input, a file this project did not
    write or another output of the command (``outputs``: (flag, path) pairs)."""
    if getattr(args, "save_motion", None) is None:
        return
    from dagan.io.files import check_writable

    guard_output(args.save_motion, inputs, "--save_motion", "motion file", others=outputs)
    if not str(args.save_motion).lower().endswith(".npz"):
        raise ValueError(f"--save_motion writes a .npz file; got {args.save_motion!r}")
    check_writable(args.save_motion, "motion file")


def face_options(args: argparse.Namespace) -> FaceOptions:
    """The :class:`~dagan.faces.animation.FaceOptions` of a command line."""
    paste_back = args.crop == "auto" if args.paste_back is None else args.paste_back
    return FaceOptions(crop=args.crop, paste_back=paste_back, faces=args.faces,
                       framing=Framing(args.crop_scale, args.crop_offset_y, rotate=not args.no_crop_rotation),
                       driving_crop=args.driving_crop, detect_every=args.detect_every, max_size=args.max_size,
                       motion=MotionOptions(args.relative, args.adapt_scale, args.motion_scale),
                       restore=restore_options(args))


def read_picture(path: str, max_size: int) -> np.ndarray:
    """The photo at ``path`` as (H, W, 3) uint8, shrunk to ``max_size`` (:func:`fit_picture`); says so when it is."""
    picture = read_image_uint8(path)
    fitted = fit_picture(picture, max_size)
    if max(picture.shape[:2]) > max_size:
        print(f"note: {os.path.basename(path)} is {picture.shape[1]}x{picture.shape[0]}; the result is "
              f"{fitted.shape[1]}x{fitted.shape[0]} (--max_size {max_size} caps the longer side)", file=sys.stderr)
    return fitted


# Face restoration of the animated crops (dagan.faces.restore): every face mode takes these flags.
def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """``--restore`` and its options (dagan.faces.restore), as one argument group."""
    group = parser.add_argument_group(
        "face restoration", "sharpen the animated face with your own ONNX face-restoration model before paste-back "
        f"(supported: {', '.join(RESTORE_MODELS)}); nothing is downloaded")
    group.add_argument("--restore", default=None, metavar="MODEL.onnx",
                       help="restore the animated face with this ONNX model (GFPGAN 1.4, CodeFormer, GPEN-BFR "
                       "256/512/1024 or RestoreFormer++ as ONNX files); its type is detected from its inputs")
    group.add_argument("--restore_strength", type=float, default=1.0, metavar="0..1",
                       help="how much of the restored face is blended in, inside the paste-back mask (default 1)")
    group.add_argument("--restore_model", choices=tuple(RESTORE_MODELS), default=None,
                       help="name the restoration model when its inputs do not tell (default: detected)")
    group.add_argument("--restore_fidelity", type=float, default=0.7, metavar="0..1",
                       help="CodeFormer's fidelity weight: 0 = the model's own face, 1 = closest to the animation "
                       "(default 0.7; other models ignore it)")
    group.add_argument("--restore_stabilize", action=argparse.BooleanOptionalAction, default=True,
                       help="average the restored detail over time where the face holds still, so hair and lips do "
                       "not flicker (default on; --no-restore_stabilize restores each frame on its own)")


def restore_options(args: argparse.Namespace) -> Optional[RestoreOptions]:
    """The restoration the command line asks for (run by ONNX Runtime, or OpenVINO with --backend openvino)."""
    if args.restore is None:
        return None
    backend = getattr(args, "backend", "auto")  # the web app has no --backend
    runtime = "openvino" if backend == "openvino" or not is_installed("onnxruntime") else "onnxruntime"
    return RestoreOptions(args.restore, args.restore_strength, args.restore_model, args.restore_stabilize,
                          args.restore_fidelity, runtime)
