"""Live speech: a microphone, or a speech file played in real time, drives the portrait through the streaming audio
model (:class:`~dagan.audio.streaming.StreamingMotion`).

:class:`SpeechCapture` is the capture thread of speech: it feeds the audio to the streaming model as it is heard
and releases each video frame's motion into the newest-frame slot at its display time (its audio time plus the
model's look-ahead), so the loop (:class:`~dagan.live.loop.LiveLoop`) renders speech exactly as it renders camera
frames: a slow renderer drops frames (counted), never falls behind. :class:`SpeechAnimator` renders one frame of
motion: the motion is composed on the source's own keypoints (the reference, as ``demo.py --driving_audio``
without ``--reference_video``) and rendered by the pipeline, the source's work done once.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, Optional

import numpy as np

from dagan.audio.decode import SAMPLE_RATE, load_audio
from dagan.audio.features import num_video_frames
from dagan.audio.motion import compose_motion
from dagan.audio.streaming import FrameMotion, StreamingMotion
from dagan.geometry import Keypoints, normalize_keypoints
from dagan.inference import to_uint8_batch
from dagan.live.capture import LiveError
from dagan.live.slot import CapturedFrame, NewestFrameSlot

__all__ = ["SpeechAnimator", "SpeechCapture", "file_pieces", "microphone_pieces", "PIECE_SECONDS"]

PIECE_SECONDS = 0.02  # audio is fed to the model in pieces of this length


class SpeechAnimator:
    """Renders speech motion on one source portrait (H, W, 3) uint8 with a :class:`~dagan.inference.DaGANPipeline`."""

    def __init__(self, pipeline, picture: np.ndarray):
        self.pipeline, self.picture, self.paste = pipeline, picture, None
        self.source = pipeline.prepare_source(picture)  # once per source
        self.reference = Keypoints(self.source.keypoints.value.cpu(), self.source.keypoints.jacobian.cpu())

    def render_motion(self, motion: FrameMotion) -> np.ndarray:
        """The frame (h, w, 3) uint8 of one frame's motion: relative to the reference (the source's keypoints)."""
        device = self.pipeline.device
        kp_driving = compose_motion(self.reference, motion.pose[None], motion.local[None])
        kp_driving = Keypoints(kp_driving.value.to(device), kp_driving.jacobian.to(device))
        anchor = Keypoints(self.reference.value.to(device), self.reference.jacobian.to(device))
        kp_norm = normalize_keypoints(self.source.keypoints, kp_driving, anchor, use_relative_movement=True,
                                      use_relative_jacobian=True, movement_scale=1.0)
        return to_uint8_batch(self.pipeline.generate(self.source, kp_norm).prediction)[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.pipeline.image_size

    def compose(self, generated: np.ndarray) -> np.ndarray:
        return generated

    def reanchor(self) -> None:
        """Speech has no driving face to anchor on: nothing to do."""


def file_pieces(path: str) -> tuple[Iterator[np.ndarray], int]:
    """A speech file cut in PIECE_SECONDS pieces (16 kHz mono float32), and its length in samples."""
    samples = load_audio(path).samples
    piece = int(PIECE_SECONDS * SAMPLE_RATE)
    return (samples[begin:begin + piece] for begin in range(0, len(samples), piece)), len(samples)


def microphone_pieces(device: Optional[str] = None) -> Iterator[np.ndarray]:
    """The default (or ``device``) microphone, PIECE_SECONDS at a time, until the iterator is closed."""
    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: the PortAudio library is missing
        raise LiveError(f"--driving_audio mic needs sounddevice and PortAudio ({error}): pip install -e '.[live]' "
                        "(on Linux also: sudo apt install libportaudio2)") from None
    try:
        sounddevice.query_devices(device, kind="input")
    except (ValueError, sounddevice.PortAudioError):
        raise LiveError("no microphone found: plug one in (or name it with --audio_device), or give a speech file "
                        "with --driving_audio speech.wav") from None
    pieces: queue.Queue = queue.Queue()
    stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", device=device,
                                     blocksize=int(PIECE_SECONDS * SAMPLE_RATE),
                                     callback=lambda data, frames, times, status: pieces.put(data[:, 0].copy()))

    def read() -> Iterator[np.ndarray]:
        with stream:
            while True:
                yield pieces.get()
    return read()


class SpeechCapture(threading.Thread):
    """Feeds ``pieces`` of audio to ``stream`` (paced to real time when ``realtime``: a file) and puts each video
    frame's motion into ``slot`` at its display time. ``picture`` is shown as the "camera" panel."""

    def __init__(self, stream: StreamingMotion, pieces: Iterator[np.ndarray], picture: np.ndarray,
                 realtime: bool = True, slot: Optional[NewestFrameSlot] = None):
        super().__init__(name="dagan-live-speech", daemon=True)
        self.stream, self.pieces, self.picture, self.realtime = stream, pieces, picture, realtime
        self.slot = slot or NewestFrameSlot()
        self._stop_event = threading.Event()
        self.pending: list[FrameMotion] = []
        self.start_time = 0.0

    def run(self) -> None:
        error: Optional[BaseException] = None
        try:
            self.start_time = time.perf_counter()
            heard = 0
            for piece in self.pieces:
                if self._stop_event.is_set():
                    break
                heard += len(piece)
                if self.realtime:
                    self._sleep_until(self.start_time + heard / SAMPLE_RATE)
                self.pending += self.stream.push(piece)
                self._release(time.perf_counter())
            if not self._stop_event.is_set():  # stopped: the rest of the audio is not wanted
                self.pending += self.stream.end()
            while self.pending and not self._stop_event.is_set():
                self._sleep_until(self.due(self.pending[0].index))
                self._release(time.perf_counter())
        except Exception as exc:  # reported by the loop (the slot carries it)
            error = exc
        finally:
            getattr(self.pieces, "close", lambda: None)()
            self.slot.close(error)

    def due(self, index: int) -> float:
        """When frame ``index`` is shown: its audio time plus the model's look-ahead."""
        return self.start_time + index / self.stream.fps + self.stream.look_ahead

    def _release(self, now: float) -> None:
        while self.pending and self.due(self.pending[0].index) <= now:
            motion = self.pending.pop(0)
            heard_at = self.start_time + motion.index / self.stream.fps
            self.slot.put(CapturedFrame(self.picture, heard_at, motion.index, motion=motion))

    def _sleep_until(self, moment: float) -> None:
        delay = moment - time.perf_counter()
        if delay > 0:
            self._stop_event.wait(delay)

    def stop(self) -> None:
        self._stop_event.set()


def speech_stream(audio_model, fps: float, total_samples: Optional[int], seed: int = 0) -> StreamingMotion:
    """The streaming model for a file of ``total_samples`` (its frame count known) or a microphone (None)."""
    total = None if total_samples is None else num_video_frames(total_samples / SAMPLE_RATE, fps)
    return StreamingMotion(audio_model, fps, total_frames=total, seed=seed)
