"""Log-mel features in torch, windows of them indexed by video time, and silence flags.

Features run at ``MEL_RATE`` = 100 frames per second (hop 10 ms, window 25 ms). A video frame ``t`` at ``fps``
is shown at time ``t / fps``; its feature window is the ``2 C + 1`` mel frames centred on that time (C mel
frames = ``context_seconds`` on each side), so any output rate (23.976, 25, 30 fps) reads the same audio.
Outside the signal the window sees silence (the log floor).

:func:`mfcc` computes the cepstra SyncNet reads (python_speech_features' defaults, as the ``syncnet_python``
release calls it): its own framing (uncentred 25 ms frames every 10 ms), so it shares only the mel scale with
:func:`log_mel`.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator, Optional

import numpy as np
import scipy.fft
import torch

from dagan.audio.decode import SAMPLE_RATE, Audio

HOP_SECONDS = 0.010
WINDOW_SECONDS = 0.025
MEL_RATE = 1.0 / HOP_SECONDS  # mel frames per second
LOG_FLOOR = 1e-5  # added to mel energies before the log: the value silence gets
SILENCE_DB = -40.0  # frames this far below the loudest 95th-percentile frame are silent


def hz_to_mel(frequency: np.ndarray) -> np.ndarray:
    """HTK mel scale: m = 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(frequency, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(num_mels: int, num_fft: int, sample_rate: int, max_frequency: Optional[float] = None) -> torch.Tensor:
    """Triangular filters (num_mels, num_fft // 2 + 1) equally spaced on the mel scale from 0 Hz to max_frequency
    (default: Nyquist), each normalised to unit area (Slaney normalisation)."""
    top = sample_rate / 2 if max_frequency is None else max_frequency
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(top), num_mels + 2))  # (M + 2,) Hz
    bins = np.linspace(0.0, sample_rate / 2, num_fft // 2 + 1)  # (F,) Hz
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    filters = np.clip(np.minimum(rising, falling), 0.0, None) * (2.0 / (upper - lower))  # (M, F)
    return torch.from_numpy(filters.astype(np.float32))


def log_mel(audio: Audio, num_mels: int = 80) -> torch.Tensor:
    """Log-mel spectrogram (num_frames, num_mels) float32 at MEL_RATE; frame n is centred at n * HOP_SECONDS.

    Power STFT (Hann window of WINDOW_SECONDS, centred frames, zero padding), mel filters, log(energy + floor).
    All frames at once; :func:`log_mel_stream` gives the same rows block by block.
    """
    return torch.cat(list(log_mel_stream(audio, num_mels)))


def stft_sizes(sample_rate: int) -> tuple[int, int, int]:
    """(hop, window length, FFT size) in samples: 160, 400, 512 at 16 kHz."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"log_mel expects {SAMPLE_RATE} Hz audio (load_audio's default), got {sample_rate}")
    window_length = round(WINDOW_SECONDS * sample_rate)
    return round(HOP_SECONDS * sample_rate), window_length, 1 << (window_length - 1).bit_length()  # 400 -> 512


def log_mel_stream(audio, num_mels: int = 80) -> Iterator[torch.Tensor]:
    """The rows of :func:`log_mel` in order, (n, num_mels) float32 per block of ``audio.blocks()`` (an
    :class:`~dagan.audio.decode.Audio` or a streamed :class:`~dagan.audio.decode.AudioSource`): memory depends on
    the block size, not on the length. Frame n covers samples [n hop - F/2, n hop + F/2) of the signal padded with
    F/2 zeros on each side (torch.stft's ``center=True``), so the rows equal the whole-signal ones."""
    hop, window_length, num_fft = stft_sizes(audio.sample_rate)
    half = num_fft // 2
    total_frames = audio.num_samples // hop + 1
    filters, window = mel_filterbank(num_mels, num_fft, audio.sample_rate), torch.hann_window(window_length)
    pending = np.zeros(half, np.float32)  # samples from (next frame x hop - F/2) on: the left padding first
    done = 0

    def frames(samples: np.ndarray, count: int) -> torch.Tensor:
        segment = torch.from_numpy(np.ascontiguousarray(samples[:(count - 1) * hop + num_fft]))
        spectrum = torch.stft(segment, num_fft, hop_length=hop, win_length=window_length, window=window,
                              center=False, return_complex=True)  # (F, count)
        return torch.log(filters @ spectrum.abs().pow(2) + LOG_FLOOR).T.contiguous()  # (count, M)

    for block in itertools.chain(audio.blocks(), [np.zeros(half, np.float32)]):  # then the right padding
        pending = np.concatenate([pending, np.asarray(block, np.float32)])
        count = min(total_frames - done, (len(pending) - num_fft) // hop + 1 if len(pending) >= num_fft else 0)
        if count > 0:
            yield frames(pending, count)
            done, pending = done + count, pending[count * hop:]
    if done < total_frames:  # the last frames reach into the right padding
        pending = np.concatenate([pending, np.zeros((total_frames - done - 1) * hop + num_fft, np.float32)])
        yield frames(pending, total_frames - done)


def bin_mel_filterbank(num_filters: int, num_fft: int, sample_rate: int) -> np.ndarray:
    """Triangular mel filters (num_filters, num_fft // 2 + 1) float64 on whole FFT bins, peak 1, unnormalised: the
    python_speech_features filterbank. The edges, equally spaced on the HTK mel scale from 0 Hz to Nyquist, are
    rounded down to bins ``floor((num_fft + 1) f / sample_rate)``; filter j rises from edge j to edge j + 1 and
    falls to edge j + 2 (a filter whose edges share a bin is empty on that side)."""
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), num_filters + 2))  # (M + 2,) Hz
    edge_bins = np.floor((num_fft + 1) * edges / sample_rate)
    lower, centre, upper = edge_bins[:-2, None], edge_bins[1:-1, None], edge_bins[2:, None]  # (M, 1) each
    bins = np.arange(num_fft // 2 + 1, dtype=np.float64)[None]  # (1, F)
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((bins >= lower) & (bins < centre), (bins - lower) / (centre - lower), 0.0)
        falling = np.where((bins >= centre) & (bins < upper), (upper - bins) / (upper - centre), 0.0)
    return rising + falling


def mfcc(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, num_coefficients: int = 13, num_filters: int = 26,
         num_fft: int = 512, preemphasis: float = 0.97, lifter: int = 22) -> np.ndarray:
    """MFCCs (num_frames, num_coefficients) float64 of ``samples`` (N,), in python_speech_features' way (its
    ``mfcc`` defaults):

    1. pre-emphasis ``y[n] = x[n] - 0.97 x[n - 1]`` (``y[0] = x[0]``);
    2. frames of 25 ms every 10 ms starting at sample 0 (frame n covers ``[160 n, 160 n + 400)`` at 16 kHz), no
       window, the last one zero-padded: ``1 + ceil((N - 400) / 160)`` frames (1 if N <= 400);
    3. power spectrum ``|rfft(frame, 512)|^2 / 512``, the 26 filters of :func:`bin_mel_filterbank`, log (zeros
       become float eps first), orthonormal DCT-II, the first 13 coefficients;
    4. cepstral lifter ``c_k (1 + 11 sin(pi k / 22))``, and c0 replaced by the log of the frame's total power.

    The values depend on the signal's scale (c0 and the energy): SyncNet was trained on 16-bit PCM values, see
    ``dagan.eval.lipsync``.
    """
    signal = np.asarray(samples, dtype=np.float64)
    signal = np.append(signal[:1], signal[1:] - preemphasis * signal[:-1])
    frame_length, frame_step = round(WINDOW_SECONDS * sample_rate), round(HOP_SECONDS * sample_rate)
    num_frames = 1 if len(signal) <= frame_length else 1 + math.ceil((len(signal) - frame_length) / frame_step)
    signal = np.pad(signal, (0, (num_frames - 1) * frame_step + frame_length - len(signal)))
    starts = np.arange(num_frames)[:, None] * frame_step  # (T, 1)
    frames = signal[starts + np.arange(frame_length)[None]]  # (T, frame_length)
    power = np.abs(np.fft.rfft(frames, num_fft)) ** 2 / num_fft  # (T, F)
    energy = power.sum(axis=1)
    floor = np.finfo(np.float64).eps
    filtered = power @ bin_mel_filterbank(num_filters, num_fft, sample_rate).T  # (T, M)
    cepstra = scipy.fft.dct(np.log(np.where(filtered == 0, floor, filtered)), type=2, axis=1, norm="ortho")
    cepstra = cepstra[:, :num_coefficients] * (1 + lifter / 2 * np.sin(np.pi * np.arange(num_coefficients) / lifter))
    cepstra[:, 0] = np.log(np.where(energy == 0, floor, energy))
    return cepstra


def frame_times(num_frames: int, fps: float) -> np.ndarray:
    """Display times (num_frames,) in seconds of video frames 0..num_frames-1."""
    return np.arange(num_frames, dtype=np.float64) / fps


def num_video_frames(duration: float, fps: float) -> int:
    """Frames a video of ``duration`` seconds has at ``fps``: round(duration x fps), at least 1."""
    return max(1, int(round(duration * fps)))


def context_frames(context_seconds: float) -> int:
    """Mel frames on each side of a window centre for ``context_seconds`` of context."""
    return int(math.ceil(context_seconds * MEL_RATE - 1e-9))


def feature_windows(mel: torch.Tensor, times: np.ndarray, context_seconds: float, first_row: int = 0) -> torch.Tensor:
    """Mel windows (T, 2 C + 1, num_mels) centred at ``times`` (T,) seconds; C = context_frames(context_seconds).

    mel: (num_mel_frames, num_mels) from :func:`log_mel`, or rows of it from ``first_row`` on (a
    :class:`MelRows` block). Positions outside ``mel`` read silence.
    """
    context = context_frames(context_seconds)
    centres = np.round(np.asarray(times) * MEL_RATE).astype(np.int64) - first_row  # (T,)
    index = torch.from_numpy(centres[:, None] + np.arange(-context, context + 1)[None])  # (T, W)
    padded = torch.cat([mel, torch.full((1, mel.shape[1]), math.log(LOG_FLOOR), dtype=mel.dtype)])  # last = silence
    index = torch.where((index >= 0) & (index < mel.shape[0]), index, torch.full_like(index, mel.shape[0]))
    return padded[index]  # (T, W, num_mels)


class MelRows:
    """Log-mel rows of a stream (:func:`log_mel_stream`) read in increasing windows: :meth:`rows` keeps only the
    rows from the oldest one still asked for, so memory depends on the window, not on the length."""

    def __init__(self, stream: Iterator[torch.Tensor], num_mels: int):
        self.stream, self.num_mels = stream, num_mels
        self.kept = torch.zeros(0, num_mels)  # rows [self.first, self.first + len(self.kept))
        self.first = 0

    @classmethod
    def of(cls, mel: torch.Tensor) -> "MelRows":
        """All rows of a whole clip's log-mel (N, M)."""
        return cls(iter([mel]), mel.shape[1])

    def rows(self, first: int, last: int) -> torch.Tensor:
        """Rows [first, last) (last - first, M); rows past the end of the signal read silence. ``first`` never
        decreases from call to call (older rows are dropped)."""
        first = max(first, 0)
        while self.first + len(self.kept) < last:
            block = next(self.stream, None)
            if block is None:
                break
            self.kept = torch.cat([self.kept, block])
        self.kept, self.first = self.kept[first - self.first:], first
        rows = self.kept[:max(0, last - first)]
        silence = torch.full((max(0, last - first) - len(rows), self.num_mels), math.log(LOG_FLOOR))
        return torch.cat([rows, silence])


def frame_energy_db(audio: Audio, times: np.ndarray, window_seconds: float) -> np.ndarray:
    """RMS energy in dB (T,) of the audio in a window of ``window_seconds`` centred at each time."""
    half = max(1, int(round(window_seconds * audio.sample_rate / 2)))
    squared = np.concatenate([[0.0], np.cumsum(audio.samples.astype(np.float64) ** 2)])
    centres = np.round(np.asarray(times) * audio.sample_rate).astype(np.int64)
    start = np.clip(centres - half, 0, len(audio.samples))
    stop = np.clip(centres + half, 0, len(audio.samples))
    mean = (squared[stop] - squared[start]) / (2 * half)
    return 10.0 * np.log10(mean + 1e-12)


def silence_flags(audio: Audio, times: np.ndarray, fps: float, threshold_db: float = SILENCE_DB,
                  use_vad: bool = False) -> np.ndarray:
    """True (T,) where the frame at each time is silent: its energy over one frame period is ``threshold_db``
    below the loud end of the clip (95th percentile), or below -60 dBFS. ``use_vad`` uses silero-vad instead
    (``pip install silero-vad``)."""
    if use_vad:
        return _silero_silence(audio, times)
    energy = frame_energy_db(audio, times, 1.0 / fps)
    loud = np.percentile(energy, 95) if energy.size else 0.0
    return (energy < loud + threshold_db) | (energy < -60.0)


def _silero_silence(audio: Audio, times: np.ndarray) -> np.ndarray:
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
    except ImportError:
        raise ImportError("silence detection with a VAD needs silero-vad: pip install silero-vad") from None
    speech = get_speech_timestamps(torch.from_numpy(audio.samples), load_silero_vad(),
                                   sampling_rate=audio.sample_rate, return_seconds=True)
    silent = np.ones(len(times), dtype=bool)
    for segment in speech:
        silent &= ~((times >= segment["start"]) & (times <= segment["end"]))
    return silent
