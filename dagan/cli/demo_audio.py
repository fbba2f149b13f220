"""``demo.py --driving_audio``: the speech-driven mode's flags and run (the speech-to-motion path is
:mod:`dagan.audio.animate`). Photos are taken as they come, as in video mode: the face options of
:mod:`dagan.cli.demo_faces` (``--crop``, ``--paste_back``, ``--faces``, ``--max_size``, ``--face_backend``) apply."""
from __future__ import annotations

import argparse
import itertools
import os
import sys

from tqdm import tqdm

from dagan.audio.animate import (POSE_MODES, REPLAY_HINT, animate_from_audio, animate_picture_from_audio,
                                 check_compatible, check_face)
from dagan.audio.decode import open_audio
from dagan.audio.features import num_video_frames
from dagan.audio.model import AudioDrivenModel
from dagan.cli.pipeline import face_options, load_pipeline, motion_analyzer, motion_control, read_picture
from dagan.faces.animation import FaceSession
from dagan.io import open_video, open_writer, read_image


def add_audio_arguments(parser: argparse.ArgumentParser) -> None:
    """demo.py's audio-driven flags."""
    group = parser.add_argument_group("audio-driven animation (instead of --driving_video)")
    group.add_argument("--driving_audio", default=None, help="speech (wav/mp3/m4a/flac or a video's audio track)")
    group.add_argument("--audio_checkpoint", default=None, help="audio model (train_params.stage=audio or "
                       "scripts/personalize.py)")
    group.add_argument("--reference_video", default=None, help="a clip of the target person: anchors the motion and "
                       "gives the pose style (default: the source image and the model's stored style)")
    group.add_argument("--pose", default="learned", choices=POSE_MODES, help="head pose: generated (learned), the "
                       "reference clip's own (replay), or none (still)")
    group.add_argument("--fps", type=float, default=25.0, help="output frame rate (any, e.g. 23.976, 25, 30)")
    group.add_argument("--seed", type=int, default=0, help="seed of the generated head motion")


# Flags of the other modes: given with --driving_audio, the inputs are refused and the rest named as ignored.
OTHER_INPUTS = (("--driving_video", "driving_video"), ("--driving_image", "driving_image"),
                ("--driving_motion", "driving_motion"), ("--source_video", "source_video"), ("--pairs", "pairs"))
VIDEO_ONLY_FLAGS = (("--relative", "relative"), ("--adapt_scale", "adapt_scale"),
                    ("--find_best_frame", "find_best_frame"), ("--best_frame", "best_frame"), ("--smooth", "smooth"),
                    ("--visualize", "visualize"), ("--no_audio", "no_audio"), ("--audio", "audio"),
                    ("--driving_crop", "driving_crop"), ("--detect_every", "detect_every"),
                    ("--motion_scale", "motion_scale"))


def check_speech_flags(args: argparse.Namespace, defaults: dict) -> None:
    """ValueError for a second driving input or source; a note naming the given flags speech mode ignores.
    defaults: the parser's default of each destination."""
    clashes = [flag for flag, name in OTHER_INPUTS if getattr(args, name) is not None]
    if clashes:
        raise ValueError(f"--driving_audio drives one --source_image; drop {' and '.join(clashes)} (or drop "
                         "--driving_audio to use them)")
    ignored = [flag for flag, name in VIDEO_ONLY_FLAGS if getattr(args, name) != defaults.get(name)]
    if ignored:
        print(f"note: {', '.join(ignored)} only apply with --driving_video and are ignored with --driving_audio "
              "(speech always moves the face relative to its own rest pose)", file=sys.stderr)


def run_audio(args: argparse.Namespace) -> int:
    """``demo.py --driving_audio``: write the talking video with the speech muxed in. The photo's faces are found,
    cropped, animated and pasted back as in video mode (``--crop``, ``--paste_back``, ``--faces``, ``--max_size``)."""
    if args.audio_checkpoint is None:
        raise ValueError("--driving_audio needs --audio_checkpoint (an audio model: scripts/personalize.py or "
                         "train_params.stage=audio)")
    if args.source_image is None:
        raise ValueError("--driving_audio needs --source_image (a photo or portrait)")
    if not args.fps > 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    control = motion_control(args)
    audio = open_audio(args.driving_audio)  # checked (finite, decodable) without keeping it: streamed below
    audio_model = AudioDrivenModel.load(args.audio_checkpoint)
    if args.pose == "replay" and args.reference_video is None and audio_model.reference_pose is None:
        raise ValueError(REPLAY_HINT)
    options = face_options(args)
    picture = read_picture(args.source_image, args.max_size) if options.crop == "auto" else None
    pipeline = load_pipeline(args)
    check_compatible(audio_model, pipeline)
    reference = None
    if args.reference_video is not None:
        reference = open_video(args.reference_video)
        check_face(reference)
    inputs = [args.source_image, args.driving_audio, args.checkpoint, args.audio_checkpoint, args.reference_video]
    messages: list[str] = []
    analyzer = motion_analyzer(args, control)
    if picture is None:  # --crop none: the whole image is the model's input, as in video mode
        frames = animate_from_audio(pipeline, audio_model, read_image(args.source_image), audio, args.fps, reference,
                                    args.pose, args.seed, args.save_motion, control, analyzer, messages)
    else:
        session = FaceSession(pipeline, options, face_backend=args.face_backend)
        frames = animate_picture_from_audio(session, audio_model, picture, audio, args.fps, reference, args.pose,
                                            args.seed, args.save_motion, os.path.basename(args.source_image),
                                            control, analyzer, messages)
        messages[:0] = session.messages
    first = next(frames, None)  # the motion is edited (regions found, targets solved) before the writer opens
    for message in messages:
        print(message, file=sys.stderr)
    frames = itertools.chain([] if first is None else [first], frames)
    with open_writer(args.result_video, args.fps, audio_from=args.driving_audio, protected_paths=inputs) as writer:
        for frame in tqdm(frames, total=num_video_frames(audio.duration, args.fps), unit="frame", desc="animating",
                          dynamic_ncols=True):
            writer.write(frame)
    print(f"wrote {args.result_video}", file=sys.stderr)
    return 0
