"""``demo.py --driving_audio``: the speech-driven mode's flags and run (the speech-to-motion path is
:mod:`dagan.audio.animate`)."""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from dagan.audio.animate import POSE_MODES, REPLAY_HINT, animate_from_audio, check_compatible, check_face
from dagan.audio.decode import open_audio
from dagan.audio.features import num_video_frames
from dagan.audio.model import AudioDrivenModel
from dagan.cli.pipeline import load_pipeline
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
    group.add_argument("--save_motion", default=None, help="also write the generated motion (.npz: pose, local, "
                       "keypoints, jacobians)")


def run_audio(args: argparse.Namespace) -> int:
    """``demo.py --driving_audio``: write the talking video with the speech muxed in."""
    if args.audio_checkpoint is None:
        raise ValueError("--driving_audio needs --audio_checkpoint (an audio model: scripts/personalize.py or "
                         "train_params.stage=audio)")
    if not args.fps > 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    audio = open_audio(args.driving_audio)  # checked (finite, decodable) without keeping it: streamed below
    audio_model = AudioDrivenModel.load(args.audio_checkpoint)
    if args.pose == "replay" and args.reference_video is None and audio_model.reference_pose is None:
        raise ValueError(REPLAY_HINT)
    source = read_image(args.source_image)
    pipeline = load_pipeline(args)
    check_compatible(audio_model, pipeline)
    reference = None
    if args.reference_video is not None:
        reference = open_video(args.reference_video)
        check_face(reference)
    inputs = [args.source_image, args.driving_audio, args.checkpoint, args.audio_checkpoint, args.reference_video]
    frames = animate_from_audio(pipeline, audio_model, source, audio, args.fps, reference, args.pose, args.seed,
                                args.save_motion)
    with open_writer(args.result_video, args.fps, audio_from=args.driving_audio, protected_paths=inputs) as writer:
        for frame in tqdm(frames, total=num_video_frames(audio.duration, args.fps), unit="frame", desc="animating",
                          dynamic_ncols=True):
            writer.write(frame)
    print(f"wrote {args.result_video}", file=sys.stderr)
    return 0
