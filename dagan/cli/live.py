"""``scripts/live.py``: a camera, a stream or a file played in real time drives a portrait live (dagan.live)."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Optional

from dagan.cli.pipeline import KNOWN_ERRORS, add_restore_arguments, error_line, load_pipeline, restore_options
from dagan.faces.alignment import Framing
from dagan.faces.animation import FaceOptions, FaceSession, MotionOptions, fit_picture
from dagan.faces.detection import MissingFaceBackend, get_face_analyzer
from dagan.faces.restore import FaceRestorer
from dagan.inference import MIN_INT8_PSNR, KeypointSmoother, int8_pipeline
from dagan.io import check_result_path, open_video, read_image_uint8
from dagan.live import (CaptureThread, FaceTracker, LiveAnimator, LiveError, LiveLoop, WholeFrameTracker, open_camera,
                        open_file_source)
from dagan.live.capture import DEFAULT_WAIT_S, open_stream
from dagan.live.sinks import RecordSink, VirtualCameraSink, WindowSink
from dagan.runtime.backends import BACKEND_VARIABLE, BACKENDS, BackendError, default_backend

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "vox-adv-256.yaml")
DEFAULT_CALIBRATION = os.path.join(REPO_ROOT, "data", "samples", "driving.mp4")
CALIBRATION_FRAMES = 24
CAPTURE_JOIN_S = 10.0  # how long the speech capture may take to finish its step when stopped

EXAMPLE = """\
examples:
  python scripts/live.py --source_image portrait.png --checkpoint checkpoints/vox.pt --camera 0 --window
  python scripts/live.py --source_image portrait.png --checkpoint checkpoints/vox.pt --camera 0 --virtual_camera
  python scripts/live.py --source_image portrait.png --checkpoint checkpoints/vox.pt \\
      --driving_video data/samples/driving.mp4 --realtime --record live.mp4
  python scripts/live.py --source_image portrait.png --checkpoint checkpoints/vox.pt \\
      --driving_audio mic --audio_checkpoint runs/me/audio_model.pt --virtual_camera

In the window: a re-anchors the motion on your current (neutral) face, q quits. Look at the camera with a neutral
face at start: the first frame with a face is the anchor of the relative motion.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="live.py", description="Animate a portrait live from a camera, a network "
                                     "stream or a video played in real time (DaGAN).", epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    add_input_arguments(parser)
    add_output_arguments(parser)
    add_motion_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--source_image", required=True, help="the portrait to animate (any format Pillow reads)")
    group.add_argument("--checkpoint", required=True, help="official DaGAN .pth.tar, a dagan checkpoint, or an export "
                       "folder from scripts/export_onnx.py")
    group.add_argument("--depth_checkpoint", default=None, help="folder with the official encoder.pth and depth.pth "
                       "(needed with an official checkpoint)")
    group.add_argument("--config", default=DEFAULT_CONFIG, help="model config for official checkpoints (ours hold "
                       "their own); default: configs/vox-adv-256.yaml")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    group.add_argument("--backend", default=default_backend(), choices=BACKENDS, help="runtime of the networks, as "
                       "in demo.py: auto (default, or $" + BACKEND_VARIABLE + "): OpenVINO on a CPU when installed, "
                       "else torch; or torch, onnxruntime, openvino")
    group.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                       help="bf16/fp16: CUDA only (torch backend); int8: the per-frame networks quantised with NNCF "
                       "and run by OpenVINO on the CPU (the [int8] extra), accepted only when its frames keep "
                       f"{MIN_INT8_PSNR:g} dB PSNR against fp32 on held-out calibration frames (the figure is printed)")
    group.add_argument("--calibration", default=DEFAULT_CALIBRATION, metavar="VIDEO", help="with --precision int8: "
                       "driving frames to calibrate on (a video or frame folder, ideally of your own face; default: "
                       "data/samples/driving.mp4); every other frame of the first 24 is held out for the PSNR check")
    group.add_argument("--compile", action="store_true", help="torch.compile the per-frame networks (about a minute "
                       "of compilation at start)")
    parser.set_defaults(overrides=[], kp_num=None, generator=None, cpu=False, autotune=False, batch_size=1)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input (one of)")
    inputs = group.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--camera", default=None, metavar="INDEX|DEVICE", help="a camera: its index (0 = the first) "
                        "or device path (/dev/video2)")
    inputs.add_argument("--stream", default=None, metavar="URL", help="a network stream (rtsp://..., http://...)")
    inputs.add_argument("--driving_video", default=None, help="a video file (or frame folder) as the camera: with "
                        "--realtime at its own frame rate, else every frame as fast as the model goes")
    inputs.add_argument("--driving_audio", default=None, metavar="mic|SPEECH", help="speech instead of a face: "
                        "'mic' (the microphone; the [live] extra) or an audio file played in real time; needs "
                        "--audio_checkpoint")
    group.add_argument("--audio_checkpoint", default=None, help="with --driving_audio: the audio model "
                       "(scripts/personalize.py or train.py's audio stage)")
    group.add_argument("--audio_device", default=None, help="with --driving_audio mic: the microphone (name or "
                       "index; default: the system's)")
    group.add_argument("--realtime", action="store_true", help="play --driving_video at its frame rate, dropping the "
                       "frames the model cannot keep up with, as a camera would")
    group.add_argument("--fps", type=float, default=None, help="with --driving_video --realtime: play at this rate "
                       "instead of the file's; with --driving_audio: the frame rate of the portrait (default 25)")
    group.add_argument("--loop", action="store_true", help="play --driving_video again and again until stopped")
    group.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS", help="how long a camera or "
                       f"stream may take to open and give a frame, and a face to appear at start (default "
                       f"{DEFAULT_WAIT_S:g})")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("outputs (any of; default --window)")
    group.add_argument("--window", action="store_true", help="show source | camera | result in a window (OpenCV "
                       "with GUI support and a display); keys: a re-anchor, q quit")
    group.add_argument("--virtual_camera", action="store_true", help="send the result to a virtual camera for "
                       "Zoom/Meet/OBS (the [live] extra: pyvirtualcam, plus v4l2loopback on Linux or OBS on "
                       "Windows/macOS)")
    group.add_argument("--virtual_camera_device", default=None, help="the virtual camera device (e.g. /dev/video9)")
    group.add_argument("--record", default=None, metavar="OUT.mp4", help="record what is shown, in real time")
    group.add_argument("--overlay", action="store_true", help="write fps, latency and dropped frames on the result")
    group.add_argument("--max_frames", type=int, default=None, help="stop after this many shown frames")


