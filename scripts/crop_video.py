"""Crop the faces of a video (or of one image) for DaGAN: the reference crop-video.py, writing the clips.

See ``dagan/faces/tubes.py`` for the face-tube algorithm. Run ``python scripts/crop_video.py --help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dagan.faces import tubes as crop  # noqa: E402
from dagan.faces import MissingFaceBackend, NoFaceFound  # noqa: E402
from dagan.io import read_image_uint8, write_png  # noqa: E402
from dagan.io.files import guard_output  # noqa: E402

EXAMPLE = """\
examples:
  python scripts/crop_video.py --inp interview.mp4 --out crops/ --min_frames 50
      writes crops/interview_0.mp4, crops/interview_1.mp4, ... (one 256x256 clip per face tube, with audio)
  python scripts/crop_video.py --inp interview.mp4 --out crops/ --print_commands
      only prints the equivalent ffmpeg commands, like the reference crop-video.py (writes nothing)
  python scripts/crop_video.py --inp photo.jpg --out crops/
      writes crops/photo.png, a 256x256 crop around the largest face (a DaGAN source image); with the
      default --increase 0.1 the face box fills ~80% of the width, --increase 0.4 gives ~55%, closer to
      the framing of VoxCeleb clips
  python scripts/crop_video.py --inp photo.jpg --out crops/ --align
      the same with the landmark-based VoxCeleb framing that demo.py --crop auto uses (dagan.faces.alignment):
      upright along the eye line, face ~45% of the width
"""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Find face tubes in a video and write one cropped, resized clip per tube (with the "
        "audio of its time range); or crop a single image around its largest face.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inp", required=True, help="input video (or frame folder), or an image (png/jpg/...)")
    parser.add_argument("--out", required=True, help="output folder: <stem>_<k>.mp4 per clip, <stem>.png for an image")
    crop.add_crop_arguments(parser)
    parser.add_argument("--print_commands", action="store_true",
                        help="print the equivalent ffmpeg commands instead of writing the clips (dry run)")
    parser.add_argument("--no_audio", action="store_true", help="write the clips without audio")
    parser.add_argument("--align", action="store_true", help="image input: frame the largest face from its 68 "
                        "landmarks as demo.py --crop auto does (see dagan/faces/alignment.py) instead of its box")
    parser.add_argument("--cpu", action="store_true", help="run face_alignment on the CPU (dlib always does)")
    return parser.parse_args(argv)


def aligned_crop(image, analyzer, image_shape: tuple[int, int], name: str):
    """The largest face of ``image`` cropped with demo.py's landmark framing, resized to ``image_shape``."""
    from dagan.faces.alignment import warp_to_crop
    from dagan.faces.plans import plan_picture_faces

    faces, _ = plan_picture_faces(image, analyzer, image_shape, name=name, no_face_hint="or drop --align")
    return warp_to_crop(image, faces[0].transform)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        settings = crop.crop_settings(args)
        output = Path(args.out) / f"{Path(args.inp).stem}.png"
        is_image = crop.is_image_path(args.inp)
        if is_image:  # before any work: the crop must never replace the photo it is made from, nor a user's file
            guard_output(output, [args.inp], "--out", "crop")
        analyzer = crop.build_analyzer(args.backend, cpu=args.cpu, detect_max_side=settings.detect_max_side)
        if is_image:
            output.parent.mkdir(parents=True, exist_ok=True)
            image = read_image_uint8(args.inp)
            if args.align:
                write_png(output, aligned_crop(image, analyzer, args.image_shape, args.inp))
            else:
                write_png(output, crop.crop_image(image, analyzer, args.image_shape, args.increase, source=args.inp))
            print(f"wrote {output}")
            return 0
        plans, outputs = crop.crop_video(args.inp, args.out, analyzer, settings, keep_audio=not args.no_audio,
                                         write=not args.print_commands)
    except NoFaceFound as error:  # also TubesTooShort (faces, but no tube longer than --min_frames)
        print(error, file=sys.stderr)
        return 1
    except (MissingFaceBackend, ValueError) as error:  # MediaError and bad crop settings are ValueErrors
        print(error, file=sys.stderr)
        return 2
    for plan, output in zip(plans, outputs):
        if args.print_commands:
            print(plan.ffmpeg_command(args.inp, output))
        else:
            print(f"wrote {output}: frames {plan.start_frame}-{plan.end_frame - 1} ({plan.duration_seconds:.2f} s), "
                  f"crop box {plan.box}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
