"""Where live frames come from, and the thread that captures them into the newest-frame slot.

Sources (each yields (H, W, 3) uint8 RGB frames through ``read()``, None at the end):

- a camera: an index (0 = the first camera) or a device path, read with OpenCV;
- a network stream (RTSP, HTTP, ...), read with OpenCV's FFmpeg backend; opening and each read give up after a
  bounded wait, so a URL that does not answer is an error, not a hang;
- a video file or a folder of frames (:func:`~dagan.io.open_video`), played at its own frame rate when
  ``realtime`` (the stand-in for a camera in tests and benchmarks) or as fast as the loop takes frames.

Every problem at start (no camera, camera busy, no frames, a silent URL) is a :class:`LiveError` whose message
is one line naming the problem and the fix.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from typing import Callable, Iterator, Optional, TypeVar

import numpy as np

from dagan.io import open_video
from dagan.live.slot import CapturedFrame, NewestFrameSlot

__all__ = ["LiveError", "FrameSource", "CameraSource", "FileSource", "open_camera", "open_stream", "open_file_source",
           "CaptureThread", "DEFAULT_WAIT_S"]

DEFAULT_WAIT_S = 5.0  # the longest a camera or a stream may take to open or to give its first frame
Result = TypeVar("Result")


class LiveError(RuntimeError):
    """A problem with a live input or output; the message is one line that says what to do."""


def within(seconds: float, function: Callable[[], Result], what: str) -> Result:
    """``function()`` in a helper thread, given up after ``seconds`` (``TimeoutError`` naming ``what``); used for
    the calls OpenCV can block in (opening a URL, the first read)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = function()
        except BaseException as error:  # handed to the caller
            box["error"] = error

    thread = threading.Thread(target=target, name=f"dagan-live-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish in {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class FrameSource:
    """A live source: ``read()`` gives the next (H, W, 3) uint8 RGB frame or None at the end; ``fps`` is its
    nominal rate (0 when unknown); ``paced``: the source itself delivers frames in real time (a camera)."""

    name = "source"
    fps = 0.0
    paced = True
    waited_s = 0.0  # of the last read, the time spent waiting for the frame's due time (real-time playback)

    def read(self) -> Optional[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CameraSource(FrameSource):
    """An opened OpenCV capture (camera or stream); the first frame is read at opening and returned first."""

    def __init__(self, capture, name: str, first: np.ndarray):
        self.capture, self.name, self._first = capture, name, first
        fps = float(capture.get(5) or 0.0)  # cv2.CAP_PROP_FPS
        self.fps = fps if 0 < fps < 1000 else 0.0

    def read(self) -> Optional[np.ndarray]:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self.capture.read()
        return _rgb(frame) if ok and frame is not None else None

    def close(self) -> None:
        self.capture.release()


def _rgb(frame_bgr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grey) frame -> (H, W, 3) uint8 RGB."""
    if frame_bgr.ndim == 2:
        return np.ascontiguousarray(np.repeat(frame_bgr[..., None], 3, axis=2))
    return np.ascontiguousarray(frame_bgr[..., 2::-1])


def _cv2():
    try:
        import cv2
    except ImportError as error:
        raise LiveError(f"cameras and streams are read with OpenCV, which is not installed ({error}): "
                        "pip install -e '.[faces]'") from None
    return cv2


def _video_devices() -> list[str]:
    return sorted(glob.glob("/dev/video*"))


def open_camera(camera: str, wait_s: float = DEFAULT_WAIT_S) -> CameraSource:
    """Open a camera: ``camera`` is an index ("0") or a device path ("/dev/video2"). Raises LiveError when it is
    missing, busy, or gives no frame within ``wait_s`` seconds."""
    cv2 = _cv2()
    target: int | str = int(camera) if camera.isdigit() else camera
    device = f"/dev/video{camera}" if isinstance(target, int) and sys.platform.startswith("linux") else camera
    name = f"camera {camera}"
    if sys.platform.startswith("linux") and not os.path.exists(device):
        found = ", ".join(_video_devices()) or "none"
        raise LiveError(f"no {name} ({device} does not exist; cameras found: {found}): plug one in, or give "
                        "--camera another index or device, or --driving_video clip.mp4 --realtime")
    capture = within(wait_s, lambda: cv2.VideoCapture(target), f"opening {name}")
    if not capture.isOpened():
        raise LiveError(f"{name} ({device}) could not be opened: is another program (a video call, OBS) using it, or "
                        "do you lack permission (the 'video' group)? Close it or fix the permission and retry")
    return CameraSource(capture, name, _first_frame(capture, name, wait_s))


def _first_frame(capture, name: str, wait_s: float) -> np.ndarray:
    try:
        ok, frame = within(wait_s, capture.read, f"the first frame of {name}")
    except TimeoutError:
        ok, frame = False, None
    if not ok or frame is None:
        capture.release()
        raise LiveError(f"{name} opened but gave no frame in {wait_s:g} s: it may be in use by another program, "
                        "covered by a privacy shutter, or not a capture device; check it with another camera app")
    return _rgb(frame)


def open_stream(url: str, wait_s: float = DEFAULT_WAIT_S) -> CameraSource:
    """Open a network stream (RTSP, HTTP, ...) with OpenCV's FFmpeg backend; LiveError when it does not open or
    give a frame within ``wait_s`` seconds."""
    cv2 = _cv2()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a failed open is the LiveError below
    milliseconds = int(wait_s * 1000)
    parameters = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds]
    name = f"the stream {url}"
    try:
        capture = within(wait_s + 1.0, lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, parameters), f"opening {name}")
    except TimeoutError:
        capture = None
    if capture is None or not capture.isOpened():
        raise LiveError(f"{name} did not answer within {wait_s:g} s: check the address, that the stream is running "
                        "and reachable from here (--wait sets the wait)")
    return CameraSource(capture, name, _first_frame(capture, name, wait_s))


class FileSource(FrameSource):
    """A video file or a frame folder; ``paced`` when played in real time at ``fps`` (default: the file's);
    played ``repeat`` times in a row (None: until stopped)."""

    def __init__(self, path: str, realtime: bool = True, fps: Optional[float] = None, repeat: Optional[int] = 1):
        self.video = open_video(path)
        self.name, self.paced = f"the video {path}", realtime
        self.fps = float(fps or self.video.fps)
        self.repeats_left = repeat
        self._frames: Iterator[np.ndarray] = iter(self.video)
        self._start: Optional[float] = None
        self._index = 0

    def _next_frame(self) -> Optional[np.ndarray]:
        frame = next(self._frames, None)
        if frame is None and (self.repeats_left is None or self.repeats_left > 1):
            self.repeats_left = None if self.repeats_left is None else self.repeats_left - 1
            self._frames = iter(self.video)
            frame = next(self._frames, None)
        return frame

    def read(self) -> Optional[np.ndarray]:
        frame = self._next_frame()
        if frame is None or not self.paced:
            return frame
        if self._start is None:
            self._start = time.perf_counter()
        due = self._start + self._index / self.fps  # frame i is "captured" i / fps after the first
        self._index += 1
        delay = due - time.perf_counter()
        self.waited_s = max(delay, 0.0)
        if delay > 0:
            time.sleep(delay)
        return frame

    def close(self) -> None:
        getattr(self._frames, "close", lambda: None)()


def open_file_source(path: str, realtime: bool = True, fps: Optional[float] = None,
                     repeat: Optional[int] = 1) -> FileSource:
    return FileSource(path, realtime, fps, repeat)


class CaptureThread(threading.Thread):
    """Reads ``source`` into ``slot`` until the source ends or :meth:`stop` is called, stamping each frame with
    its capture time. A paced source (a camera, a file in real time) never waits for the loop: frames the loop
    has not taken are dropped by the slot. An unpaced one (a file played as fast as possible) waits until the loop
    has taken the previous frame, so every frame is animated."""

    def __init__(self, source: FrameSource, slot: Optional[NewestFrameSlot] = None):
        super().__init__(name="dagan-live-capture", daemon=True)
        self.source, self.slot = source, slot or NewestFrameSlot()
        self._stop_event = threading.Event()

    def run(self) -> None:
        error: Optional[BaseException] = None
        try:
            index = 0
            while not self._stop_event.is_set():
                if not self.source.paced:
                    self.slot.wait_until_empty(self._stop_event)
                started = time.perf_counter()
                image = self.source.read()
                if image is None:
                    break
                now = time.perf_counter()
                self.slot.put(CapturedFrame(image, now, index, now - started - self.source.waited_s))
                index += 1
        except Exception as exc:  # reported by the loop (the slot carries it)
            error = exc
        finally:
            self.source.close()
            self.slot.close(error)

    def stop(self) -> None:
        self._stop_event.set()
