"""Speech motion as the audio arrives (a microphone, or a file played in real time): the audio model run in
streaming mode, with a bounded look-ahead.

:class:`StreamingMotion` takes audio samples as they come (``push``) and hands out the motion (head pose and local
motion, :class:`~dagan.audio.model.AudioMotion` rows) of each video frame as soon as the audio it depends on is
there. It runs :meth:`~dagan.audio.model.AudioDrivenModel.predict_chunk`, the same step as the offline
``predict``, on chunks of ``chunk_frames`` video frames with ``overlap`` frames of context on each side for the
bidirectional local network, so a frame waits for ``chunk_frames + overlap`` frames of audio after it, plus the
mel window's context (``audio_params.context_seconds``) and half an STFT window: :attr:`StreamingMotion.look_ahead`
seconds (0.94 s at 25 fps with the defaults 5 + 10 frames and 0.2 s of context). The head pose is generated online
(the pose generator's state carries from chunk to chunk) with the personalised style.

Where the windows coincide with the offline ones (the same ``chunk_frames`` and ``overlap``, and the clip's length
known, as for a file), the motion equals ``predict``'s on the whole clip: the log-mel frames used are only those
whose STFT window the received audio covers, which are the whole clip's. Silent frames (below ``silence_db``
dBFS over one frame period) get no local motion: the mouth stays at the reference (closed) and still.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from dagan.audio.decode import SAMPLE_RATE, Audio
from dagan.audio.features import HOP_SECONDS, WINDOW_SECONDS, context_frames, frame_energy_db, frame_times, log_mel
from dagan.audio.model import AudioDrivenModel

__all__ = ["FrameMotion", "StreamingMotion", "LIVE_CHUNK_FRAMES", "LIVE_OVERLAP", "SILENCE_DBFS"]

LIVE_CHUNK_FRAMES = 5  # video frames per streaming step
LIVE_OVERLAP = 10  # frames of look-ahead (and look-back) context for the bidirectional local network
SILENCE_DBFS = -50.0  # a frame quieter than this (RMS over one frame period) is silent
NOISE_BLOCK = 4096  # frames of pose noise drawn at a time when the length is not known (a microphone)


class FrameMotion(NamedTuple):
    """One video frame's motion: its index, pose (6,), local motion (6 K,) and whether it is silent."""

    index: int
    pose: torch.Tensor
    local: torch.Tensor
    silent: bool


class StreamingMotion:
    """Motion of speech pushed a piece at a time (module docstring).

    total_frames: the video frames the whole audio gives (a file: ``num_video_frames(duration, fps)``), or None (a
    microphone). style: the pose style (default the model's personalised one). seed: the pose noise's seed.
    """

    def __init__(self, model: AudioDrivenModel, fps: float = 25.0, total_frames: Optional[int] = None,
                 style: Optional[torch.Tensor] = None, seed: int = 0, chunk_frames: int = LIVE_CHUNK_FRAMES,
                 overlap: int = LIVE_OVERLAP, silence_db: Optional[float] = SILENCE_DBFS):
        if chunk_frames < 1 or overlap < 0:
            raise ValueError(f"chunk_frames must be >= 1 and overlap >= 0, got {chunk_frames} and {overlap}")
        self.model, self.fps, self.total_frames = model, fps, total_frames
        self.chunk_frames, self.overlap, self.silence_db = chunk_frames, overlap, silence_db
        self.style = (model.style if style is None else style).float()[None]  # (1, 12)
        self.generator = torch.Generator().manual_seed(seed)
        self.noise = model.noise(1, total_frames, self.generator) if total_frames else None  # (1, T, Z) as offline
        self.samples = np.zeros(0, np.float32)
        self.ended = False
        self.next_frame = 0
        self.state: Optional[torch.Tensor] = None

    @property
    def look_ahead(self) -> float:
        """Seconds of audio a frame waits for after its own time."""
        context = context_frames(self.model.params.context_seconds) * HOP_SECONDS
        return (self.chunk_frames + self.overlap) / self.fps + context + WINDOW_SECONDS

    def push(self, samples: np.ndarray) -> Iterator[FrameMotion]:
        """Add mono float32 samples at 16 kHz; yields the frames whose motion is now known."""
        self.samples = np.concatenate([self.samples, np.asarray(samples, np.float32)])
        return self._ready()

    def end(self) -> Iterator[FrameMotion]:
        """No more audio: yields the remaining frames."""
        self.ended = True
        if self.total_frames is None:
            from dagan.audio.features import num_video_frames

            self.total_frames = num_video_frames(len(self.samples) / SAMPLE_RATE, self.fps)
        return self._ready()

    def _final_mel_frames(self) -> int:
        """Log-mel frames of the received audio that equal the whole clip's (their STFT window is covered)."""
        hop = round(HOP_SECONDS * SAMPLE_RATE)
        half_fft = (1 << (round(WINDOW_SECONDS * SAMPLE_RATE) - 1).bit_length()) // 2
        return max(0, (len(self.samples) - half_fft) // hop + 1)

    def _ready(self) -> Iterator[FrameMotion]:
        while self.total_frames is None or self.next_frame < self.total_frames:
            start = self.next_frame
            stop = start + self.chunk_frames
            if self.total_frames is not None:
                stop = min(self.total_frames, stop)
            last = stop + self.overlap if self.total_frames is None else min(self.total_frames, stop + self.overlap)
            times = frame_times(last, self.fps)
            needed = int(round(times[-1] / HOP_SECONDS)) + context_frames(self.model.params.context_seconds) + 1
            if not self.ended and needed > self._final_mel_frames():
                return
            yield from self._chunk(times, start, stop)
            self.next_frame = stop

    def _chunk(self, times: np.ndarray, start: int, stop: int) -> Iterator[FrameMotion]:
        mel = log_mel(Audio(self.samples, SAMPLE_RATE), self.model.params.num_mels)
        local, pose, self.state = self.model.predict_chunk(mel, times, start, stop, self.overlap, self.style,
                                                           self._noise(start, stop), self.state)
        silent = np.zeros(stop - start, bool)
        if self.silence_db is not None:
            audio = Audio(self.samples, SAMPLE_RATE)
            silent = frame_energy_db(audio, times[start:stop], 1.0 / self.fps) < self.silence_db
        for offset, index in enumerate(range(start, stop)):
            frame_local = torch.zeros_like(local[offset]) if silent[offset] else local[offset]
            yield FrameMotion(index, pose[offset], frame_local, bool(silent[offset]))

    def _noise(self, start: int, stop: int) -> torch.Tensor:
        """The pose noise of frames start:stop (1, n, Z): the offline draw when the length is known."""
        if self.noise is None or stop > self.noise.shape[1]:
            more = self.model.noise(1, NOISE_BLOCK, self.generator)
            self.noise = more if self.noise is None else torch.cat([self.noise, more], dim=1)
        return self.noise[:, start:stop]
