"""Speech in: any file ffmpeg decodes (wav, mp3, m4a, flac, or a video's audio track) -> 16 kHz mono float32.

Long speech is streamed: :func:`open_audio` decodes once to count the samples and check they are finite (keeping
none of them), and :meth:`AudioSource.blocks` decodes again, block by block, for the features and the model; memory
depends on the block size, not on the length. :func:`load_audio` keeps the whole signal (short clips: training
items, lip-sync scores).

The decoded signal is placed on the file's own timeline: an audio stream that starts 200 ms after the video
gets 200 ms of leading silence (ffmpeg's ``aresample=async=1:first_pts=0`` pads up to the stream's first
timestamp), so sample ``n`` is heard at time ``n / sample_rate`` of the video and frame ``t`` of a 25 fps video
lines up with samples around ``t / 25 * sample_rate``.
"""
from __future__ import annotations

import io
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np

from dagan.io.files import atomic_write_bytes
from dagan.io.images import MediaError, PathLike
from dagan.io.video import (_existing_file, _ffmpeg_url, _input_section, _read_log, _reason, _stop_process,
                            ffmpeg_executable, has_audio_stream)

SAMPLE_RATE = 16000
AUDIO_HINT = "give a wav/mp3/m4a/flac file, or a video with an audio track"
BLOCK_SECONDS = 8.0  # decoded at a time: memory of the streamed speech path


class Audio(NamedTuple):
    """samples: (N,) float32 mono in [-1, 1] on the file's timeline (leading silence for a late stream);
    sample_rate: samples per second."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


    def blocks(self, block_samples: int = int(BLOCK_SECONDS * SAMPLE_RATE)) -> Iterator[np.ndarray]:
        """The samples in consecutive (<= block_samples,) pieces (the same interface as :class:`AudioSource`)."""
        for start in range(0, len(self.samples), block_samples):
            yield self.samples[start:start + block_samples]

    @property
    def num_samples(self) -> int:
        return len(self.samples)


class AudioSource(NamedTuple):
    """Speech decoded on demand: ``path``, its length ``num_samples`` at ``sample_rate`` (from :func:`open_audio`,
    which also checked every sample is finite). :meth:`blocks` streams the samples again."""

    path: Path
    num_samples: int
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def blocks(self, block_samples: int = int(BLOCK_SECONDS * SAMPLE_RATE)) -> Iterator[np.ndarray]:
        """The decoded samples, (<= block_samples,) float32 each, exactly ``num_samples`` of them in all."""
        remaining = self.num_samples
        for block in decoded_blocks(self.path, self.sample_rate, block_samples):
            yield block[:remaining]
            remaining -= len(block[:remaining])
        if remaining > 0:  # a decoder that gives fewer samples the second time: silence, never a shorter video
            yield np.zeros(remaining, np.float32)


def decoded_blocks(path: Path, sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
    """Decode the first audio stream of ``path`` (mono, ``sample_rate``, on the file's timeline) and yield it in
    (<= block_samples,) float32 blocks in [-1, 1]. MediaError (one line, the file's name only: no folders in a web
    page) for a decoder failure or a sample that is NaN or infinite."""
    command = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", _ffmpeg_url(path),
               "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate),
               "-af", "aresample=async=1:first_pts=0", "-f", "f32le", "pipe:1"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            while True:
                data = process.stdout.read(4 * block_samples)
                if not data:
                    break
                samples = np.frombuffer(data[:len(data) // 4 * 4], dtype=np.float32)
                if not np.isfinite(samples).all():
                    raise MediaError(f"the audio of '{path.name}' holds NaN or infinite samples (a broken float "
                                     "recording); export it again from its source, or give another file")
                yield np.clip(samples, -1.0, 1.0)
            if process.wait() != 0:
                text = _read_log(log)
                raise MediaError(f"audio of '{path.name}' could not be decoded ({_reason(_input_section(text) or text)})"
                                 f"; {AUDIO_HINT}")
        finally:
            _stop_process(process)


def open_audio(path: PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: Optional[float] = None) -> AudioSource:
    """Check ``path`` is speech this project can use, before any work, keeping none of its samples: it exists,
    has an audio stream that decodes, is not empty, every sample is finite, and (``max_seconds``) it is not longer
    than that. MediaError (one line) otherwise."""
    path = _existing_file(Path(path), "audio file")
    if not has_audio_stream(path):
        raise MediaError(f"'{path}' has no audio stream; {AUDIO_HINT}")
    num_samples = 0
    for block in decoded_blocks(path, sample_rate, int(BLOCK_SECONDS * sample_rate)):
        num_samples += len(block)
        if max_seconds is not None and num_samples > max_seconds * sample_rate:
            raise MediaError(f"the speech '{path.name}' lasts more than {max_seconds / 60:g} min, the longest "
                             "accepted here (the app's --max_speech_minutes); cut it into parts")
    if num_samples == 0:
        raise MediaError(f"the audio stream of '{path}' is empty; {AUDIO_HINT}")
    return AudioSource(path, num_samples, sample_rate)


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> Audio:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate``, stream start offset honoured,
    all in memory (short clips; stream long speech with :func:`open_audio`).

    Raises MediaError (one line) for a missing or unreadable file, a file without an audio stream, or samples that
    are NaN or infinite.
    """
    path = _existing_file(Path(path), "audio file")
    if not has_audio_stream(path):
        raise MediaError(f"'{path}' has no audio stream; {AUDIO_HINT}")
    blocks = list(decoded_blocks(path, sample_rate, int(BLOCK_SECONDS * sample_rate)))
    samples = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise MediaError(f"the audio stream of '{path}' is empty; {AUDIO_HINT}")
    return Audio(samples, sample_rate)


def write_wav(path: PathLike, audio: Audio) -> None:
    """Write 16-bit PCM mono WAV (for muxing generated or cut speech); the file appears atomically."""
    pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(audio.sample_rate)
        handle.writeframes(pcm.tobytes())
    atomic_write_bytes(path, buffer.getvalue())
