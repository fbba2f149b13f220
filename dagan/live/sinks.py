"""Where live frames go: a window, a virtual camera, a recording, or a list in memory.

Each sink has ``show(ShownFrame)`` and ``close()``; a sink that takes input (the window's keys) also has
``poll()``, returning ``"reanchor"``, ``"quit"`` or None. Opening a sink that cannot work here (no display, no
virtual-camera backend) raises :class:`~dagan.live.capture.LiveError` with one line saying what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from dagan.audio.decode import SAMPLE_RATE
from dagan.io.files import remove_quietly, temporary_sibling
from dagan.live.capture import LiveError
from dagan.live.loop import ShownFrame

__all__ = ["AudioTrack", "CollectSink", "WindowSink", "VirtualCameraSink", "RecordSink", "VIRTUAL_CAMERA_HINT",
           "side_by_side"]

VIRTUAL_CAMERA_HINT = {
    "linux": "install and load v4l2loopback (sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback "
             "devices=1 exclusive_caps=1 card_label=dagan)",
    "win32": "install OBS Studio (26 or newer) and start its virtual camera once, or Unity Capture",
    "darwin": "install OBS Studio (26.1 or newer) and start its virtual camera once",
}
WINDOW_TITLE = "dagan live: source | camera | result  (a: re-anchor, q: quit)"


class CollectSink:
    """Keeps every shown frame (tests, the Python API)."""

    def __init__(self) -> None:
        self.frames: list[ShownFrame] = []

    def show(self, shown: ShownFrame) -> None:
        self.frames.append(shown)

    def close(self) -> None:
        pass


def side_by_side(images: list[np.ndarray], height: int) -> np.ndarray:
    """Images resized to one ``height`` (aspect kept) and put side by side: (height, sum of widths, 3) uint8."""
    import cv2

    resized = [cv2.resize(image, (max(1, round(image.shape[1] * height / image.shape[0])), height),
                          interpolation=cv2.INTER_AREA) for image in images]
    return np.concatenate(resized, axis=1)


class WindowSink:
    """An OpenCV window showing source | camera | result; keys: ``a`` re-anchors, ``q`` or Esc quits."""

    def __init__(self, source_picture: np.ndarray, height: int = 360):
        import cv2

        self.check()
        self.cv2, self.source, self.height = cv2, source_picture, height
        self.key: Optional[int] = None

    @staticmethod
    def check() -> None:
        """LiveError when no window can open here (no display, or OpenCV without GUI support)."""
        import cv2

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise LiveError("--window needs a display, and none is set (no $DISPLAY): run it on a desktop session, or "
                            "use --virtual_camera or --record out.mp4")
        try:
            cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise LiveError("this OpenCV build has no windows (opencv-python-headless): use --record or "
                            "--virtual_camera, or swap in the desktop build: pip uninstall opencv-python-headless && "
                            "pip install 'opencv-python>=4.9,<5'") from None

    def show(self, shown: ShownFrame) -> None:
        view = side_by_side([self.source, shown.camera, shown.image], self.height)
        self.cv2.imshow(WINDOW_TITLE, view[..., ::-1])  # RGB -> BGR
        self.key = self.cv2.waitKey(1) & 0xFF

    def poll(self) -> Optional[str]:
        key, self.key = self.key, None
        if key in (ord("a"), ord("A"), ord(" ")):
            return "reanchor"
        if key in (ord("q"), ord("Q"), 27):
            return "quit"
        return None

    def close(self) -> None:
        self.cv2.destroyWindow(WINDOW_TITLE)


class VirtualCameraSink:
    """The result as a virtual camera (pyvirtualcam) that Zoom, Meet, Teams or OBS can pick."""

    def __init__(self, size: tuple[int, int], fps: float, device: Optional[str] = None):
        try:
            import pyvirtualcam
        except ImportError:
            raise LiveError("--virtual_camera needs pyvirtualcam: pip install -e '.[live]' (then "
                            f"{_platform_hint()})") from None
        height, width = size
        try:
            self.camera = pyvirtualcam.Camera(width=width, height=height, fps=fps or 25.0, device=device,
                                              fmt=pyvirtualcam.PixelFormat.RGB)
        except (RuntimeError, ValueError) as error:
            raise LiveError(f"no virtual-camera backend ({str(error).splitlines()[0]}): "
                            f"{_platform_hint()}") from None
        self.size = size

    @classmethod
    def check(cls, device: Optional[str] = None) -> None:
        """LiveError when no virtual camera can open here (opens and closes a small one)."""
        cls((64, 64), 25.0, device).close()

    def show(self, shown: ShownFrame) -> None:
        image = shown.image
        if image.shape[:2] != self.size:
            import cv2

            image = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        self.camera.send(np.ascontiguousarray(image))

    def close(self) -> None:
        self.camera.close()


def _platform_hint() -> str:
    key = "linux" if sys.platform.startswith("linux") else sys.platform
    return VIRTUAL_CAMERA_HINT.get(key, VIRTUAL_CAMERA_HINT["linux"])


class AudioTrack:
    """The audio heard during a live session (a microphone), kept for its recording: pieces of 16 kHz mono float32
    are appended, as they arrive, to a temporary 16-bit WAV file beside the recording (hidden, removed with it on an
    error, or by a later run after a kill), so memory does not grow with the session. Sample 0 is the first sample
    the streaming model heard, the time of video frame 0. Thread-safe: the capture thread writes, the loop closes."""

    def __init__(self, beside: str, sample_rate: int = SAMPLE_RATE):
        self.path = temporary_sibling(Path(beside).with_suffix(".wav"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._wave: Optional[wave.Wave_write] = wave.open(str(self.path), "wb")
        self._wave.setnchannels(1)
        self._wave.setsampwidth(2)
        self._wave.setframerate(sample_rate)

    def write(self, samples: np.ndarray) -> None:
        """Append (N,) float32 samples in [-1, 1]; ignored once closed."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
        with self._lock:
            if self._wave is not None:
                self._wave.writeframesraw(pcm.tobytes())

    def record(self, pieces: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """``pieces``, each written to the track before it is passed on (closing this closes ``pieces``)."""
        try:
            for piece in pieces:
                self.write(piece)
                yield piece
        finally:
            getattr(pieces, "close", lambda: None)()

    def close(self) -> None:
        """Finish the WAV file (its header); later writes are ignored."""
        with self._lock:
            if self._wave is not None:
                self._wave.close()
                self._wave = None

    def discard(self) -> None:
        """Close and delete the file."""
        self.close()
        remove_quietly(self.path)


class RecordSink:
    """Records exactly what is shown, in real time: the output video runs at ``fps`` and each shown frame fills
    the time until the next one (a frame held longer is repeated), so the recording plays as the session went.
    ``by_index``: frame i of the recording is shown frame i (or the last one before it): speech, with the speech
    as its audio track, from a file (``audio_from``) or as it was heard (``heard``: an :class:`AudioTrack` that the
    caller fills as the model hears it). The video is written alone, then muxed with the speech cut or padded to
    exactly its length (a session stopped early keeps only the audio of its frames) into a temporary file renamed
    over ``path``. Written atomically (:func:`~dagan.io.open_writer`); an input is never replaced."""

    def __init__(self, path: str, fps: float, protected_paths=(), audio_from: Optional[str] = None,
                 by_index: bool = False, heard: bool = False):
        from dagan.io import open_writer
        from dagan.io.writers import check_result_path, is_frame_directory_path, is_image_path

        self.fps, self.path, self.by_index = fps, path, by_index
        self.audio_track: Optional[AudioTrack] = None
        self.audio: Optional[Path] = None  # the speech muxed in at close
        if by_index and (heard or audio_from) and not (is_frame_directory_path(path) or is_image_path(path)):
            check_result_path(path, [audio_from, *protected_paths])
            self.audio_track = AudioTrack(path) if heard else None
            self.audio = self.audio_track.path if heard else Path(audio_from)
            self.writer = open_writer(temporary_sibling(Path(path)), fps)  # the video alone
        else:
            self.writer = open_writer(path, fps, audio_from=audio_from, protected_paths=protected_paths)
        self.start: Optional[float] = None
        self.written = 0
        self.pending: Optional[np.ndarray] = None

    def show(self, shown: ShownFrame) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        # Frames that should be on the recording before this one: by the clock, or (speech, whose frames have fixed
        # times that the audio track follows) by the frame's own index.
        due = shown.captured.index if self.by_index else int((now - self.start) * self.fps)
        while self.pending is not None and self.written < due:
            self.writer.write(self.pending)
            self.written += 1
        self.pending = shown.image

    def close(self) -> None:
        """Write the last frame and finish the file (nothing shown: no file)."""
        if self.pending is None:
            self.abort()
            return
        try:
            self.writer.write(self.pending)
            self.written += 1
            self.writer.close()
            if self.audio is not None:
                self._add_audio()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.writer.abort()
        if self.audio is not None:
            remove_quietly(self.writer.path)  # the video alone, when it was finished
        if self.audio_track is not None:
            self.audio_track.discard()

    def _add_audio(self) -> None:
        """Mux the video written alone (``self.writer.path``) and the speech, cut or padded to exactly the video's
        length, into a temporary file, then rename it to ``path``."""
        from dagan.io import MediaError, ffmpeg_executable
        from dagan.io.files import publish
        from dagan.io.writers import OWN_PROCESS_GROUP, check_video_path

        video, path = Path(self.writer.path), Path(self.path)
        if self.audio_track is not None:
            self.audio_track.close()
        seconds = f"{self.written / self.fps:.6f}"
        temporary = temporary_sibling(path)
        command = [ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-i", f"file:{video.resolve()}",
                   "-i", f"file:{self.audio.resolve()}", "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                   "-c:a", "aac", "-b:a", "128k", "-af", f"apad=whole_dur={seconds},atrim=end={seconds}",
                   "-movflags", "+faststart", "-f", check_video_path(path, []), f"file:{temporary.resolve()}"]
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                                    **OWN_PROCESS_GROUP)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines() or [f"ffmpeg exit status {result.returncode}"]
                raise MediaError(f"ffmpeg failed to add the speech to '{path}' ({lines[-1]})")
            publish(temporary, path)
        finally:
            for leftover in (temporary, video):
                remove_quietly(leftover)
            if self.audio_track is not None:
                self.audio_track.discard()

    def __exit__(self, exc_type, exc, traceback) -> bool:
        """Keep the recording when the run ended normally or by Ctrl-C, remove it on an error."""
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.close()
        else:
            self.abort()
        return False
