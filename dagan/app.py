"""The web app: upload a portrait and a driving video, get the animated portrait back (Gradio).

    python scripts/app.py --checkpoint checkpoints/vox.pt          # then open http://127.0.0.1:7860

Three parts, each usable on its own:

* :class:`PipelineCache` loads a :class:`~dagan.inference.DaGANPipeline` once per (checkpoint, device) and keeps
  the last few, so a second request with the same model starts at once;
* :class:`Animator` handles one request: it checks the uploads, runs the pipeline with a progress callback and
  writes the result (H.264 with the driving audio, through :mod:`dagan.io`) into a directory of its own. Every
  problem a user can cause comes back as a :class:`gradio.Error` with a one-line message, never a traceback;
* :func:`build_app` lays out the page and wires the button to the animator. Requests are queued one at a time
  (``default_concurrency_limit=1``): the model and the CPU/GPU are shared, so runs never interleave.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it must not phone home

import atexit
import contextlib
import glob
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import gradio as gr
import numpy as np
import torch

from dagan.checkpoint import CheckpointError, is_our_checkpoint, load_checkpoint_or_official
from dagan.config import ConfigError
from dagan.inference import (DaGANPipeline, InferenceError, KeypointSmoother, best_aligned_frame, frame_at,
                             resolve_device)
from dagan.io import MediaError, open_video, open_writer, read_image
from dagan.io.images import PixelLimitError
from dagan.runtime.backends import choose_backend, default_backend
from dagan.runtime.cache import exported_pipeline_or_none

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "data" / "samples"
CHECKPOINT_PATTERNS = ("checkpoints/*", "runs/*/checkpoints/*")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")
KNOWN_ERRORS = (MediaError, CheckpointError, ConfigError, InferenceError, ImportError, ValueError)
Progress = Callable[..., object]  # gradio.Progress: progress(fraction or (done, total), desc=..., unit=...)


# Settings and checkpoint discovery.
@dataclass
class AppSettings:
    """What the command line sets. ``checkpoint``/``depth_checkpoint``/``config`` as for ``demo.py``: the latter
    two apply to official release files only (this project's checkpoints hold everything)."""

    checkpoint: Optional[str] = None
    depth_checkpoint: Optional[str] = None
    config: Optional[str] = None
    device: str = "auto"
    max_upload_mb: float = 200.0
    batch_size: Optional[int] = None  # None: the fastest measured for the device
    search_root: str = "."
    cache_size: int = 2
    keep_results_s: float = 3600.0
    work_dir: Optional[str] = None  # per-request directories go here (default: a fresh temp dir)


def find_checkpoints(search_root: str | os.PathLike, extra: Optional[str] = None) -> list[str]:
    """The checkpoint files in ``checkpoints/`` and ``runs/*/checkpoints/`` under ``search_root`` (paths relative to
    it), newest first, after ``extra`` (the --checkpoint given; relative when it lies under the root)."""
    root = Path(os.path.abspath(search_root))
    paths = [Path(path) for pattern in CHECKPOINT_PATTERNS for path in glob.glob(str(root / pattern))]
    paths = sorted((path for path in paths if path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES)),
                   key=lambda path: path.stat().st_mtime, reverse=True)
    if extra:
        paths.insert(0, Path(os.path.abspath(extra)))
    names = [str(path.relative_to(root)) if path.is_relative_to(root) else str(path) for path in paths]
    return list(dict.fromkeys(names))  # without duplicates, in order


def available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


