"""``demo.py``: animate one portrait with a driving video. Accepts the reference demo's flags unchanged."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from dagan.cli.demo_audio import add_audio_arguments, check_speech_flags, run_audio
from dagan.cli.demo_faces import add_face_arguments, run_faces, uses_face_mode
from dagan.cli.pipeline import (add_motion_arguments, check_outputs, driving_path, error_line, load_pipeline,
                                motion_analyzer, motion_control, visualization_path)
from dagan.faces.landmarks import best_aligned_frame
from dagan.inference import KeypointSmoother, frame_at
from dagan.io import open_image_as_video, open_video, open_writer, read_image, set_pixel_limit
from dagan.io.images import pixel_limit
from dagan.runtime.backends import BACKEND_VARIABLE, BACKENDS, BackendError, default_backend
from dagan.training.distributed import launch_share

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "vox-adv-256.yaml")

EXAMPLE = """\
example (the official release; relative motion with scale adaptation, as the DaGAN README runs it):
  python demo.py --config configs/vox-adv-256.yaml \\
      --checkpoint checkpoints/DaGAN_vox_adv_256.pth.tar --depth_checkpoint checkpoints/depth_face_model \\
      --source_image data/samples/source.png --driving_video data/samples/driving.mp4 \\
      --result_video result.mp4 --relative --adapt_scale

  --result_video out_frames/   writes lossless PNG frames 000000.png, 000001.png, ... instead of an mp4.

photos as they come (the default --crop auto): the face is found, cropped like VoxCeleb, animated and pasted back,
so the result is the whole photo (up to --max_size) with the face moving and the background still:
  python demo.py --checkpoint ... --source_image group.jpg --driving_video phone.mp4 --relative --adapt_scale \\
      --faces all --result_video group_animated.mp4
  python demo.py --checkpoint ... --source_image 'photos/*.jpg' --driving_video phone.mp4 --result_video out/
  python demo.py --checkpoint ... --source_video interview.mp4 --driving_video phone.mp4 --audio source
