"""The live loop: newest frame -> track -> keypoints -> generator -> paste -> sinks, with its statistics.

One iteration takes the newest captured frame from the slot (:mod:`dagan.live.slot`), finds the driving face
(:mod:`dagan.live.tracking`), animates the source (:class:`~dagan.live.animator.LiveAnimator`) and hands the shown
frame to every sink. When no face is in view the last good result is held, with "face lost" written on it; a frame
that fails for any other reason is held the same way and counted, so one bad frame never ends the loop. Each stage
is timed, and the latency of each shown frame is measured from its capture time to the moment the sinks have it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from dagan.live.capture import LiveError
from dagan.live.slot import CapturedFrame, NewestFrameSlot

__all__ = ["STAGES", "ShownFrame", "LiveStats", "LiveLoop", "draw_text"]

STAGES = ("capture", "track", "keypoints", "generator", "paste", "output")
FACE_LOST = "face lost: holding the last frame"


@dataclass
class ShownFrame:
    """What the sinks get: ``image`` the result as shown (H, W, 3) uint8 (status written on it), ``camera`` the
    captured frame, ``captured`` its capture record, ``face_found`` whether this frame was animated, and the
    ``status`` line (empty when all is well)."""

    image: np.ndarray
    camera: np.ndarray
    captured: CapturedFrame
    face_found: bool
    status: str = ""


@dataclass
class LiveStats:
    """Per-stage times and end-to-end latencies (seconds) of a run, and its frame counts."""

    stages: dict = field(default_factory=lambda: defaultdict(list))
    latencies: list = field(default_factory=list)
    shown_times: list = field(default_factory=list)
    face_lost: int = 0
    errors: int = 0
    captured: int = 0
    dropped: int = 0

    def summary(self) -> dict:
        """fps (shown frames over the time between the first and the last), latency p50/p95 (ms), frame counts
        and the mean time of each stage (ms)."""
        shown = len(self.shown_times)
        span = self.shown_times[-1] - self.shown_times[0] if shown > 1 else 0.0
        latencies = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {
            "frames_shown": shown, "frames_captured": self.captured, "frames_dropped": self.dropped,
            "face_lost": self.face_lost, "errors": self.errors,
            "fps": (shown - 1) / span if span > 0 else 0.0,
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "stage_ms": {stage: 1000 * float(np.mean(self.stages[stage])) if self.stages[stage] else 0.0
                         for stage in STAGES},
        }

    def line(self) -> str:
        """The summary as one line for the terminal."""
        summary = self.summary()
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in summary["stage_ms"].items())
        return (f"{summary['frames_shown']} frames shown at {summary['fps']:.1f} fps, latency p50 "
                f"{summary['latency_p50_ms']:.0f} ms / p95 {summary['latency_p95_ms']:.0f} ms, "
                f"{summary['frames_dropped']} of {summary['frames_captured']} captured frames dropped, "
                f"{summary['face_lost']} without a face; stage means (ms): {stages}")


def draw_text(image: np.ndarray, lines: Iterable[str]) -> np.ndarray:
    """A copy of ``image`` with ``lines`` written at its top left (white on a dark band)."""
    import cv2

    image = image.copy()
    scale = max(0.35, image.shape[1] / 900)
    for row, text in enumerate(lines):
        y = int((row + 1) * 22 * scale / 0.6)
        cv2.putText(image, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


class LiveLoop:
    """Runs the live animation until the capture ends, a sink asks to quit, or :meth:`stop` is called.

    slot: the capture thread's :class:`~dagan.live.slot.NewestFrameSlot`. tracker: a
    :class:`~dagan.live.tracking.FaceTracker` or :class:`~dagan.live.tracking.WholeFrameTracker`. animator: a
    :class:`~dagan.live.animator.LiveAnimator`. sinks: objects with ``show(ShownFrame)`` (and optionally ``poll()``
    returning ``"reanchor"`` or ``"quit"``). overlay: write fps and latency on the shown frames.
    """

    def __init__(self, slot: NewestFrameSlot, tracker, animator, sinks: Iterable = (), overlay: bool = False):
        self.slot, self.tracker, self.animator = slot, tracker, animator
        self.sinks, self.overlay = list(sinks), overlay
        self.stats = LiveStats()
        self.last_good: Optional[np.ndarray] = None
        self._reanchor = threading.Event()
        self._stop = threading.Event()

    def request_reanchor(self) -> None:
        """Anchor the motion on the next frame with a face (thread-safe: a key, a browser button)."""
        self._reanchor.set()

    def stop(self) -> None:
        self._stop.set()

    def wait_for_face(self, wait_s: float, name: str = "the camera") -> None:
        """Take frames until one shows a face (it is animated, shown, and anchors the motion); LiveError when none
        does within ``wait_s`` seconds or before the input ends."""
        deadline = time.perf_counter() + wait_s
        while True:
            captured = self.slot.take(timeout=max(deadline - time.perf_counter(), 0.0))
            if captured is None and self.slot.error is not None:
                raise self.slot.error
            if captured is None:
                ended = "ended" if self.slot.closed else f"showed none in {wait_s:g} s"
                raise LiveError(f"no face in view at start ({name} {ended}): face the camera in good light, or wait "
                                "longer with --wait, or give face crops with --driving_crop none")
            if self.tracker(captured.image, self.animator.size) is not None:
                self.show(self.step(captured))
                return

    def run(self, max_frames: Optional[int] = None, wait_s: float = 10.0) -> LiveStats:
        """Show frames until the end (or ``max_frames``); returns the statistics. The capture thread's error, if it
        stopped on one, is raised after the loop."""
        try:
            while not self._stop.is_set() and (max_frames is None or len(self.stats.shown_times) < max_frames):
                captured = self.slot.take(timeout=wait_s)
                if captured is None:
                    break
                self.show(self.step(captured))
        finally:  # also on Ctrl-C: the counts of the frames seen so far
            self.stats.captured, self.stats.dropped = self.slot.captured, self.slot.dropped
        if self.slot.error is not None:
            raise self.slot.error
        return self.stats

    def step(self, captured: CapturedFrame) -> ShownFrame:
        """Animate one captured frame, or hold the last good result when there is no face or the frame fails."""
        self.stats.stages["capture"].append(captured.read_s)
        if self._reanchor.is_set():
            self._reanchor.clear()
            self.animator.reanchor()
        try:
            result = self.animate(captured.image) if captured.motion is None else self.speak(captured.motion)
        except Exception as error:  # one bad frame: hold and go on
            self.stats.errors += 1
            return self.held(captured, f"frame skipped ({type(error).__name__}: {str(error)[:60]})")
        if result is None:
            self.stats.face_lost += 1
            return self.held(captured, FACE_LOST)
        self.last_good = result
        return ShownFrame(result, captured.image, captured, True)

    def animate(self, frame: np.ndarray) -> Optional[np.ndarray]:
        """The result for one camera frame, or None when no face is in view."""
        times, animator = self.stats.stages, self.animator
        started = time.perf_counter()
        transform = self.tracker(frame, animator.size)
        times["track"].append(time.perf_counter() - started)
        if transform is None:
            return None
        started = time.perf_counter()
        kp_driving = animator.keypoints(animator.driving_crop(frame, transform))
        times["keypoints"].append(time.perf_counter() - started)
        started = time.perf_counter()
        generated = animator.render(kp_driving)
        times["generator"].append(time.perf_counter() - started)
        started = time.perf_counter()
        result = animator.compose(generated)
        times["paste"].append(time.perf_counter() - started)
        return result

    def speak(self, motion) -> np.ndarray:
        """The result for one frame of speech motion (:class:`~dagan.live.speech.SpeechAnimator`)."""
        started = time.perf_counter()
        generated = self.animator.render_motion(motion)
        self.stats.stages["generator"].append(time.perf_counter() - started)
        started = time.perf_counter()
        result = self.animator.compose(generated)
        self.stats.stages["paste"].append(time.perf_counter() - started)
        return result

    def held(self, captured: CapturedFrame, status: str) -> ShownFrame:
        base = self.last_good if self.last_good is not None else self.animator.picture
        return ShownFrame(base, captured.image, captured, False, status)

    def show(self, shown: ShownFrame) -> None:
        started = time.perf_counter()
        lines = ([shown.status] if shown.status else []) + ([self.overlay_line()] if self.overlay else [])
        if lines:
            shown.image = draw_text(shown.image, lines)
        for sink in self.sinks:
            sink.show(shown)
            request = getattr(sink, "poll", lambda: None)()
            if request == "reanchor":
                self.request_reanchor()
            elif request == "quit":
                self.stop()
        now = time.perf_counter()
        self.stats.stages["output"].append(now - started)
        self.stats.latencies.append(now - shown.captured.timestamp)
        self.stats.shown_times.append(now)

    def overlay_line(self) -> str:
        recent = self.stats.shown_times[-30:]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        latency = 1000 * float(np.median(self.stats.latencies[-30:])) if self.stats.latencies else 0.0
        return f"{fps:.1f} fps, latency {latency:.0f} ms, dropped {self.slot.dropped}"
