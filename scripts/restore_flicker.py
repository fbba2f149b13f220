#!/usr/bin/env python
"""Flicker of face restoration on a real video, with and without temporal stabilisation.

The face of ``--video`` is cropped as demo.py crops a driving video (one fixed crop, dlib or face_alignment), each
crop is restored frame by frame (:class:`dagan.faces.restore.FaceRestorer`) once per frame on its own and once
stabilised, and the flicker of each result is printed: the mean absolute temporal difference inside the paste-back
mask, relative to the unrestored crops' (1.00 = as steady as the input). "detail kept" is how much of the per-frame
restoration's change the stabilised result keeps (mean |stabilised - input| / mean |per-frame - input|).

    python scripts/restore_flicker.py --video clip.mp4 --restore gfpgan_1.4.onnx
    python scripts/restore_flicker.py --video clip.mp4 --restore sharpen512 --frames 48

``--restore sharpen512`` uses a stand-in exported on the spot (no download): a 512 graph that amplifies the high
frequencies, so that it invents detail from noise as restorers do; a real model's figures come from its own file.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dagan.faces.alignment import Framing, warp_to_crop  # noqa: E402
from dagan.faces.paste import face_mask  # noqa: E402
from dagan.faces.restore import FaceRestorer, RestorationModel, flicker  # noqa: E402


class Sharpen(torch.nn.Module):
    """(1, 3, S, S) in [-1, 1] -> the same with its high frequencies amplified (the stand-in restorer)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
        return (image + 0.25 * torch.tanh(24 * (image - blurred))).clamp(-1, 1)


def standin(folder: str, size: int = 512) -> str:
    path = os.path.join(folder, f"sharpen{size}.onnx")
    torch.onnx.export(Sharpen(), (torch.zeros(1, 3, size, size),), path, input_names=["input"],
                      output_names=["output"], opset_version=17, dynamo=False)
    return path


def face_crops(video_path: str, count: int, size: int, face_backend: str) -> list[np.ndarray]:
    """The first ``count`` frames of the video, cropped at its face (one fixed crop) to size x size."""
    from dagan.faces.detection import get_face_analyzer
    from dagan.faces.plans import plan_video_crops
    from dagan.io import open_video

    video = open_video(video_path)
    frame_size = (video.size[1], video.size[0])
    crops = plan_video_crops(video, video.num_frames, frame_size, get_face_analyzer(face_backend),
                             Framing(rotate=False), mode="fixed", fps=video.fps, name=video_path)
    return [warp_to_crop(frame, crops.transform(index, (size, size)))
            for index, frame in enumerate(itertools.islice(video, count))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="a video with a face (e.g. a talking-head clip)")
    parser.add_argument("--restore", required=True, metavar="MODEL.onnx",
                        help="the restoration model, or sharpen512 for the stand-in")
    parser.add_argument("--frames", type=int, default=48, help="frames measured from the start (default 48)")
    parser.add_argument("--size", type=int, default=256, help="crop side, the model's output size (default 256)")
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    parser.add_argument("--face_backend", choices=("auto", "dlib", "face_alignment"), default="auto")
    parser.add_argument("--save", default=None, metavar="FOLDER", help="also write the middle frame's input, "
                        "per-frame and stabilised crops as PNGs into this new folder")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="dagan-flicker-")
    try:
        path = standin(folder) if args.restore == "sharpen512" else args.restore
        model = RestorationModel(path, args.runtime)
        crops = face_crops(args.video, args.frames, args.size, args.face_backend)
        region = face_mask((args.size, args.size)) > 0.5
        results = {}
        for stabilize in (False, True):
            restorer = FaceRestorer(model, (args.size, args.size), stabilize=stabilize)
            results[stabilize] = [restorer(crop) for crop in crops]
        base = flicker(crops, region)
        change = {key: np.mean([np.abs(out.astype(np.float32) - crop)[region].mean()
                                for out, crop in zip(frames, crops)]) for key, frames in results.items()}
        print(f"{model.describe()}, {len(crops)} frames of {args.video} at {args.size}x{args.size}")
        print(f"flicker (mean |frame t - frame t-1| in the face, grey levels): input {base:.2f}")
        for key, name in ((False, "per frame"), (True, "stabilised")):
            value = flicker(results[key], region)
            print(f"  {name:10s} {value:6.2f}  relative {value / base:.2f}")
        print(f"detail kept by stabilisation: {change[True] / change[False]:.2f}")
        if args.save:
            from dagan.io.images import write_png

            os.makedirs(args.save)
            middle = len(crops) // 2
            for name, image in (("input", crops[middle]), ("per_frame", results[False][middle]),
                                ("stabilised", results[True][middle])):
                write_png(os.path.join(args.save, f"{name}.png"), image)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