# Model cache.
class PipelineCache:
    """The last ``capacity`` pipelines, keyed by checkpoint file (path, size, modification time) and device, so a
    retrained checkpoint at the same path is reloaded. ``loads`` counts actual loads (for tests and the status)."""

    def __init__(self, settings: AppSettings, capacity: int = 2):
        self.settings, self.capacity = settings, max(1, capacity)
        self.pipelines: "OrderedDict[tuple, DaGANPipeline]" = OrderedDict()
        self.lock = threading.Lock()
        self.loads = 0

    def get(self, checkpoint: str, device: str) -> tuple[DaGANPipeline, bool]:
        """The pipeline for ``checkpoint`` on ``device`` and whether it came from the cache."""
        resolved = resolve_device(device)
        stat = os.stat(checkpoint)
        key = (os.path.realpath(checkpoint), stat.st_size, stat.st_mtime_ns, str(resolved))
        with self.lock:
            if key in self.pipelines:
                self.pipelines.move_to_end(key)
                return self.pipelines[key], True
            pipeline = self.load(checkpoint, resolved)
            self.pipelines[key] = pipeline
            while len(self.pipelines) > self.capacity:
                self.pipelines.popitem(last=False)
            self.loads += 1
            return pipeline, False

    def load(self, checkpoint: str, device: torch.device) -> DaGANPipeline:
        """The checkpoint's pipeline on the backend demo.py's default would use (``$DAGAN_BACKEND``, else auto:
        OpenVINO on a CPU when installed, see :func:`dagan.runtime.backends.choose_backend`)."""
        if is_our_checkpoint(checkpoint):  # ours hold config and depth network; extra ones would be an error
            model = load_checkpoint_or_official(checkpoint)
        else:
            model = load_checkpoint_or_official(checkpoint, self.settings.depth_checkpoint, self.settings.config)
        backend = default_backend()
        if backend == "auto":
            backend = choose_backend(device, model).backend
        exported = None
        if backend != "torch" and device.type == "cpu":
            exported = exported_pipeline_or_none(model, backend, batch_size=self.settings.batch_size)
        return exported or DaGANPipeline(model, device=device, batch_size=self.settings.batch_size)


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


@dataclass
class AnimationResult:
    video: str
    visualization: Optional[str]
    status: str
    frames: int = 0
    seconds: float = 0.0


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

    def __call__(self, request: AnimationRequest, progress: Optional[Progress] = None) -> AnimationResult:
        if progress is None:  # not `progress or ...`: a gradio.Progress is falsy (it has a __len__)
            progress = no_progress
        names = {path: os.path.basename(path) for path in (request.source_image, request.driving_video) if path}
        try:
            return self.run(request, progress)
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
        notes: list[str] = []
        if request.crop != "none" or request.motion_scale != 1.0:
            progress(0.0, desc="Finding faces")
            frames, notes = self.face_frames(request, pipeline, source, video, anchor, smoother)
        else:
            frames = pipeline.animate(source, video, relative=request.relative, adapt_scale=request.adapt_scale,
                                      driving_initial=anchor, smooth=smoother, visualize=request.visualize)
        directory = self.request_directory()
        result, panels = directory / "result.mp4", directory / "result_visualization.mp4"
        count = write_results(frames, video, result, panels if request.visualize else None, progress)
        seconds = time.perf_counter() - started
        status = (f"Done: {count} frames at {video.fps:.2f} fps in {seconds:.1f} s on {pipeline.device.type} "
                  f"({'model reused' if cached else 'model loaded'}; audio {'kept' if video.has_audio else 'none'}).")
        status = " ".join([status, *(note[0].upper() + note[1:] + "." for note in notes)])
        return AnimationResult(str(result), str(panels) if request.visualize else None, status, count, seconds)

    def face_frames(self, request: AnimationRequest, pipeline: DaGANPipeline, source: np.ndarray, video,
                    anchor: Optional[np.ndarray], smoother) -> tuple[Iterator, list[str]]:
        """The frames of the face mode (crop, paste-back into the full picture, face selection, motion strength;
        as ``demo.py --crop auto``) and the notes for the status line (faces found, small-face warnings)."""
        from dagan.faces import NoFaceFound, get_face_analyzer
        from dagan.faces.animation import PHOTO_DETECT_MAX_SIDE, FaceOptions, FaceSession, MotionOptions, fit_picture
        from dagan.faces.plans import parse_face_selection
        from dagan.io import to_uint8

        options = FaceOptions(crop=request.crop, paste_back=request.paste_back and request.crop == "auto",
                              faces=parse_face_selection(request.faces),
                              motion=MotionOptions(request.relative, request.adapt_scale, request.motion_scale))
        if request.crop == "auto" and self.face_analyzer is None:
            self.face_analyzer = get_face_analyzer("auto", detect_max_side=PHOTO_DETECT_MAX_SIDE)
        session = FaceSession(pipeline, options, analyzer=self.face_analyzer)
        picture = fit_picture(to_uint8(source), options.max_size)
        name = os.path.basename(request.source_image)
        try:
            frames = session.animate_picture(picture, video, name, smoother, anchor, visualize=request.visualize)
        except NoFaceFound as error:
            raise gr.Error(scrub(str(error), {request.source_image: name, str(video.path): "the driving video"})
                           .replace("--crop none", "Face crop 'none'").replace("--driving_crop none",
                                                                               "Face crop 'none'"),
                           print_exception=False) from None
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


