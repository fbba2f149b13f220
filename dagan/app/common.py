"""What the web app's tabs share: settings, checkpoint discovery, the pipeline cache, reading uploads with one-line
errors, progress reporting."""
from __future__ import annotations

import glob
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import gradio as gr
import numpy as np
import torch

from dagan.checkpoint import CheckpointError, is_our_checkpoint
from dagan.config import ConfigError
from dagan.faces.plans import FacePlan
from dagan.faces.restore import RestoreOptions
from dagan.inference import DaGANPipeline, InferenceError, exported_pipeline_or_none, resolve_device
from dagan.io import MediaError, open_video, read_image
from dagan.io.images import PixelLimitError
from dagan.model import load_checkpoint_or_official
from dagan.runtime.backends import choose_backend, default_backend

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES_DIR = REPO_ROOT / "data" / "samples"
CHECKPOINT_PATTERNS = ("checkpoints/*", "runs/*/checkpoints/*", "runs/*/models/*")  # models/: the quickstart's
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
    max_speech_minutes: float = 10.0  # longest speech the speech tab animates (decoding checks it, streamed)
    batch_size: Optional[int] = None  # None: the fastest measured for the device
    search_root: str = "."
    cache_size: int = 2
    keep_results_s: float = 3600.0
    work_dir: Optional[str] = None  # per-request directories go here (default: a fresh temp dir)
    restore: Optional[RestoreOptions] = None  # face restoration of every animation (app.py --restore)


def find_checkpoints(search_root: str | os.PathLike, extra: Optional[str] = None) -> list[str]:
    """The checkpoint files in ``checkpoints/``, ``runs/*/checkpoints/`` and ``runs/*/models/`` (the quickstart's
    model) under ``search_root`` (paths relative to it), newest first, after ``extra`` (the --checkpoint given;
    relative when it lies under the root)."""
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


def scrub(message: str, names: dict[str, str]) -> str:
    """The message with server-side upload paths replaced by the uploaded files' names."""
    for path, name in names.items():
        message = message.replace(path, name)
    return message


# Uploads.
class UploadedImage(gr.Image):
    """An image upload that hands the uploaded file itself to the request handler, undecoded.

    gradio's own image preprocessing decodes every upload in full before the handler runs: a wrong file type then
    fails inside gradio with no message for the caller, and a small file that claims 13000x13000 pixels takes
    gigabytes. Here :func:`read_portrait` reads it (pixel limit checked from the header, readable errors)."""

    is_template = True  # rendered by gradio's own image component in the page

    def preprocess(self, payload):
        return None if payload is None else payload.path


BROWSER_MAX_SIZE = 1024  # longer side of a pasted-back portrait in the live rooms (each frame goes out live)


def portrait_face(animator_app, pipeline, picture: np.ndarray, name: str) -> tuple[np.ndarray, FacePlan]:
    """The portrait shrunk to BROWSER_MAX_SIZE and its largest face, for paste-back (as ``scripts/live.py``)."""
    from dagan.faces import MissingFaceBackend, NoFaceFound, get_face_analyzer
    from dagan.faces.animation import PHOTO_DETECT_MAX_SIDE, FaceOptions, FaceSession, fit_picture

    options = FaceOptions(crop="auto", paste_back=True, max_size=BROWSER_MAX_SIZE)
    picture = fit_picture(picture, options.max_size)
    try:
        if animator_app.face_analyzer is None:
            animator_app.face_analyzer = get_face_analyzer("auto", detect_max_side=PHOTO_DETECT_MAX_SIDE)
        face = FaceSession(pipeline, options, analyzer=animator_app.face_analyzer).picture_faces(picture, name)[0]
    except MissingFaceBackend:
        raise gr.Error("Paste back needs a face backend to find the face in the portrait: pip install -e "
                       "'.[faces]' (or untick 'Paste back into the whole portrait').", print_exception=False) from None
    except NoFaceFound as error:
        raise gr.Error(str(error).replace("--crop none", "untick 'Paste back into the whole portrait'"),
                       print_exception=False) from None
    return picture, face
