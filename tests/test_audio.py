"""dagan.audio: decoding with stream offsets, log-mel features, time-indexed windows, silence, motion split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import ffmpeg, make_test_clip
from dagan.audio import Audio, SAMPLE_RATE, feature_windows, frame_times, load_audio, log_mel, num_video_frames, \
    silence_flags, write_wav
from dagan.audio.features import LOG_FLOOR, MEL_RATE, mel_filterbank
from dagan.audio.motion import compose_motion, fit_pose, split_motion
from dagan.geometry import Keypoints
from dagan.io import MediaError


def tone(seconds: float, frequency: float = 1000.0, start: float = 0.0, total: float | None = None) -> Audio:
    """A sine burst of ``seconds`` starting at ``start`` inside ``total`` seconds of silence."""
    total = total or start + seconds
    samples = np.zeros(int(round(total * SAMPLE_RATE)), np.float32)
    time = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    first = int(round(start * SAMPLE_RATE))
    samples[first:first + len(time)] = 0.5 * np.sin(2 * math.pi * frequency * time)
    return Audio(samples, SAMPLE_RATE)


def test_mel_filterbank_covers_the_spectrum_once():
    filters = mel_filterbank(40, 512, SAMPLE_RATE)
    assert filters.shape == (40, 257) and (filters >= 0).all()
    peaks = filters.argmax(1)
    assert (peaks.diff() >= 0).all() and peaks[-1] > 200  # increasing centres up to near Nyquist


def test_log_mel_puts_a_tone_in_its_band_and_silence_on_the_floor():
    mel = log_mel(tone(0.5, 1000.0, start=0.5, total=1.0), num_mels=40)
    assert mel.shape == (101, 40)
    assert torch.allclose(mel[:40], torch.full_like(mel[:40], math.log(LOG_FLOOR)), atol=1e-3)  # leading silence
    band = int(mel[60:90].mean(0).argmax())
    centres = mel_filterbank(40, 512, SAMPLE_RATE).argmax(1) * SAMPLE_RATE / 512
    assert abs(float(centres[band]) - 1000.0) < 150.0


@pytest.mark.parametrize("fps", [24000 / 1001, 25.0, 30.0])
def test_feature_windows_are_indexed_by_time(fps):
    mel = torch.arange(300, dtype=torch.float32)[:, None].repeat(1, 3)  # value = mel frame index
    times = frame_times(50, fps)
    windows = feature_windows(mel, times, context_seconds=0.2)
    assert windows.shape == (50, 41, 3)
    assert torch.equal(windows[:, 20, 0], torch.from_numpy(np.round(times * MEL_RATE)).float())  # centre = t * 100
    assert torch.equal(windows[10, :, 0], windows[10, 20, 0] + torch.arange(-20, 21).float())
    assert (windows[0, :20 - 0, 0][:20] == math.log(LOG_FLOOR)).sum() == 20  # before the start: silence


def test_num_video_frames_is_duration_times_fps():
    assert num_video_frames(2.0, 25.0) == 50 and num_video_frames(2.0, 30.0) == 60
    assert num_video_frames(1.001, 24000 / 1001) == 24


def test_silence_flags_find_the_quiet_part():
    audio = tone(1.0, start=1.0, total=2.0)
    flags = silence_flags(audio, frame_times(50, 25.0), 25.0)
    assert flags[:24].all() and not flags[26:49].any()


def test_load_audio_honours_a_late_stream_start(tmp_path):
    speech = tone(0.3, 700.0, start=0.1, total=1.0)
    write_wav(tmp_path / "speech.wav", speech)
    decoded = load_audio(tmp_path / "speech.wav")
    assert decoded.sample_rate == SAMPLE_RATE and abs(decoded.duration - 1.0) < 0.01
    video = tmp_path / "late.mp4"  # the audio track starts 200 ms after the video
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=32x32:r=25:d=1.4", "-itsoffset", "0.2", "-i",
           str(tmp_path / "speech.wav"), "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac",
           "-pix_fmt", "yuv420p", str(video))
    late = load_audio(video)
    onset = np.argmax(np.abs(late.samples) > 0.1) / SAMPLE_RATE
    assert abs(onset - 0.3) < 0.005  # 0.1 s into the speech + 0.2 s stream offset
    flags = silence_flags(late, frame_times(35, 25.0), 25.0)
    assert flags[:7].all() and not flags[8:12].any()  # speech starts at frame 7.5 of the video


def test_load_audio_errors_are_one_line(tmp_path):
    with pytest.raises(MediaError, match="does not exist") as missing:
        load_audio(tmp_path / "nothing.wav")
    silent_video = make_test_clip(tmp_path / "silent.mp4", seconds=0.5)
    with pytest.raises(MediaError, match="no audio stream") as no_audio:
        load_audio(silent_video)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(MediaError) as junk:
        load_audio(tmp_path / "junk.wav")
    for error in (missing, no_audio, junk):
        assert "\n" not in str(error.value)


def random_keypoints(frames: int = 6, num_kp: int = 5, seed: int = 0) -> Keypoints:
    generator = torch.Generator().manual_seed(seed)
    value = torch.rand(frames, num_kp, 2, generator=generator) * 1.6 - 0.8
    jacobian = torch.eye(2) + 0.2 * torch.randn(frames, num_kp, 2, 2, generator=generator)
    return Keypoints(value, jacobian)


@pytest.mark.parametrize("pose_model", ["affine", "similarity"])
def test_split_then_compose_is_the_identity(pose_model):
    keypoints = random_keypoints()
    reference = keypoints.index(slice(2, 3))
    split = split_motion(keypoints, reference, pose_model)
    assert split.pose.shape == (6, 6) and split.local.shape == (6, 30)
    assert split.pose[2].abs().max() < 1e-5 and split.local[2].abs().max() < 1e-5  # the reference: no motion
    back = compose_motion(reference, split.pose, split.local)
    assert torch.allclose(back.value, keypoints.value, atol=1e-5)
    assert torch.allclose(back.jacobian, keypoints.jacobian, atol=1e-5)


def test_a_rigid_motion_is_all_pose_and_no_local_motion():
    reference = random_keypoints(1)
    angle = torch.tensor(0.3)
    rotation = 1.2 * torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    moved = Keypoints(reference.value @ rotation.T + torch.tensor([0.1, -0.2]), rotation @ reference.jacobian)
    for pose_model in ("affine", "similarity"):
        matrix, offset = fit_pose(reference.value[0], moved.value, pose_model)
        assert torch.allclose(matrix[0], rotation, atol=1e-5) and torch.allclose(offset[0], torch.tensor([0.1, -0.2]),
                                                                                atol=1e-5)
        assert split_motion(moved, reference, pose_model).local.abs().max() < 1e-4


def test_audio_networks_shapes_and_noise():
    from dagan.networks.audio_motion import AudioMotionNetwork
    from dagan.networks.head_pose import HeadPoseGenerator, smooth_noise

    windows = torch.randn(2, 7, 41, 24)
    output = AudioMotionNetwork(24, 41, 30, audio_channels=16, hidden_channels=8)(windows)
    assert output.local.shape == (2, 7, 30) and output.audio.shape == (2, 7, 16)
    pose, state = HeadPoseGenerator(16, hidden_channels=8, noise_channels=4).run(output.audio, torch.zeros(2, 12),
                                                                                  torch.randn(2, 7, 4))
    assert pose.shape == (2, 7, 6) and state.shape == (2, 2, 8)
    noise = smooth_noise(torch.randn(1, 4000, 4, generator=torch.Generator().manual_seed(0)))[:, 200:]
    assert torch.allclose(noise.std(1), torch.ones(1, 4), atol=0.25)  # unit variance, slow channels too
    lag_one = (noise[:, 1:] * noise[:, :-1]).mean(1) / noise.var(1)
    assert lag_one[0, 0] < lag_one[0, -1] and abs(float(lag_one[0, -1]) - 0.98) < 0.03  # AR(1) memory per channel


def test_audio_config_validation_names_the_field():
    from dagan.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="audio_params.context_seconds"):
        load_config(None, ["audio_params.context_seconds=0.1"])
    with pytest.raises(ConfigError, match="audio_params.pose_model"):
        load_config(None, ["audio_params.pose_model=projective"])
    with pytest.raises(ConfigError, match="audio_train_params.validation_fraction"):
        load_config(None, ["audio_train_params.validation_fraction=1.5"])
    assert load_config(None, ["train_params.stage=personalize"]).train_params.stage == "personalize"
