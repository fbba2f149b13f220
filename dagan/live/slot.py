"""The newest-frame slot between the capture thread and the animation loop.

A live loop must show the newest camera frame, never work through a backlog: the slot holds at most one frame.
``put`` replaces a frame the loop has not taken yet (that frame is dropped and counted); ``take`` waits for a
frame and empties the slot. So a slow stage costs frames (counted in :attr:`NewestFrameSlot.dropped`), never
latency: the frame the loop takes is at most one capture interval old when it is taken.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["CapturedFrame", "NewestFrameSlot"]


@dataclass(frozen=True)
class CapturedFrame:
    """One captured frame: image (H, W, 3) uint8 RGB, its capture time (``time.perf_counter()`` seconds), its
    index in capture order (0, 1, ...; gaps are the dropped frames) and the seconds spent reading it. For speech,
    ``motion`` is the frame's :class:`~dagan.audio.streaming.FrameMotion` (and the time is when its audio was
    heard)."""

    image: np.ndarray
    timestamp: float
    index: int
    read_s: float = 0.0
    motion: object = None


class NewestFrameSlot:
    """A one-frame buffer, safe between one producer thread and one consumer thread."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._frame: Optional[CapturedFrame] = None
        self._closed = False
        self.error: Optional[BaseException] = None  # why the producer stopped early, if it did
        self.captured = 0  # frames put
        self.taken = 0  # frames taken by the consumer
        self.dropped = 0  # frames replaced before they were taken

    def __len__(self) -> int:
        """Frames held now: 0 or 1."""
        with self._condition:
            return 0 if self._frame is None else 1

    def put(self, frame: CapturedFrame) -> None:
        """Hold ``frame``, dropping (and counting) the one still waiting, if any."""
        with self._condition:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self.captured += 1
            self._condition.notify_all()

    def take(self, timeout: Optional[float] = None) -> Optional[CapturedFrame]:
        """The newest frame, waiting up to ``timeout`` seconds (None: until one comes or the slot is closed).
        Returns None on timeout, or when the slot is closed and empty (the producer has finished)."""
        with self._condition:
            self._condition.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self.taken += 1
                self._condition.notify_all()  # a producer waiting for an empty slot
            return frame

    def close(self, error: Optional[BaseException] = None) -> None:
        """No more frames will come (``error``: why the producer stopped). A waiting ``take`` returns."""
        with self._condition:
            self._closed = True
            self.error = self.error or error
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        with self._condition:
            return self._closed

    def wait_until_empty(self, stop: Optional[threading.Event] = None, poll_s: float = 0.05) -> None:
        """Block until the consumer has taken the held frame (or ``stop`` is set): the producer of a source that
        is not real time (a file played as fast as possible) uses it so that no frame is dropped."""
        with self._condition:
            while self._frame is not None and not (stop is not None and stop.is_set()):
                self._condition.wait(poll_s)