def no_progress(*args, **kwargs) -> None:
    """The progress callback when there is no page to report to."""


def read_portrait(path: str) -> np.ndarray:
    try:
        return read_image(path)
    except PixelLimitError as error:
        raise gr.Error(f"The portrait '{os.path.basename(path)}' is too large: {error.summary}; downscale it first.",
                       print_exception=False) from None
    except MediaError:
        raise gr.Error(f"The portrait '{os.path.basename(path)}' is not an image that can be read; upload a PNG, "
                       "JPEG, BMP or WebP file.", print_exception=False) from None


def open_driving(path: str):
    try:
        video = open_video(path)
    except PixelLimitError as error:
        raise gr.Error(f"The driving video '{os.path.basename(path)}' is too large: {error.summary}; downscale it "
                       "first.",
                       print_exception=False) from None
    except MediaError as error:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "the file is empty"
        elif "no frames" in str(error) or "no video stream" in str(error):
            reason = "it has no video frames"
        else:
            reason = "it is not a video that can be decoded"
        raise gr.Error(f"The driving video '{os.path.basename(path)}' cannot be used: {reason}. Upload an MP4, MOV, "
                       "WebM or AVI file.", print_exception=False) from None
    return video


def track(items: Iterator, total: Optional[int], progress: Progress, desc: str, unit: str = "frames") -> Iterator:
    """Yield ``items``, reporting (done, total) to ``progress`` after each."""
    for index, item in enumerate(items):
        yield item
        progress((index + 1, total), desc=desc, unit=unit)


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


def scrub(message: str, names: dict[str, str]) -> str:
    """The message with server-side upload paths replaced by the uploaded files' names."""
    for path, name in names.items():
        message = message.replace(path, name)
    return message


# The page.
class UploadedImage(gr.Image):
    """An image upload that hands the uploaded file itself to the request handler, undecoded.

    gradio's own image preprocessing decodes every upload in full before the handler runs: a wrong file type then
    fails inside gradio with no message for the caller, and a small file that claims 13000x13000 pixels takes
    gigabytes. Here :func:`read_portrait` reads it (pixel limit checked from the header, readable errors)."""

    is_template = True  # rendered by gradio's own image component in the page

    def preprocess(self, payload):
        return None if payload is None else payload.path


CSS = "#status {min-height: 1.5em}"
INTRO = """# DaGAN: depth-aware talking heads
Upload a **photo** (with face crop *auto* the faces are found, animated and pasted back into the whole picture; with
*none* it is resized to the model's square input) and a **driving video** of a talking face, or pick the bundled
sample below, then press **Animate**. The result has the driving video's frame rate and audio."""


