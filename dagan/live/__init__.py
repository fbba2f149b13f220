"""Live animation: a camera (or a stream, or a file played in real time) drives a portrait as it happens.

capture thread -> :class:`~dagan.live.slot.NewestFrameSlot` (one frame, stale ones dropped and counted)
-> :class:`~dagan.live.tracking.FaceTracker` (detect once, then follow) -> :class:`~dagan.live.animator.LiveAnimator`
(batch 1, the source's work done once, relative motion from an anchor frame) -> sinks (window, virtual camera,
recording). :class:`~dagan.live.loop.LiveLoop` ties them together and measures every stage.

- :mod:`~dagan.live.slot`: the newest-frame slot;
- :mod:`~dagan.live.capture`: cameras, network streams and files played at their own rate, the capture thread;
- :mod:`~dagan.live.tracking`: following the driving face;
- :mod:`~dagan.live.animator`: the source prepared once, anchoring, rendering, paste-back;
- :mod:`~dagan.live.sinks`: window, virtual camera, recording, and collecting frames in memory;
- :mod:`~dagan.live.loop`: the loop, the face-lost hold, the statistics.
"""

from dagan.live.animator import LiveAnimator
from dagan.live.capture import CaptureThread, LiveError, open_camera, open_file_source
from dagan.live.loop import LiveLoop, LiveStats
from dagan.live.slot import CapturedFrame, NewestFrameSlot
from dagan.live.tracking import FaceTracker, WholeFrameTracker

__all__ = ["LiveAnimator", "CaptureThread", "LiveError", "open_camera", "open_file_source", "LiveLoop", "LiveStats",
           "CapturedFrame", "NewestFrameSlot", "FaceTracker", "WholeFrameTracker"]
