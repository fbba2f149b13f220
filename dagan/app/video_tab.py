"""The web app's video tab: a portrait and a driving video in, the animated portrait (and its visualisation) out.

:class:`Animator` handles one request: it checks the uploads, runs the pipeline with a progress callback and writes
the result (H.264 with the driving audio, through :mod:`dagan.io`) into a directory of its own. Every problem a user
can cause comes back as a :class:`gradio.Error` with a one-line message, never a traceback.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import gradio as gr
import numpy as np
import torch

from dagan.app.common import (KNOWN_ERRORS, AppSettings, PipelineCache, Progress, find_checkpoints, no_progress,
                              open_driving, read_portrait, scrub, track)
from dagan.faces.landmarks import best_aligned_frame
from dagan.inference import DaGANPipeline, KeypointSmoother, frame_at
from dagan.io import open_writer

logger = logging.getLogger(__name__)


# One request.
@dataclass
class AnimationRequest:
    """What the page sends: the uploaded files (server paths) and the settings."""

    source_image: Optional[str]
    driving_video: Optional[str]
    checkpoint: Optional[str]
    device: str = "auto"
    relative: bool = True
    adapt_scale: bool = True
    smooth: bool = False
    smooth_cutoff: float = 1.0
    find_best_frame: bool = False
    visualize: bool = False
    # Faces in photos (dagan.faces.animation): the defaults keep the whole-image behaviour; the page defaults to
    # crop "auto" with paste-back.
    crop: str = "none"
    paste_back: bool = False
    faces: str = "largest"
    motion_scale: float = 1.0
    # Directed motion (dagan.motion, as demo.py's motion flags): scales 0 = the source's, 1 = the driver's.
    animate: str = "all"
    pose_scale: float = 1.0
    expression_scale: float = 1.0
    eyes_scale: float = 1.0
    brows_scale: float = 1.0
    mouth_scale: float = 1.0
    eye_openness: Optional[float] = None  # None: follow the driver
    mouth_openness: Optional[float] = None
    preview_frame: int = 12  # the driving frame a one-frame preview shows

    def control(self):
        """The :class:`dagan.motion.MotionControl` of the motion settings."""
        from dagan.motion import MotionControl

        regions = tuple((name, float(scale)) for name, scale in (("eyes", self.eyes_scale),
                                                                 ("brows", self.brows_scale),
                                                                 ("mouth", self.mouth_scale)) if scale != 1.0)
        return MotionControl(animate=self.animate, pose_scale=float(self.pose_scale),
                             expression_scale=float(self.expression_scale), region_scales=regions,
                             eye_openness=self.eye_openness, mouth_openness=self.mouth_openness)


@dataclass
class AnimationResult:
    video: str
    visualization: Optional[str]
    status: str
    frames: int = 0
    seconds: float = 0.0


@dataclass
class PreviewResult:
    """One frame of the result (H, W, 3) uint8, the driving frame it shows, and a status line."""

    frame: np.ndarray
    index: int
    status: str


class Animator:
    """Turns an :class:`AnimationRequest` into result files; user errors become :class:`gradio.Error`."""

    def __init__(self, settings: AppSettings, cache: Optional[PipelineCache] = None):
        self.settings = settings
        self.cache = cache or PipelineCache(settings, settings.cache_size)
        self.work_dir = Path(settings.work_dir or tempfile.mkdtemp(prefix="dagan-app-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if settings.work_dir is None:
            atexit.register(shutil.rmtree, self.work_dir, ignore_errors=True)
        self.face_analyzer = None
        self.driving_plans: dict = {}  # driving crops by video path, kept across requests (previews are fast)

    def __call__(self, request: AnimationRequest, progress: Optional[Progress] = None) -> AnimationResult:
        if progress is None:  # not `progress or ...`: a gradio.Progress is falsy (it has a __len__)
            progress = no_progress
        return self.guarded(self.run, request, progress)

    def preview(self, request: AnimationRequest) -> PreviewResult:
        """One frame of the result at driving frame ``request.preview_frame`` (the motion sliders' preview): the
        model, the face crops and the source's regions are found as for the whole video, but one frame is
        rendered."""
        return self.guarded(self.run_preview, request, no_progress)

    def guarded(self, function, request: AnimationRequest, progress: Progress):
        names = {path: os.path.basename(path) for path in (request.source_image, request.driving_video) if path}
        try:
            return function(request, progress)
        except gr.Error:
            raise
        except torch.OutOfMemoryError:
            raise gr.Error("Out of memory: try the CPU, a shorter video or a server started with a smaller "
                           "--batch_size.", print_exception=False) from None
        except KNOWN_ERRORS as error:
            raise gr.Error(scrub(str(error), names), print_exception=False) from None
        except Exception as error:  # a bug, not a user error: details in the server log, one line in the page
            logger.exception("request failed")
            raise gr.Error(f"Something went wrong ({type(error).__name__}); the server log has the details.",
                           print_exception=False) from None

    def run(self, request: AnimationRequest, progress: Progress) -> AnimationResult:
        started = time.perf_counter()
        self.check_uploads(request)
        source = read_portrait(request.source_image)
        video = open_driving(request.driving_video)
        checkpoint = self.resolve_checkpoint(request.checkpoint)
        progress(0.0, desc="Loading the model")
        pipeline, cached = self.cache.get(checkpoint, request.device)
        anchor = None
        if request.find_best_frame:
            anchor = self.best_anchor_frame(pipeline, source, video, progress)
        smoother = KeypointSmoother(video.fps, min_cutoff=request.smooth_cutoff) if request.smooth else None
        frames, notes = self.frames(request, pipeline, source, video, anchor, smoother, progress)
        directory = self.request_directory()
        result, panels = directory / "result.mp4", directory / "result_visualization.mp4"
        count = write_results(frames, video, result, panels if request.visualize else None, progress)
        seconds = time.perf_counter() - started
        status = (f"Done: {count} frames at {video.fps:.2f} fps in {seconds:.1f} s on {pipeline.device.type} "
                  f"({'model reused' if cached else 'model loaded'}; audio {'kept' if video.has_audio else 'none'}).")
        status = " ".join([status, *(note[0].upper() + note[1:] + "." for note in notes)])
        return AnimationResult(str(result), str(panels) if request.visualize else None, status, count, seconds)

    def frames(self, request: AnimationRequest, pipeline: DaGANPipeline, source: np.ndarray, driving,
               anchor: Optional[np.ndarray], smoother, progress: Progress = no_progress,
               video=None) -> tuple[Iterator, list[str]]:
        """The result frames of a request, driven by ``driving`` (the video, or some of its frames with ``video``
        the whole one, for a preview), and the notes for the status line."""
        control = request.control()
        video = driving if video is None else video
        if request.crop != "none" or request.motion_scale != 1.0 or self.settings.restore is not None:
            progress(0.0, desc="Finding faces")
            return self.face_frames(request, pipeline, source, driving, anchor, smoother, control, video)
        analyzer = self.motion_analyzer(control, request.visualize)
        from dagan.motion import motion_editor

        editor = motion_editor(pipeline, source, control, analyzer, show_regions=request.visualize)
        frames = pipeline.animate(source, driving, relative=request.relative, adapt_scale=request.adapt_scale,
                                  driving_initial=anchor, smooth=smoother, visualize=request.visualize, edit=editor,
                                  keypoint_colors=editor.colors)
        return frames, list(editor.report)

    def motion_analyzer(self, control, visualize: bool = False):
        """The face analyzer the motion settings need (regions, openness; region colours), or None."""
        if not (control.needs_regions or visualize):
            return None
        from dagan.faces import MissingFaceBackend, get_face_analyzer

        if self.face_analyzer is None:
            try:
                self.face_analyzer = get_face_analyzer("auto")
            except MissingFaceBackend:
                if control.needs_regions:
                    raise
                return None
        return self.face_analyzer

    def run_preview(self, request: AnimationRequest, progress: Progress) -> PreviewResult:
        self.check_uploads(request)
        source = read_portrait(request.source_image)
        video = open_driving(request.driving_video)
        pipeline, _ = self.cache.get(self.resolve_checkpoint(request.checkpoint), request.device)
        last = (video.num_frames or 1) - 1
        index = min(max(int(request.preview_frame), 0), last)
        anchor = frame_at(video, 0)
        shown = frame_at(video, index)
        frames, notes = self.frames(request, pipeline, source, [shown], anchor, None, progress, video=video)
        frame = next(iter(frames)).frame
        status = " ".join([f"Preview of driving frame {index} (of 0-{last}).",
                           *(note[0].upper() + note[1:] + "." for note in notes)])
        return PreviewResult(frame, index, status)

    def face_frames(self, request: AnimationRequest, pipeline: DaGANPipeline, source: np.ndarray, video,
                    anchor: Optional[np.ndarray], smoother, control=None,
                    whole_video=None) -> tuple[Iterator, list[str]]:
        """The frames of the face mode (crop, paste-back into the full picture, face selection, motion strength
        and control; as ``demo.py --crop auto``) and the notes for the status line (faces found, small-face
        warnings, the keypoints' regions). ``whole_video``: the driving video when ``video`` is a preview's frame."""
        from dagan.faces import NoFaceFound, get_face_analyzer
        from dagan.faces.animation import PHOTO_DETECT_MAX_SIDE, FaceOptions, FaceSession, MotionOptions, fit_picture
        from dagan.faces.plans import parse_face_selection
        from dagan.io import to_uint8

        options = FaceOptions(crop=request.crop, paste_back=request.paste_back and request.crop == "auto",
                              faces=parse_face_selection(request.faces),
                              motion=MotionOptions(request.relative, request.adapt_scale, request.motion_scale),
                              restore=self.settings.restore)
        if (request.crop == "auto" or (control is not None and control.needs_regions)) and self.face_analyzer is None:
            self.face_analyzer = get_face_analyzer("auto", detect_max_side=PHOTO_DETECT_MAX_SIDE)
        session = FaceSession(pipeline, options, analyzer=self.face_analyzer,
                              control=control if control is not None else request.control())
        session.driving_plans = self.driving_plans  # planned once per driving video, previews included
        picture = fit_picture(to_uint8(source), options.max_size)
        name = os.path.basename(request.source_image)
        try:
            if whole_video is not None and whole_video is not video:  # a preview: crops of the whole video
                faces = session.picture_faces(picture, name)
                crops = session.driving_crops(whole_video)
                frames = session.animator(smoother, request.visualize).animate_picture(
                    picture, faces, video, crops, anchor, request.visualize)
            else:
                frames = session.animate_picture(picture, video, name, smoother, anchor, visualize=request.visualize)
        except NoFaceFound as error:
            raise gr.Error(scrub(str(error), {request.source_image: name, str(video.path): "the driving video"})
                           .replace("--crop none", "Face crop 'none'").replace("--driving_crop none",
                                                                               "Face crop 'none'"),
                           print_exception=False) from None
        if whole_video is not None and whole_video is not video:
            frames = iter(list(frames))  # the preview's one frame: its messages are written now
        return frames, session.messages

    def check_uploads(self, request: AnimationRequest) -> None:
        if not request.source_image:
            raise gr.Error("Upload a source portrait (an image), or pick the bundled sample.", print_exception=False)
        if not request.driving_video:
            raise gr.Error("Upload a driving video, or pick the bundled sample.", print_exception=False)
        limit = self.settings.max_upload_mb * 1024 * 1024
        for path, what in ((request.source_image, "portrait"), (request.driving_video, "driving video")):
            size = os.path.getsize(path) if os.path.isfile(path) else 0
            if size > limit:
                raise gr.Error(f"The {what} '{os.path.basename(path)}' is {size / 2**20:.1f} MB; the limit is "
                               f"{self.settings.max_upload_mb:g} MB.", print_exception=False)

    def resolve_checkpoint(self, checkpoint: Optional[str]) -> str:
        """The server path of a checkpoint from the page's list; anything else gets one answer, whether or not such
        a file exists (the app must not load, nor reveal, files outside its checkpoint folders)."""
        if not checkpoint:
            raise gr.Error("No checkpoint selected: put one in checkpoints/ or start the app with --checkpoint.",
                           print_exception=False)
        root = Path(self.settings.search_root)
        listed = {os.path.realpath(root / name): str(root / name)
                  for name in find_checkpoints(root, self.settings.checkpoint)}  # absolute names stay absolute
        chosen = os.path.realpath(root / checkpoint)
        if chosen in listed:
            return listed[chosen]
        raise gr.Error(f"Checkpoint '{checkpoint}' is not one of this server's checkpoints; pick one from the list.",
                       print_exception=False)

    def best_anchor_frame(self, pipeline: DaGANPipeline, source: np.ndarray, video, progress: Progress) -> np.ndarray:
        """The driving frame whose face is best aligned with the source (``demo.py --find_best_frame``)."""
        from dagan.faces import get_face_analyzer

        if self.face_analyzer is None:
            self.face_analyzer = get_face_analyzer("auto")
        frames = track(iter(video), video.num_frames, progress, "Finding the best-aligned driving frame")
        return frame_at(video, best_aligned_frame(source, frames, self.face_analyzer))

    def request_directory(self) -> Path:
        """A fresh directory for this request's files; those of requests older than ``keep_results_s`` go
        (gradio has copied results into its own cache by then)."""
        cutoff = time.time() - self.settings.keep_results_s
        for old in self.work_dir.glob("request-*"):
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="request-", dir=self.work_dir))


def write_results(frames: Iterator, video, result: Path, panels: Optional[Path], progress: Progress) -> int:
    """Write the animated frames (and the visualisation panels) as H.264 with the driving video's audio."""
    audio = str(video.path) if video.has_audio else None
    inputs = [str(video.path)]
    result_writer = open_writer(result, video.fps, audio_from=audio, protected_paths=inputs)
    panel_writer = open_writer(panels, video.fps, audio_from=audio, protected_paths=inputs) if panels else None
    count = 0
    with result_writer, (panel_writer or contextlib.nullcontext()):
        progress((0, video.num_frames), desc="Animating", unit="frames")
        for animated in track(frames, video.num_frames, progress, "Animating"):
            result_writer.write(animated.frame)
            if panel_writer is not None:
                panel_writer.write(animated.visualization)
            count += 1
    return count