--crop none resizes the whole image to the model's resolution (256x256) with anti-aliasing, as the reference demo.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo.py", description="Animate a source portrait with a driving video "
                                     "(DaGAN, depth-aware talking-head generation).", epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="model config (ignored for this project's "
                        "checkpoints, which hold their own); default: configs/vox-adv-256.yaml")
    parser.add_argument("--checkpoint", required=True, help="official DaGAN .pth.tar or a dagan checkpoint")
    parser.add_argument("--depth_checkpoint", default=None, help="folder with the official encoder.pth and depth.pth "
                        "(needed with an official checkpoint)")
    parser.add_argument("--source_image", default=None, help="portrait or photo (any format Pillow reads); a folder "
                        "or a quoted glob pattern animates each image (a batch)")
    parser.add_argument("--driving_video", default=None, help="driving video (any format ffmpeg reads) or a folder "
                        "of frames sorted by name (or use --driving_audio)")
    parser.add_argument("--result_video", default="result.mp4", help="output .mp4 (H.264 + the driving audio), or a "
                        "folder (existing, or ending in /) for PNG frames")
    parser.add_argument("--relative", action="store_true", help="transfer relative motion (recommended)")
    parser.add_argument("--adapt_scale", action="store_true", help="adapt motion scale to the source face size")
    parser.add_argument("--find_best_frame", action="store_true", help="anchor the relative motion at the driving "
                        "frame whose face is most aligned with the source (dlib's 68 landmarks)")
    parser.add_argument("--best_frame", type=int, default=None, help="anchor frame index (skips the search)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (same as --device cpu)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="reduced precision runs on CUDA only")
    parser.add_argument("--batch_size", type=int, default=None, help="driving frames per forward pass (default: "
                        "the fastest measured for the device: 1 on a CPU, 16 on CUDA)")
    parser.add_argument("--autotune", action="store_true", help="time batch 1/2 x NCHW/channels_last on torch "
                        "(and OpenVINO with --backend auto) on this machine first (seconds, plus a one-off export) "
                        "and keep the fastest as this machine's default (cached)")
    parser.add_argument("--backend", default=default_backend(), choices=BACKENDS, help="runtime of the networks: "
                        "auto (default, or $" + BACKEND_VARIABLE + "): OpenVINO on a CPU when installed (about 20%% "
                        "faster; the install brings it on Linux x86_64 and Windows), else torch; or torch, "
                        "onnxruntime, openvino (the graphs are exported once into ~/.cache/dagan/onnx, or give "
                        "--checkpoint an export folder from scripts/export_onnx.py)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the per-frame networks: about a "
                        "minute of compilation, then faster frames (worth it for long videos)")
    parser.add_argument("--kp_num", type=int, default=None, help="number of keypoints (default: the config's)")
    parser.add_argument("--generator", default=None, choices=["DepthAwareGenerator", "SPADEDepthAwareGenerator"],
                        help="generator class (default: the config's)")
    parser.add_argument("--smooth", nargs="?", type=float, const=1.0, default=None, metavar="MIN_CUTOFF",
                        help="One-Euro smoothing of the driving keypoints against jitter (optional minimum cutoff "
                        "in Hz, default 1.0; lower is smoother)")
    parser.add_argument("--visualize", action="store_true", help="also write <result>_visualization.mp4: source, "
                        "driving, result (with keypoints) and both depth maps side by side")
    parser.add_argument("--no_audio", action="store_true", help="do not copy the driving video's audio")
    parser.add_argument("--max_pixels", type=int, default=None, help="refuse images and video frames larger than "
                        "this many pixels before decoding them (default: DAGAN_MAX_PIXELS, else 50000000 = 50 MP)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model_params.common_params.num_kp=15")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_motion_arguments(parser)
    add_face_arguments(parser)
    add_audio_arguments(parser)
    return parser


def parser_defaults() -> dict:
    """The default of every destination of :func:`build_parser` (to tell which flags a command line gave)."""
    return vars(build_parser().parse_args(["--checkpoint", ""]))


def anchor_frame(args, source: np.ndarray, video) -> Optional[np.ndarray]:
    """The driving frame that anchors relative motion: --best_frame N, the best-aligned face, or the first."""
    index = args.best_frame
    if args.find_best_frame and index is None:
        print("finding the driving frame best aligned with the source...", file=sys.stderr)
        index = best_aligned_frame(source, video)
        print(f"best frame: {index}", file=sys.stderr)
    return None if index is None else frame_at(video, index)


def check_inputs(args: argparse.Namespace) -> None:
    """One source (--source_image, --source_video or --pairs) and, without --pairs, a --driving_video."""
    given = [flag for flag, value in (("--source_image", args.source_image), ("--source_video", args.source_video),
                                      ("--pairs", args.pairs)) if value is not None]
    if len(given) != 1:
        raise ValueError("give one of --source_image, --source_video or --pairs" +
                         (f" (got {' and '.join(given)})" if given else ""))
    driver = driving_path(args)
    if args.pairs is None and driver is None:
        raise ValueError("--driving_video is required (or --driving_image, --driving_motion, source,driving pairs "
                         "with --pairs, or speech with --driving_audio and --audio_checkpoint)")
    if args.pairs is not None and driver is not None:
        raise ValueError("--pairs names the driving files itself; drop " +
                         ("--driving_video" if args.driving_video else "--driving_image" if args.driving_image
                          else "--driving_motion"))


def run(args: argparse.Namespace) -> int:
    set_pixel_limit(args.max_pixels if args.max_pixels is not None else pixel_limit())  # a bad DAGAN_MAX_PIXELS: here
    rank, world = launch_share()
    if rank != 0 and (args.driving_audio is not None or not uses_face_mode(args)):
        print(f"rank {rank} of {world}: one job, animated by rank 0 (torchrun shares batches only)", file=sys.stderr)
        return 0
    if args.driving_audio is not None:  # speech-driven (dagan.audio)
        check_speech_flags(args, parser_defaults())
        check_outputs(args, args.result_video, [args.source_image, args.driving_audio, args.audio_checkpoint,
                                                args.reference_video])
        return run_audio(args)
    check_inputs(args)
    motion_control(args)  # a bad motion flag is reported before any work
    if uses_face_mode(args):
        return run_faces(args, load_pipeline, check_outputs)
    return run_plain(args)


def run_plain(args: argparse.Namespace) -> int:
    """The whole-image demo (``--crop none``): one source image, one driver (video, image or motion file)."""
    from dagan.motion import MotionRecorder, animate_motion, check_keypoint_count, load_motion, motion_editor

    driver = driving_path(args)
    check_outputs(args, args.result_video, [args.source_image, driver])
    control = motion_control(args)
    if args.driving_motion is not None and (args.smooth is not None or args.find_best_frame
                                            or args.best_frame is not None):
        raise ValueError("a motion file holds its keypoints already smoothed and anchored: drop --smooth, "
                         "--find_best_frame and --best_frame with --driving_motion")
    if args.driving_motion is not None and args.visualize:
        raise ValueError("--visualize shows the driving frames, which a motion file does not hold; drop it")
    source = read_image(args.source_image)
    motion = None
    if args.driving_motion is not None:
        motion = load_motion(args.driving_motion)
    video = None if motion is not None else (open_image_as_video(driver) if args.driving_image else open_video(driver))
    pipeline = load_pipeline(args)
    if motion is not None:
        check_keypoint_count(motion, pipeline.config.model_params.common_params.num_kp, args.driving_motion)
    fps = motion.fps if motion is not None else video.fps
    kind = "motion" if motion is not None else "image" if args.driving_image else "video"
    recorder = MotionRecorder(fps, kind, control.pose_model) if args.save_motion else None
    editor = motion_editor(pipeline, source, control, motion_analyzer(args, control, args.visualize), recorder,
                           show_regions=args.visualize)
    for message in editor.report:
        print(message, file=sys.stderr)
    audio = None if video is None or args.no_audio or not video.has_audio else driver
    inputs = [args.source_image, driver, args.checkpoint]
    if motion is not None:
        frames = animate_motion(pipeline, source, motion, args.relative, args.adapt_scale, edit=editor)
        total = motion.num_frames
    else:
        smoother = KeypointSmoother(video.fps, min_cutoff=args.smooth) if args.smooth is not None else None
        # A driving image is measured from the source itself (its motion = the source's face -> the photo's).
        anchor = source if args.driving_image else anchor_frame(args, source, video)
        frames = pipeline.animate(source, video, relative=args.relative, adapt_scale=args.adapt_scale,
                                  driving_initial=anchor, smooth=smoother, visualize=args.visualize, edit=editor,
                                  keypoint_colors=editor.colors)
        total = video.num_frames
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(open_writer(args.result_video, fps, audio_from=audio, protected_paths=inputs))
        panels = stack.enter_context(open_writer(visualization_path(args.result_video), fps, audio_from=audio,
                                                 protected_paths=inputs)) if args.visualize else None
        for animated in tqdm(frames, total=total, unit="frame", desc="animating", dynamic_ncols=True):
            writer.write(animated.frame)
            if panels is not None:
                panels.write(animated.visualization)
    if recorder is not None:
        recorder.save(args.save_motion)
    print(f"wrote {args.result_video}" + (f" and {visualization_path(args.result_video)}" if args.visualize else "")
          + (f" and {args.save_motion}" if recorder is not None else ""), file=sys.stderr)
    return 0


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def main(argv: Optional[list[str]] = None) -> int:
    try:
        parser = build_parser()
    except BackendError as error:  # a bad $DAGAN_BACKEND
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line per known problem; tracebacks only with --debug
        message = error_line(error, args.debug)
        if is_out_of_memory(error):
            batch = args.batch_size or "default"
            message = f"out of memory with --batch_size {batch}; try a smaller --batch_size (e.g. 1)"
        print(f"error: {message}", file=sys.stderr)
        return 1