def add_motion_arguments(parser: argparse.ArgumentParser) -> None:
    framing = Framing()
    group = parser.add_argument_group("motion and faces")
    group.add_argument("--crop", choices=("auto", "none"), default="auto", help="auto (default): find the source "
                       "face and crop it like VoxCeleb; none: the whole source image is the face")
    group.add_argument("--paste_back", action=argparse.BooleanOptionalAction, default=None, help="show the whole "
                       "source picture with the face animated (default: on with --crop auto)")
    group.add_argument("--driving_crop", choices=("track", "none"), default="track", help="track (default): find "
                       "the driving face once, then follow it; none: the frames already are face crops")
    group.add_argument("--crop_scale", type=float, default=framing.crop_scale, help="crop side / face size (default "
                       f"{framing.crop_scale})")
    group.add_argument("--max_size", type=int, default=FaceOptions().max_size, metavar="PIXELS",
                       help="longer side of the shown picture with --paste_back")
    group.add_argument("--no_adapt_scale", action="store_true", help="do not adapt the motion to the source face's "
                       "size")
    group.add_argument("--motion_scale", type=float, default=1.0, help="strength of the motion (0 = still, 1 = as "
                       "driven)")
    group.add_argument("--smooth", nargs="?", type=float, const=1.0, default=None, metavar="MIN_CUTOFF",
                       help="One-Euro smoothing of the driving keypoints (minimum cutoff in Hz, default 1.0)")
    group.add_argument("--face_backend", choices=("auto", "dlib", "face_alignment"), default="auto",
                       help="face detector and landmarks (default: dlib when installed)")
    add_restore_arguments(parser)


