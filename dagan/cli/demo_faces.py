"""``demo.py`` for photos and videos as they come: automatic face crop, paste-back, several faces, video sources,
motion strength and batches. :func:`add_face_arguments` adds the options; :func:`run_faces` runs them (called by
:func:`dagan.cli.demo.run` unless ``--crop none`` asks for the plain whole-image demo).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from tqdm import tqdm

from dagan.cli.pipeline import (add_restore_arguments, driver_kind, driving_path, face_options, motion_control,
                                read_picture, visualization_path)
from dagan.faces.alignment import Framing
from dagan.faces.animation import FaceOptions, FaceSession
from dagan.faces.plans import parse_face_selection
from dagan.inference import AnimatedFrame
from dagan.io import MediaError, is_image_file, open_image_as_video, open_video, open_writer
from dagan.training.distributed import launch_share, use_local_gpu

DEFAULT_MAX_SIZE = FaceOptions().max_size


def add_face_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this module, as one argument group."""
    framing = Framing()
    group = parser.add_argument_group(
        "faces in photos and videos",
        "the source face is found and cropped like VoxCeleb, animated, and pasted back into the full picture")
    group.add_argument("--crop", choices=("auto", "none"), default="auto",
                       help="auto (default): find the face(s) and crop them for the model; none: resize the whole "
                       "image to the model's square input (the reference demo's behaviour)")
    group.add_argument("--paste_back", action=argparse.BooleanOptionalAction, default=None,
                       help="paste the animated face back into the full source picture (default: on with --crop "
                       "auto); --no-paste_back writes the animated crop only")
    group.add_argument("--faces", type=parse_face_selection, default="largest", metavar="largest|all|N",
                       help="which faces to animate: the largest (default), all, or the N largest")
    group.add_argument("--crop_scale", type=float, default=framing.crop_scale,
                       help=f"crop side / face size (default {framing.crop_scale}: VoxCeleb's framing; larger shows "
                       "more background)")
    group.add_argument("--crop_offset_y", type=float, default=framing.crop_offset_y,
                       help=f"crop centre shift along the face's vertical axis, fraction of the crop side (default "
                       f"{framing.crop_offset_y}; negative shows more hair)")
    group.add_argument("--no_crop_rotation", action="store_true", help="keep crops upright instead of following "
                       "the eye line")
    group.add_argument("--driving_crop", choices=("fixed", "track", "none"), default="fixed",
                       help="fixed (default): one crop for the whole driving clip from faces found on a few frames; "
                       "track: follow the head (for clips where it travels); none: the driving frames as they are")
    group.add_argument("--detect_every", type=int, default=3, metavar="N",
                       help="with --driving_crop track and --source_video: find the face every N frames (1 = every "
                       "frame); in between the crop is interpolated and smoothed")
    group.add_argument("--max_size", type=int, default=DEFAULT_MAX_SIZE, metavar="PIXELS",
                       help=f"longer side of the output with --paste_back (default {DEFAULT_MAX_SIZE}; larger "
                       "pictures are shrunk first); sides are made even for H.264")
    group.add_argument("--motion_scale", type=float, default=1.0, help="strength of the relative motion (0 = "
                       "still, 1 = as driven, default 1; needs --relative)")
    group.add_argument("--source_video", default=None, help="animate a video instead of --source_image: each frame "
                       "is cropped (tracked) and follows the driving motion relative to its first frame; the "
                       "result has min(source, driving) frames at the source's fps")
    group.add_argument("--audio", choices=("driving", "source", "none"), default="driving",
                       help="audio of the result: the driving video's (default), the source video's, or none")
    group.add_argument("--pairs", default=None, metavar="CSV",
                       help="batch: a CSV file of source,driving rows (optional header; relative paths are relative "
                       "to the CSV); --result_video is then a folder")
    group.add_argument("--face_backend", choices=("auto", "dlib", "face_alignment"), default="auto",
                       help="face detector and landmarks (auto: dlib when installed, else face_alignment)")
    add_restore_arguments(parser)