def build_app(settings: AppSettings, animator: Optional[Animator] = None) -> gr.Blocks:
    """The Gradio page. ``launch_app`` starts it; tests may call ``build_app(...).launch(...)`` themselves."""
    animator = animator or Animator(settings)
    checkpoints = find_checkpoints(settings.search_root, settings.checkpoint)
    devices = available_devices()
    with gr.Blocks(title="DaGAN", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                source = UploadedImage(label="Source portrait", type="filepath", image_mode=None, sources=["upload"],
                                  height=300, elem_id="source-image")
                driving = gr.Video(label="Driving video", sources=["upload"], height=300, elem_id="driving-video")
                if (SAMPLES_DIR / "source.png").is_file() and (SAMPLES_DIR / "driving.mp4").is_file():
                    gr.Examples([[str(SAMPLES_DIR / "source.png"), str(SAMPLES_DIR / "driving.mp4")]],
                                inputs=[source, driving], label="Bundled sample", cache_examples=False,
                                elem_id="samples")
                with gr.Accordion("Settings", open=True):
                    checkpoint = gr.Dropdown(checkpoints, value=checkpoints[0] if checkpoints else None,
                                             label="Checkpoint", elem_id="checkpoint",
                                             info="found in checkpoints/ and runs/*/checkpoints/")
                    device = gr.Dropdown(devices, value=settings.device if settings.device in devices else "auto",
                                         label="Device", elem_id="device")
                    with gr.Row():
                        relative = gr.Checkbox(True, label="Relative motion")
                        adapt_scale = gr.Checkbox(True, label="Adapt movement scale")
                        find_best = gr.Checkbox(False, label="Find best frame (face landmarks)")
                    with gr.Row():
                        smooth = gr.Checkbox(False, label="Smooth keypoints")
                        smooth_cutoff = gr.Slider(0.1, 5.0, value=1.0, step=0.1, label="Smoothing cutoff (Hz; "
                                                  "lower is smoother)")
                        visualize = gr.Checkbox(False, label="Visualisation video")
                    with gr.Row():
                        crop = gr.Radio(["auto", "none"], value="auto", label="Face crop", elem_id="crop",
                                        info="auto: find the face(s) and crop them like VoxCeleb; none: resize the "
                                        "whole picture")
                        faces = gr.Radio(["largest", "all"], value="largest", label="Faces", elem_id="faces")
                    with gr.Row():
                        paste_back = gr.Checkbox(True, label="Paste back into the full picture", elem_id="paste-back")
                        motion_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Motion strength (0 = still, "
                                                 "1 = as driven)", elem_id="motion-scale")
                button = gr.Button("Animate", variant="primary", elem_id="animate-button")
            with gr.Column():
                result = gr.Video(label="Result (the full picture with paste-back)", interactive=False, height=300,
                                  elem_id="result-video")
                panels = gr.Video(label="Visualisation (source, driving, result, depth)", interactive=False,
                                  height=300, elem_id="visualization-video")
                status = gr.Markdown(elem_id="status")

        def animate(source_image, driving_video, checkpoint_path, device_name, use_relative, use_adapt_scale,
                    use_smooth, cutoff, use_best_frame, use_visualize, crop_mode, use_paste_back, face_choice,
                    strength, progress=gr.Progress()):
            request = AnimationRequest(source_image, driving_video, checkpoint_path, device_name, use_relative,
                                       use_adapt_scale, use_smooth, cutoff, use_best_frame, use_visualize, crop_mode,
                                       use_paste_back, face_choice, strength)
            outcome = animator(request, progress)
            return outcome.video, outcome.visualization, outcome.status

        button.click(animate, [source, driving, checkpoint, device, relative, adapt_scale, smooth, smooth_cutoff,
                               find_best, visualize, crop, paste_back, faces, motion_scale], [result, panels, status],
                     api_name="animate")
        from dagan.audio.app_mode import add_audio_mode

        add_audio_mode(animator, settings, source, checkpoint, device, result, status)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def launch_app(settings: AppSettings, host: str = "127.0.0.1", port: int = 7860, **launch_kwargs) -> gr.Blocks:
    """Build and serve the app (blocks unless ``prevent_thread_lock=True`` is passed)."""
    demo = build_app(settings)
    allowed = [str(SAMPLES_DIR)] if SAMPLES_DIR.is_dir() else []
    demo.launch(server_name=host, server_port=port, max_file_size=int(settings.max_upload_mb * 2**20),
                allowed_paths=allowed, ssr_mode=False, footer_links=["gradio", "settings"], css=CSS,
                **launch_kwargs)
    return demo