def live_pipeline(args: argparse.Namespace):
    """The pipeline the flags ask for (:func:`~dagan.cli.pipeline.load_pipeline`), or with ``--precision int8`` the
    INT8 OpenVINO pipeline that passed its PSNR gate."""
    if args.precision != "int8":
        return load_pipeline(args)
    if args.backend not in ("auto", "openvino"):
        raise ValueError(f"--precision int8 runs on OpenVINO: use --backend openvino (or auto), not {args.backend}")
    from dagan.checkpoint import is_our_checkpoint
    from dagan.config import load_config
    from dagan.model import load_checkpoint_or_official

    config = None if is_our_checkpoint(args.checkpoint) else load_config(args.config)
    model = load_checkpoint_or_official(args.checkpoint, args.depth_checkpoint, config)
    frames = [frame for _, frame in zip(range(CALIBRATION_FRAMES), open_video(args.calibration))]
    pipeline, psnr = int8_pipeline(model, read_image_uint8(args.source_image), frames[0::2], frames[1::2])
    print(f"INT8: {psnr:.1f} dB PSNR against fp32 on {len(frames[1::2])} held-out frames (gate "
          f"{MIN_INT8_PSNR:g} dB): accepted", file=sys.stderr)
    return pipeline


def source_animator(args: argparse.Namespace, pipeline, fps: float = 25.0) -> LiveAnimator:
    """The source portrait, its face found and prepared once (``fps``: the input's rate, for ``--smooth``)."""
    paste_back = args.crop == "auto" if args.paste_back is None else args.paste_back
    options = FaceOptions(crop=args.crop, paste_back=paste_back, framing=Framing(args.crop_scale),
                          max_size=args.max_size,
                          motion=MotionOptions(True, not args.no_adapt_scale, args.motion_scale))
    picture = read_image_uint8(args.source_image)
    if paste_back:
        picture = fit_picture(picture, args.max_size)
    face = None
    if args.crop == "auto":
        session = FaceSession(pipeline, options, face_backend=args.face_backend)
        face = session.picture_faces(picture, f"the source image {args.source_image}")[0]
        for message in session.messages:
            print(message, file=sys.stderr)
    smooth = KeypointSmoother(fps, min_cutoff=args.smooth) if args.smooth is not None else None
    return LiveAnimator(pipeline, picture, face, options.motion, paste_back, smooth,
                        live_restorer(args, pipeline, options.framing if face is not None else Framing()))


def live_restorer(args: argparse.Namespace, pipeline, framing: Framing) -> Optional[FaceRestorer]:
    """``--restore``: the animated crop restored (and stabilised over time) before it is shown, as in demo.py."""
    options = restore_options(args)
    if options is None:
        return None
    model = options.load()
    print(f"restoring the face with {model.describe()}, strength {options.strength}"
          + (", stabilised over time" if options.stabilize else ""), file=sys.stderr)
    return FaceRestorer(model, pipeline.image_size, options.strength, options.stabilize, framing)


def open_source(args: argparse.Namespace):
    if args.camera is not None:
        return open_camera(args.camera, args.wait)
    if args.stream is not None:
        return open_stream(args.stream, args.wait)
    if args.fps is not None and not args.realtime:
        raise ValueError("--fps sets the rate of --realtime playback: add --realtime")
    return open_file_source(args.driving_video, realtime=args.realtime, fps=args.fps,
                            repeat=None if args.loop else 1)


def driving_tracker(args: argparse.Namespace):
    if args.driving_crop == "none":
        return WholeFrameTracker()
    try:
        analyzer = get_face_analyzer(args.face_backend)
    except MissingFaceBackend as error:
        raise MissingFaceBackend(f"following the driving face needs a face backend: {error}; or give face crops "
                                 "with --driving_crop none") from error
    return FaceTracker(analyzer, Framing(args.crop_scale, rotate=False))


def check_outputs(args: argparse.Namespace) -> None:
    """The outputs' one-line errors, before any work."""
    if args.window or not (args.virtual_camera or args.record):
        WindowSink.check()
    if args.virtual_camera:
        VirtualCameraSink.check(args.virtual_camera_device)


def open_sinks(args: argparse.Namespace, stack: contextlib.ExitStack, animator, fps: float,
               audio_from: Optional[str] = None, heard: bool = False) -> list:
    """The outputs the flags ask for (the window when none is named), closed by ``stack``; ``audio_from``: speech,
    recorded frame by frame with that file as its audio track; ``heard``: speech recorded with the audio as it is
    heard (a microphone: the recording's ``audio_track`` is filled by the caller)."""
    sinks = []
    if args.window or not (args.virtual_camera or args.record):
        sinks.append(WindowSink(animator.picture))
    if args.virtual_camera:
        result_size = animator.picture.shape[:2] if animator.paste is not None else animator.size
        sinks.append(VirtualCameraSink(result_size, fps, args.virtual_camera_device))
    for sink in sinks:
        stack.callback(sink.close)
    if args.record:
        record = RecordSink(args.record, fps, protected_paths=[args.source_image, args.driving_video, args.checkpoint,
                                                              args.driving_audio, args.audio_checkpoint],
                            audio_from=audio_from, by_index=args.driving_audio is not None, heard=heard)
        sinks.append(record)
        stack.push(record.__exit__)  # kept on success or Ctrl-C, removed on an error
    return sinks


