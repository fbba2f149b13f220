"""Speech in: any file ffmpeg decodes (wav, mp3, m4a, flac, or a video's audio track) -> 16 kHz mono float32.

The decoded signal is placed on the file's own timeline: an audio stream that starts 200 ms after the video
gets 200 ms of leading silence (ffmpeg's ``aresample=async=1:first_pts=0`` pads up to the stream's first
timestamp), so sample ``n`` is heard at time ``n / sample_rate`` of the video and frame ``t`` of a 25 fps video
lines up with samples around ``t / 25 * sample_rate``.
"""
from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dagan.io.files import atomic_write_bytes
from dagan.io.images import MediaError, PathLike
from dagan.io.video import _existing_file, _ffmpeg_url, _input_section, _reason, ffmpeg_executable, has_audio_stream

SAMPLE_RATE = 16000
AUDIO_HINT = "give a wav/mp3/m4a/flac file, or a video with an audio track"


class Audio(NamedTuple):
    """samples: (N,) float32 mono in [-1, 1] on the file's timeline (leading silence for a late stream);
    sample_rate: samples per second."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> Audio:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate``, stream start offset honoured.

    Raises MediaError (one line) for a missing or unreadable file, or a file without an audio stream.
    """
    path = _existing_file(Path(path), "audio file")
    if not has_audio_stream(path):
        raise MediaError(f"'{path}' has no audio stream; {AUDIO_HINT}")
    command = [ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", _ffmpeg_url(path),
               "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(sample_rate),
               "-af", "aresample=async=1:first_pts=0", "-f", "f32le", "pipe:1"]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if result.returncode != 0:
        log = result.stderr.decode("utf-8", "replace")
        raise MediaError(f"audio of '{path}' could not be decoded ({_reason(_input_section(log) or log)}); "
                         f"{AUDIO_HINT}")
    samples = np.frombuffer(result.stdout, dtype=np.float32).copy()
    if samples.size == 0:
        raise MediaError(f"the audio stream of '{path}' is empty; {AUDIO_HINT}")
    return Audio(np.clip(samples, -1.0, 1.0), sample_rate)


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
