"""Long speech in flat memory: decoding, log-mel features, the audio model and the composed driving keypoints are
streamed, so the peak resident memory of a process driving 30 minutes of speech is that of 1 minute (measured in
a fresh subprocess each, as demo.py runs). The frames DaGAN renders from those keypoints are generated batch by
batch already (tests/test_audio_demo.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, config_path, ffmpeg

LIMIT_MB = 100  # allowed growth of the peak RSS from 1 to 30 minutes of speech
DRIVE = """
import json, resource, sys
import torch
from dagan.audio.animate import Reference, audio_driving_chunks
from dagan.audio.decode import open_audio
from dagan.audio.model import AudioDrivenModel
from dagan.config import load_config
from dagan.geometry import Keypoints

config = load_config(sys.argv[2], ["audio_params.num_mels=24", "audio_params.audio_channels=16",
                                   "audio_params.hidden_channels=16", "audio_params.pose_hidden_channels=8"])
torch.manual_seed(0)
model = AudioDrivenModel(config, 5).eval()
reference = Reference(Keypoints(torch.zeros(1, 5, 2), torch.eye(2).expand(1, 5, 2, 2)), None)
frames = 0
for chunk in audio_driving_chunks(model, open_audio(sys.argv[1]), 5.0, reference):
    frames += len(chunk.pose)
print(json.dumps({"frames": frames, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def speech(path, minutes: float):
    """``minutes`` of a 220 Hz tone in bursts (16 kHz mono PCM), made by ffmpeg's sine source."""
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=16000:duration={minutes * 60}", "-af",
           "volume='if(lt(mod(t,0.5),0.25),1,0)':eval=frame", "-ac", "1", "-c:a", "pcm_s16le", str(path))
    return path


def drive(path) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, "-c", DRIVE, str(path), config_path("tiny.yaml")], env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux")
def test_thirty_minutes_of_speech_need_the_memory_of_one(tmp_path):
    short, long = drive(speech(tmp_path / "short.wav", 1)), drive(speech(tmp_path / "long.wav", 30))
    assert short["frames"] == 300 and long["frames"] == 9000
    assert long["peak_mb"] - short["peak_mb"] < LIMIT_MB, (short, long)


def test_streamed_features_equal_the_whole_clip_ones(tmp_path):
    from dagan.audio.decode import Audio, load_audio, open_audio
    from dagan.audio.features import log_mel, log_mel_stream

    path = speech(tmp_path / "speech.wav", 0.3)
    whole = load_audio(path)
    source = open_audio(path)
    assert source.num_samples == len(whole.samples) == 0.3 * 60 * 16000
    streamed = torch_cat(log_mel_stream(source, 24))
    assert np.allclose(streamed, log_mel(whole, 24), atol=1e-5)
    noise = Audio(np.random.default_rng(0).uniform(-1, 1, 16000 * 9 + 77).astype(np.float32), 16000)
    reference = np.log(_reference_mel(noise.samples, 24) + 1e-5)
    assert np.allclose(torch_cat(log_mel_stream(noise, 24)), reference, atol=1e-4)


def torch_cat(rows):
    import torch

    return torch.cat(list(rows)).numpy()


def _reference_mel(samples: np.ndarray, num_mels: int) -> np.ndarray:
    """The whole signal's mel energies in one centred STFT (the definition the stream must match)."""
    import torch

    from dagan.audio.features import mel_filterbank

    spectrum = torch.stft(torch.from_numpy(samples), 512, hop_length=160, win_length=400,
                          window=torch.hann_window(400), center=True, pad_mode="constant", return_complex=True)
    power = spectrum.abs().pow(2)[:, :len(samples) // 160 + 1]
    return (mel_filterbank(num_mels, 512, 16000) @ power).T.numpy()