def run_speech(args: argparse.Namespace) -> int:
    """--driving_audio: the streaming audio model drives the portrait (dagan.live.speech)."""
    from dagan.audio.animate import check_compatible
    from dagan.audio.model import AudioDrivenModel
    from dagan.live.speech import SpeechAnimator, SpeechCapture, file_pieces, microphone_pieces, speech_stream

    if args.audio_checkpoint is None:
        raise ValueError("--driving_audio needs --audio_checkpoint (an audio model: scripts/personalize.py)")
    audio_model = AudioDrivenModel.load(args.audio_checkpoint)
    if args.driving_audio == "mic":
        pieces, total = microphone_pieces(args.audio_device), None
    else:
        pieces, total = file_pieces(args.driving_audio)
    pipeline = live_pipeline(args)
    check_compatible(audio_model, pipeline)
    picture = read_image_uint8(args.source_image)
    animator = SpeechAnimator(pipeline, picture)
    fps = args.fps or 25.0
    stream = speech_stream(audio_model, fps, total)
    print(f"live speech: the audio model looks {stream.look_ahead:.2f} s ahead", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        sinks = open_sinks(args, stack, animator, fps, audio_from=None if total is None else args.driving_audio,
                           heard=total is None)
        recording = next((sink for sink in sinks if isinstance(sink, RecordSink)), None)
        if recording is not None and recording.audio_track is not None:  # the microphone, kept as the model hears it
            pieces = recording.audio_track.record(pieces)
        capture = SpeechCapture(stream, pieces, picture, realtime=args.driving_audio != "mic")
        loop = LiveLoop(capture.slot, None, animator, sinks, overlay=args.overlay)
        capture.start()
        stack.callback(capture.join, CAPTURE_JOIN_S)  # no model step left running when the program exits
        stack.callback(capture.stop)
        stats = run_loop(args, loop)
    return report(args, stats)


def run(args: argparse.Namespace) -> int:
    if args.record:
        check_result_path(args.record, [args.source_image, args.driving_video, args.checkpoint, args.driving_audio,
                                        args.audio_checkpoint])
    check_outputs(args)  # a missing display or virtual-camera backend, a missing camera or a silent stream fail
    restore = restore_options(args)
    if restore is not None:
        if args.driving_audio is not None:
            raise ValueError("--restore works with a camera, a stream or a driving video; drop it with --driving_audio")
        restore.check()  # a bad restoration model fails before the source is opened and the model loads
    if args.driving_audio is not None:
        return run_speech(args)
    source = open_source(args)  # before the model loads
    pipeline = live_pipeline(args)
    animator = source_animator(args, pipeline, source.fps or 25.0)
    animator.warm_up()
    tracker = driving_tracker(args)
    capture = CaptureThread(source)
    with contextlib.ExitStack() as stack:
        sinks = open_sinks(args, stack, animator, source.fps or 25.0)
        loop = LiveLoop(capture.slot, tracker, animator, sinks, overlay=args.overlay)
        capture.start()
        stack.callback(capture.stop)
        loop.wait_for_face(args.wait, source.name)
        print("live: press a in the window to re-anchor, q (or Ctrl-C) to stop", file=sys.stderr)
        stats = run_loop(args, loop)
    return report(args, stats)


def run_loop(args: argparse.Namespace, loop: LiveLoop):
    """Run ``loop`` until the input ends, ``--max_frames`` or Ctrl-C; its statistics."""
    try:
        return loop.run(max_frames=args.max_frames)
    except KeyboardInterrupt:
        return loop.stats


def report(args: argparse.Namespace, stats) -> int:
    """Say what the loop did, once the outputs are closed (the recording is in place)."""
    print(f"live: {stats.line()}", file=sys.stderr)
    if args.record:
        print(f"wrote {args.record}", file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    try:
        parser = build_parser()
    except BackendError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line per known problem; tracebacks only with --debug
        print(f"error: {error_line(error, args.debug, (LiveError, *KNOWN_ERRORS))}", file=sys.stderr)
        return 1