def uses_face_mode(args: argparse.Namespace) -> bool:
    """Whether :func:`run_faces` handles this command line (else the plain whole-image demo does)."""
    batch = args.pairs is not None or (args.source_image is not None and (
        os.path.isdir(args.source_image) or len(source_paths(args.source_image)) > 1))
    return (args.crop == "auto" or args.motion_scale != 1.0 or args.source_video is not None or batch
            or args.restore is not None)


# Inputs.

def source_paths(pattern: Optional[str]) -> list[str]:
    """``--source_image``: one file, a folder (its images, sorted) or a glob pattern (sorted matches)."""
    if not pattern:
        return []
    if os.path.isdir(pattern):
        return sorted(str(path) for path in Path(pattern).iterdir() if path.is_file() and is_image_file(path))
    if glob.has_magic(pattern):
        return sorted(glob.glob(pattern))
    return [pattern]


def read_pairs(path: str) -> list[tuple[str, str]]:
    """``(source, driving)`` rows of a pairs CSV (a first row ``source,driving`` is a header)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    except OSError as error:
        raise MediaError(f"cannot read the pairs file '{path}' ({error.strerror})") from None
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["source", "driving"]:
        rows = rows[1:]
    pairs = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise MediaError(f"{path}: row {number} needs two columns, source,driving; got {row}")
        pairs.append(tuple(os.path.join(folder, cell.strip()) for cell in row[:2]))
    if not pairs:
        raise MediaError(f"the pairs file '{path}' has no source,driving rows")
    return pairs


@dataclass(frozen=True)
class Job:
    """One animation: a source (image or video), a driving video, and where the result goes."""

    source: str
    driving: str
    result: str
    source_is_video: bool = False


def plan_jobs(args: argparse.Namespace) -> tuple[list[Job], bool]:
    """The jobs of this command line and whether it is a batch (results named after the inputs, in a folder)."""
    driving = driving_path(args)
    if args.pairs is not None:
        pairs = read_pairs(args.pairs)
    elif args.source_video is not None:
        return [Job(args.source_video, driving, args.result_video, source_is_video=True)], False
    else:
        sources = source_paths(args.source_image)
        if not sources:
            raise MediaError(f"--source_image {args.source_image}: no image matches")
        if len(sources) == 1 and sources[0] == args.source_image and not os.path.isdir(args.source_image):
            return [Job(args.source_image, driving, args.result_video)], False
        pairs = [(source, driving) for source in sources]
    folder = args.result_video
    if folder.lower().endswith(".mp4") and not os.path.isdir(folder):
        raise MediaError("a batch writes one video per input: give --result_video a folder (e.g. results/)")
    jobs = []
    for source, driving in pairs:
        is_video = not is_image_file(Path(source))
        still = driver_kind(driving) == "image" and not is_video  # a photo driven by a photo: a still image
        name = f"{Path(source).stem}_by_{Path(driving).stem}.{'png' if still else 'mp4'}"
        jobs.append(Job(source, driving, os.path.join(folder, name), source_is_video=is_video))
    refuse_shared_results(jobs)
    return jobs, True


def refuse_shared_results(jobs: list[Job]) -> None:
    """MediaError, before any work, when two jobs of a batch would write the same result (same stems: a/face.png
    and b/face.png, or face.png and face.jpg): the second would be skipped as "already there"."""
    first_by_result: dict[str, Job] = {}
    for job in jobs:
        earlier = first_by_result.setdefault(os.path.normcase(os.path.abspath(job.result)), job)
        if earlier is not job:
            raise MediaError(f"'{earlier.source}' + '{earlier.driving}' and '{job.source}' + '{job.driving}' would "
                             f"both write '{job.result}' (same file names); rename one of them")


# Running.

class FaceDemo:
    """The face-mode demo of one command line: one model, one :class:`~dagan.faces.animation.FaceSession` (face
    analyzer, driving crops) for every job."""

    def __init__(self, args: argparse.Namespace, pipeline):
        self.args, self.pipeline = args, pipeline
        self.control = motion_control(args)
        self.session = FaceSession(pipeline, face_options(args), face_backend=args.face_backend, control=self.control)

    def smoother(self, fps: float):
        from dagan.inference import KeypointSmoother

        return KeypointSmoother(fps, min_cutoff=self.args.smooth) if self.args.smooth is not None else None

    def frames(self, job: Job) -> tuple[Iterator[AnimatedFrame], float, Optional[int]]:
        """The result frames of a job (faces and crops planned now), its fps and its frame count."""
        from dagan.motion import MotionRecorder, check_keypoint_count, load_motion

        kind = driver_kind(job.driving)
        if kind == "motion":
            driving = load_motion(job.driving)
            check_keypoint_count(driving, self.pipeline.config.model_params.common_params.num_kp, job.driving)
            fps, count = driving.fps, driving.num_frames
        else:
            driving = open_image_as_video(job.driving) if kind == "image" else open_video(job.driving)
            fps, count = driving.fps, driving.num_frames
        still = kind == "image"
        self.session.recorder = (MotionRecorder(fps, kind, self.control.pose_model)
                                 if self.args.save_motion is not None else None)
        smoother = self.smoother(fps) if kind != "motion" else None
        if job.source_is_video:
            source = open_video(job.source)
            if max(source.size) > self.args.max_size:
                print(f"note: {os.path.basename(job.source)} is {source.size[0]}x{source.size[1]}; its frames are "
                      f"shrunk so that the longer side is {self.args.max_size} (--max_size)", file=sys.stderr)
            frames = self.session.animate_video(source, driving, self.smoother(source.fps) if kind == "video" else None,
                                                still_driver=still)
            known = [n for n in (source.num_frames, None if still else count) if n]
            return frames, source.fps, min(known) if known else None
        picture = read_picture(job.source, self.args.max_size)
        anchor = self.anchor_frame(picture, driving) if kind == "video" else None
        frames = self.session.animate_picture(picture, driving, job.source, smoother, anchor,
                                              visualize=self.args.visualize and kind != "motion", still_driver=still)
        return frames, fps, count

    def anchor_frame(self, picture: np.ndarray, driving) -> Optional[np.ndarray]:
        """``--best_frame`` / ``--find_best_frame`` (landmarks of the picture's largest face)."""
        from dagan.faces.landmarks import best_aligned_frame
        from dagan.inference import frame_at

        index = self.args.best_frame
        if self.args.find_best_frame and index is None:
            print("finding the driving frame best aligned with the source...", file=sys.stderr)
            index = best_aligned_frame(picture, driving, self.session.analyzer)
            print(f"best frame: {index}", file=sys.stderr)
        return None if index is None else frame_at(driving, index)

    def audio_path(self, job: Job) -> Optional[str]:
        choice = "none" if self.args.no_audio else self.args.audio
        if choice == "source" and not job.source_is_video:
            raise ValueError("--audio source needs --source_video (a picture has no audio)")
        if choice == "driving" and driver_kind(job.driving) != "video":
            return None  # an image or a motion file has no sound
        path = {"driving": job.driving, "source": job.source, "none": None}[choice]
        return path if path is not None and open_video(path).has_audio else None

    def run(self, job: Job) -> int:
        """Animate one job into its result file; returns the number of frames written."""
        audio = self.audio_path(job)
        frames, fps, total = self.frames(job)
        first = next(frames, None)  # faces are found (and problems raised) before the writer opens
        for message in self.session.messages:
            print(message, file=sys.stderr)
        self.session.messages.clear()
        if first is None:
            raise MediaError(f"nothing to animate: {job.driving} or {job.source} has no frames")

        count, inputs = 0, [job.source, job.driving]
        with contextlib.ExitStack() as stack:
            writer = stack.enter_context(open_writer(job.result, fps, audio_from=audio, protected_paths=inputs))
            panels = None
            if first.visualization is not None:
                panels = stack.enter_context(open_writer(visualization_path(job.result), fps, audio_from=audio,
                                                         protected_paths=inputs))
            for animated in tqdm(itertools.chain([first], frames), total=total, unit="frame", desc="animating",
                                 dynamic_ncols=True, leave=False):
                writer.write(animated.frame)
                if panels is not None:
                    panels.write(animated.visualization)
                count += 1
        if self.session.recorder is not None:
            self.session.recorder.save(self.args.save_motion)
            print(f"wrote the motion file {self.args.save_motion}", file=sys.stderr)
        return count


def run_faces(args: argparse.Namespace, load_pipeline: Callable[[argparse.Namespace], object],
              check_outputs: Callable[[argparse.Namespace, str, list], None]) -> int:
    """Run the face-mode demo (see the module docstring). Returns the exit status. Under ``torchrun`` a batch is
    shared: rank r of w animates the jobs i with i % w == r (each rank loads the model once, on its own GPU)."""
    jobs, batch = plan_jobs(args)
    rank, world = launch_share()
    if not batch and rank != 0:
        print(f"rank {rank} of {world}: one job, animated by rank 0 (torchrun shares batches only)", file=sys.stderr)
        return 0
    numbered = [(number, job) for number, job in enumerate(jobs, start=1) if (number - 1) % world == rank]
    if args.visualize and any(job.source_is_video for job in jobs):
        raise ValueError("--visualize works with source images only (not with --source_video)")
    if args.save_motion is not None and batch:
        raise ValueError("--save_motion writes one motion file: give one source and one driver, not a batch")
    if args.driving_motion is not None and (args.smooth is not None or args.find_best_frame
                                            or args.best_frame is not None):
        raise ValueError("a motion file holds its keypoints already smoothed and anchored: drop --smooth, "
                         "--find_best_frame and --best_frame with --driving_motion")
    for _, job in numbered:  # before the model loads; a batch skips the results already there
        if not (batch and os.path.exists(job.result)):
            check_outputs(args, job.result, [job.source, job.driving])
    restore = face_options(args).restore  # bad face or restoration options fail here, before the model loads
    if restore is not None:
        restore.check()
    use_local_gpu()
    demo = FaceDemo(args, load_pipeline(args))
    if not batch:
        count = demo.run(jobs[0])
        panels = f" and {visualization_path(jobs[0].result)}" if args.visualize else ""
        print(f"wrote {jobs[0].result}{panels} ({count} frames)", file=sys.stderr)
        return 0
    return run_batch(demo, numbered, len(jobs), f"rank {rank} of {world}: " if world > 1 else "")


def run_batch(demo: FaceDemo, numbered: list[tuple[int, Job]], total: int, prefix: str = "") -> int:
    """Each (number, job) in turn; results that exist are skipped (a rerun finishes the rest), a failing job is
    reported and skipped. Prints a summary (after ``prefix``); returns 1 when any job failed."""
    if numbered:
        os.makedirs(os.path.dirname(numbered[0][1].result) or ".", exist_ok=True)
    done, skipped, failed = 0, 0, []
    for number, job in numbered:
        label = f"{prefix}[{number}/{total}] {os.path.basename(job.source)} + {os.path.basename(job.driving)}"
        if os.path.exists(job.result):
            print(f"{label}: {job.result} exists, skipped", file=sys.stderr)
            skipped += 1
            continue
        try:
            count = demo.run(job)
        except (ValueError, ImportError, RuntimeError, OSError) as error:  # one item's problem: report and go on
            print(f"{label}: failed: {error}", file=sys.stderr)
            failed.append(job.source)
            continue
        print(f"{label}: wrote {job.result} ({count} frames)", file=sys.stderr)
        done += 1
    print(f"{prefix}batch: {done} written, {skipped} skipped (already there), {len(failed)} failed"
          + (f" ({', '.join(os.path.basename(path) for path in failed)})" if failed else ""), file=sys.stderr)
    return 1 if failed else 0
