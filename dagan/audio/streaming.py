"""Speech motion as the audio arrives (a microphone, or a file played in real time): the audio model run in
streaming mode, with a bounded look-ahead.

:class:`StreamingMotion` takes audio samples as they come (``push``) and hands out the motion (head pose and local
motion, :class:`~dagan.audio.model.AudioMotion` rows) of each video frame as soon as the audio it depends on is
there. It runs :meth:`~dagan.audio.model.AudioDrivenModel.predict_chunk`, the same step as the offline
``predict``, on chunks of ``chunk_frames`` video frames with ``overlap`` frames of context on each side for the
bidirectional local network, so a frame waits for ``chunk_frames + overlap`` frames of audio after it, plus the
mel window's context (``audio_params.context_seconds``) and half an STFT window: :attr:`StreamingMotion.look_ahead`
seconds (0.83 s at 25 fps with the defaults 5 + 10 frames and 0.2 s of context). The head pose is generated online
(the pose generator's state carries from chunk to chunk) with the personalised style.

Where the windows coincide with the offline ones (the same ``chunk_frames`` and ``overlap``, and the clip's length
known, as for a file), the motion equals ``predict``'s on the whole clip: the log-mel frames used are only those
whose STFT window the received audio covers, which are the whole clip's. Silent frames (below ``silence_db``
dBFS over one frame period) get no local motion: the mouth stays at the reference (closed) and still.

A session may last hours: only the audio that later chunks can still read is kept (from the mel window of the
next chunk's first context frame, ``overlap`` frames back, less half an STFT window; about 1.4 s with the
defaults), with its absolute sample offset, and each chunk computes the log-mel of its own window only, from a
start on the hop grid with half an STFT window of margin, so its rows are the whole clip's rows. Memory and time
per chunk do not grow with the session.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from dagan.audio.decode import SAMPLE_RATE, Audio
from dagan.audio.features import (HOP_SECONDS, MEL_RATE, WINDOW_SECONDS, MelRows, context_frames, log_mel,
                                  num_video_frames, stft_sizes)
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

    Memory and work per chunk do not grow with the session: ``samples`` keeps only the audio that later chunks can
    still read (samples ``offset`` to ``received`` of the whole), and each chunk computes the log-mel of its own
    window only.
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
        self.noise_first = 0  # the frame of self.noise[:, 0]
        self.samples = np.zeros(0, np.float32)  # the retained audio: samples [offset, received) of the whole
        self.offset = 0
        self.ended = False
        self.next_frame = 0
        self.state: Optional[torch.Tensor] = None

    @property
    def look_ahead(self) -> float:
        """Seconds of audio a frame waits for after its own time."""
        context = context_frames(self.model.params.context_seconds) * HOP_SECONDS
        return (self.chunk_frames + self.overlap) / self.fps + context + WINDOW_SECONDS

    @property
    def received(self) -> int:
        """Samples pushed so far."""
        return self.offset + len(self.samples)

    def push(self, samples: np.ndarray) -> Iterator[FrameMotion]:
        """Add mono float32 samples at 16 kHz; yields the frames whose motion is now known."""
        self.samples = np.concatenate([self.samples, np.asarray(samples, np.float32)])
        return self._ready()

    def end(self) -> Iterator[FrameMotion]:
        """No more audio: yields the remaining frames."""
        self.ended = True
        if self.total_frames is None:
            self.total_frames = num_video_frames(self.received / SAMPLE_RATE, self.fps)
        return self._ready()

    def _final_mel_frames(self) -> int:
        """Log-mel frames of the received audio that equal the whole clip's (their STFT window is covered)."""
        hop, _, num_fft = stft_sizes(SAMPLE_RATE)
        return max(0, (self.received - num_fft // 2) // hop + 1)

    def _ready(self) -> Iterator[FrameMotion]:
        context = context_frames(self.model.params.context_seconds)
        while self.total_frames is None or self.next_frame < self.total_frames:
            start = self.next_frame
            stop = start + self.chunk_frames
            if self.total_frames is not None:
                stop = min(self.total_frames, stop)
            last = stop + self.overlap if self.total_frames is None else min(self.total_frames, stop + self.overlap)
            needed = int(round((last - 1) / self.fps / HOP_SECONDS)) + context + 1
            if not self.ended and needed > self._final_mel_frames():
                return
            yield from self._chunk(start, stop, last)
            self.next_frame = stop
            self._forget()

    def _chunk(self, start: int, stop: int, last: int) -> Iterator[FrameMotion]:
        """Frames start:stop, the local network seeing frames first:last (``overlap`` on each side)."""
        first = max(0, start - self.overlap)
        times = np.arange(first, last, dtype=np.float64) / self.fps  # frame_times(last)[first:]
        with torch.no_grad():
            local, pose, self.state = self.model.chunk_step(self._mel_rows(times), times, start - first,
                                                            stop - first, self.overlap, self.style,
                                                            self._noise(start, stop), self.state)
        silent = np.zeros(stop - start, bool)
        if self.silence_db is not None:
            silent = self._energy_db(times[start - first:stop - first]) < self.silence_db
        for offset, index in enumerate(range(start, stop)):
            frame_local = torch.zeros_like(local[offset]) if silent[offset] else local[offset]
            yield FrameMotion(index, pose[offset], frame_local, bool(silent[offset]))

    def _row_span(self, times: np.ndarray) -> tuple[int, int]:
        """The log-mel rows [first, last) that the feature windows of frames at ``times`` (increasing) read."""
        context = context_frames(self.model.params.context_seconds)
        centres = np.round(np.asarray(times) * MEL_RATE).astype(np.int64)
        return max(0, int(centres[0]) - context), int(centres[-1]) + context + 1

    @staticmethod
    def _window_start(first_row: int) -> int:
        """The first sample (a multiple of the hop) of a slice whose log-mel rows from ``first_row`` on equal the
        whole signal's: row n covers samples [n hop - F/2, n hop + F/2), and the slice's own zero padding is left
        of its start."""
        hop, _, num_fft = stft_sizes(SAMPLE_RATE)
        return max(0, (first_row * hop - num_fft // 2) // hop * hop)

    def _mel_rows(self, times: np.ndarray) -> MelRows:
        """The log-mel rows the frames at ``times`` read, computed on the retained samples they cover only."""
        hop, _, num_fft = stft_sizes(SAMPLE_RATE)
        first_row, last_row = self._row_span(times)
        begin = self._window_start(first_row)
        end = min(self.received, (last_row - 1) * hop + num_fft // 2)  # the last row's window ends there
        mel = log_mel(Audio(self.samples[begin - self.offset:end - self.offset], SAMPLE_RATE),
                      self.model.params.num_mels)  # row k is row begin / hop + k of the whole
        rows = MelRows.of(mel[first_row - begin // hop:])
        rows.first = first_row
        return rows

    def _energy_db(self, times: np.ndarray) -> np.ndarray:
        """:func:`~dagan.audio.features.frame_energy_db` of the whole audio over one frame period, from the
        retained samples: (T,) dB at ``times``."""
        half = self._energy_half_window
        centres = np.round(np.asarray(times) * SAMPLE_RATE).astype(np.int64)
        begin = np.clip(centres - half, 0, self.received) - self.offset
        end = np.clip(centres + half, 0, self.received) - self.offset
        origin = int(begin.min())
        squared = np.concatenate([[0.0], np.cumsum(self.samples[origin:int(end.max())].astype(np.float64) ** 2)])
        mean = (squared[end - origin] - squared[begin - origin]) / (2 * half)
        return 10.0 * np.log10(mean + 1e-12)

    @property
    def _energy_half_window(self) -> int:
        """Samples on each side of a frame's time in its silence energy (one frame period in all)."""
        return max(1, int(round(1.0 / self.fps * SAMPLE_RATE / 2)))

    def _forget(self) -> None:
        """Drop the samples no later chunk reads: those before the mel windows of frame ``next_frame - overlap``
        and the energy window of frame ``next_frame``."""
        first_row, _ = self._row_span(np.array([max(0, self.next_frame - self.overlap) / self.fps]))
        energy_start = int(np.round(self.next_frame / self.fps * SAMPLE_RATE)) - self._energy_half_window
        keep = min(self._window_start(first_row), max(0, energy_start), self.received)
        if keep > self.offset:
            self.samples, self.offset = self.samples[keep - self.offset:], keep

    def _noise(self, start: int, stop: int) -> torch.Tensor:
        """The pose noise of frames start:stop (1, n, Z): the offline draw when the length is known, else drawn a
        block at a time, the frames already used dropped."""
        if self.noise is None or stop > self.noise_first + self.noise.shape[1]:
            more = self.model.noise(1, NOISE_BLOCK, self.generator)
            if self.noise is None:
                self.noise = more
            else:
                self.noise = torch.cat([self.noise[:, start - self.noise_first:], more], dim=1)
                self.noise_first = start
        return self.noise[:, start - self.noise_first:stop - self.noise_first]
