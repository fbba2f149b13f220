"""demo.py --driving_audio end to end (tiny DaGAN, untrained audio model: the mechanics, not the quality), the
audio model's checkpoint and windowed inference, the offset check, prepare_av and its one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import config_path, make_test_clip
from dagan.audio import Audio, SAMPLE_RATE, frame_times, log_mel, num_video_frames, write_wav
from dagan.audio.model import AudioDrivenModel
from dagan.config import load_config
from dagan.io import probe
from dagan.model import DaGAN


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny DaGAN checkpoint (5 keypoints), audio models for 5 and 10 keypoints, a portrait and 0.8 s of 'speech'."""
    root = tmp_path_factory.mktemp("audio_demo")
    config = load_config(config_path("tiny.yaml"), ["audio_params.num_mels=24", "audio_params.audio_channels=16",
                                                    "audio_params.hidden_channels=16",
                                                    "audio_params.pose_hidden_channels=8"])
    torch.manual_seed(0)
    DaGAN(config).save(root / "dagan.pt")
    AudioDrivenModel(config, 5).save(root / "audio5.pt")
    AudioDrivenModel(config, 10).save(root / "audio10.pt")
    time = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    syllables = 0.5 * np.sin(2 * np.pi * 220 * time) * (np.sin(2 * np.pi * 4 * time) > 0)  # 4 Hz bursts
    write_wav(root / "speech.wav", Audio(syllables.astype(np.float32), SAMPLE_RATE))
    from skimage import data

    from dagan.io import write_png

    write_png(root / "portrait.png", data.astronaut()[::8, ::8][:64, :64])
    return root


def demo(files, *arguments: str) -> int:
    from dagan.cli.demo import main

    return main(["--checkpoint", str(files / "dagan.pt"), "--source_image", str(files / "portrait.png"),
                 "--cpu", *arguments])


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_demo_from_speech_writes_duration_times_fps_frames_with_the_speech(files, tmp_path, fps):
    result = tmp_path / "talking.mp4"
    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--fps", str(fps), "--result_video", str(result), "--save_motion", str(tmp_path / "motion.npz"))
    assert code == 0
    info = probe(result)
    assert info.num_frames == num_video_frames(0.8, fps) and info.has_audio and abs(info.fps - fps) < 1e-6
    with np.load(tmp_path / "motion.npz", allow_pickle=False) as motion:
        assert motion["keypoints"].shape == (num_video_frames(0.8, fps), 5, 2) and motion["pose"].shape[1] == 6


def test_still_pose_keeps_the_head_at_the_reference(files, tmp_path):
    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--pose", "still", "--result_video", str(tmp_path / "frames") + "/", "--save_motion",
                str(tmp_path / "motion.npz"))
    assert code == 0 and len(list((tmp_path / "frames").glob("*.png"))) == num_video_frames(0.8, 25.0)
    with np.load(tmp_path / "motion.npz", allow_pickle=False) as motion:
        assert np.all(motion["pose"] == 0)


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"), ("silent", "no audio stream"), ("keypoints", "built for 10 keypoints"),
    ("no_model", "needs --audio_checkpoint"), ("replay", "--pose replay needs --reference_video")])
def test_audio_demo_errors_are_one_line(files, tmp_path, capsys, case, expected):
    audio, model, extra = str(files / "speech.wav"), str(files / "audio5.pt"), []
    if case == "missing":
        audio = str(tmp_path / "nothing.wav")
    elif case == "silent":
        audio = str(make_test_clip(tmp_path / "silent.mp4", seconds=0.4))
    elif case == "keypoints":
        model = str(files / "audio10.pt")
    elif case == "replay":
        extra = ["--pose", "replay"]
    arguments = ["--driving_audio", audio, "--result_video", str(tmp_path / "out.mp4"), *extra]
    code = demo(files, *arguments, *([] if case == "no_model" else ["--audio_checkpoint", model]))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and expected in error and error.startswith("error: ")
    assert not (tmp_path / "out.mp4").exists()


def test_reference_clip_without_a_face_is_refused(files, tmp_path, capsys):
    from dagan.faces import MissingFaceBackend, get_face_analyzer

    try:
        get_face_analyzer("auto")
    except (MissingFaceBackend, ImportError):
        pytest.skip("no face backend: pip install 'dagan[faces]'")
    clip = make_test_clip(tmp_path / "pattern.mp4", seconds=0.4)
    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--reference_video", str(clip), "--result_video", str(tmp_path / "out.mp4"))
    assert code == 1 and "no face found in the reference clip" in capsys.readouterr().err


def test_long_audio_runs_in_windows_with_the_same_lips(files):
    model = AudioDrivenModel.load(files / "audio5.pt")
    time = np.arange(int(6.0 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = Audio((0.3 * np.sin(2 * np.pi * 300 * time) * (np.sin(2 * np.pi * 3 * time) > 0)).astype(np.float32),
                  SAMPLE_RATE)
    mel, times = log_mel(audio, 24), frame_times(150, 25.0)
    whole = model.predict(mel, times, chunk_frames=1000)
    windowed = model.predict(mel, times, chunk_frames=40)
    assert windowed.local.shape == whole.local.shape == (150, 30) and windowed.pose.shape == (150, 6)
    assert torch.allclose(windowed.local, whole.local, atol=1e-4)


def test_audio_checkpoint_round_trip_and_refusal(files, tmp_path):
    model = AudioDrivenModel.load(files / "audio5.pt")
    model.save(tmp_path / "copy.pt")
    again = AudioDrivenModel.load(tmp_path / "copy.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
    from dagan.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not an audio model"):
        AudioDrivenModel.load(files / "dagan.pt")


def test_app_audio_mode_animates_speech_and_reports_errors_in_one_line(files, tmp_path):
    import gradio as gr

    from dagan.app import Animator, AppSettings, build_app
    from dagan.audio.app_mode import SpeechRequest, speak

    settings = AppSettings(checkpoint=str(files / "dagan.pt"), device="cpu", work_dir=str(tmp_path),
                           search_root=str(files))
    animator = Animator(settings)
    build_app(settings, animator)  # the page builds with the audio mode
    request = SpeechRequest(str(files / "portrait.png"), str(files / "speech.wav"), str(files / "dagan.pt"),
                            str(files / "audio5.pt"), "cpu", fps=25.0)
    video, status = speak(animator, request)
    assert probe(video).num_frames == num_video_frames(0.8, 25.0) and probe(video).has_audio and "Done" in status
    request.audio_checkpoint = str(files / "audio10.pt")
    with pytest.raises(gr.Error, match="built for 10 keypoints"):
        speak(animator, request)
