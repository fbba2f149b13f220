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
    """A tiny DaGAN checkpoint (5 keypoints), audio models for 5 and 10 keypoints, a portrait and 0.4 s of 'speech'."""
    root = tmp_path_factory.mktemp("audio_demo")
    config = load_config(config_path("tiny.yaml"), ["audio_params.num_mels=24", "audio_params.audio_channels=16",
                                                    "audio_params.hidden_channels=16",
                                                    "audio_params.pose_hidden_channels=8"])
    torch.manual_seed(0)
    DaGAN(config).save(root / "dagan.pt")
    AudioDrivenModel(config, 5).save(root / "audio5.pt")
    AudioDrivenModel(config, 10).save(root / "audio10.pt")
    time = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    syllables = 0.5 * np.sin(2 * np.pi * 220 * time) * (np.sin(2 * np.pi * 4 * time) > 0)  # 4 Hz bursts
    write_wav(root / "speech.wav", Audio(syllables.astype(np.float32), SAMPLE_RATE))
    from skimage import data

    from dagan.io import write_png

    write_png(root / "portrait.png", data.astronaut()[::8, ::8][:64, :64])
    return root


def demo(files, *arguments: str, source: str = "portrait.png", crop: str = "none") -> int:
    """demo.py on the tiny model; the 64-pixel portrait is the model's input as it is (``--crop none``)."""
    from dagan.cli.demo import main

    return main(["--checkpoint", str(files / "dagan.pt"), "--source_image", str(files / source), "--cpu",
                 "--crop", crop, *arguments])


def test_demo_from_speech_writes_duration_times_fps_frames_with_the_speech(files, tmp_path):
    result = tmp_path / "talking.mp4"
    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--result_video", str(result), "--save_motion", str(tmp_path / "motion.npz"))
    assert code == 0
    info = probe(result)
    assert info.num_frames == num_video_frames(0.4, 25.0) == 10 and info.has_audio and info.fps == 25.0
    with np.load(tmp_path / "motion.npz", allow_pickle=False) as motion:
        assert motion["keypoints"].shape == (10, 5, 2) and motion["pose"].shape == (10, 6)
        assert np.abs(motion["pose"]).max() > 0  # the learned (here: untrained) pose generator moves
    from dagan.motion import load_motion

    saved = load_motion(tmp_path / "motion.npz", num_kp=5)  # the common motion file, playable with --driving_motion
    assert saved.driver == "speech" and saved.fps == 25.0 and saved.anchor.value.shape == (1, 5, 2)


def test_speech_demo_on_openvino_gives_the_torch_frames(files, tmp_path):
    """demo.py in its own process, as users run it (OpenVINO's runtime then never shares this test process)."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed: pip install -e \".[onnx,openvino]\"")
    from PIL import Image

    from conftest import REPO_ROOT

    environment = {**os.environ, "DAGAN_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO_ROOT)}
    for backend in ("openvino", "torch"):
        completed = subprocess.run(
            [sys.executable, str(REPO_ROOT / "demo.py"), "--checkpoint", str(files / "dagan.pt"), "--source_image",
             str(files / "portrait.png"), "--cpu", "--crop", "none", "--driving_audio", str(files / "speech.wav"),
             "--audio_checkpoint",
             str(files / "audio5.pt"), "--seed", "0", "--backend", backend, "--result_video", f"{tmp_path / backend}/"],
            env=environment, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-2000:]
    names = sorted(name for name in (tmp_path / "torch").iterdir() if name.suffix == ".png")
    assert len(names) == 10
    for name in names:
        frames = [np.asarray(Image.open(tmp_path / backend / name.name), dtype=int) for backend in ("openvino", "torch")]
        assert np.abs(frames[0] - frames[1]).max() <= 1


def test_still_pose_at_30_fps(files, tmp_path):
    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--pose", "still", "--fps", "30", "--result_video", str(tmp_path / "frames") + "/", "--save_motion",
                str(tmp_path / "motion.npz"))
    assert code == 0 and len(list((tmp_path / "frames").glob("*.png"))) == num_video_frames(0.4, 30.0) == 12
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


@pytest.fixture(scope="module")
def photo(files):
    """The whole 512x512 astronaut photo (the face is a part of it), or a skip without a face backend."""
    from skimage import data

    from dagan.faces import MissingFaceBackend, get_face_analyzer
    from dagan.io import write_png

    try:
        get_face_analyzer("auto")
    except (MissingFaceBackend, ImportError):
        pytest.skip("no face backend: pip install -e . brings dlib on Linux x86_64 and Windows")
    write_png(files / "photo.png", data.astronaut())
    return data.astronaut()


def test_speech_on_an_uncropped_photo_pastes_the_face_back_at_the_photos_size(files, photo, tmp_path, capsys):
    """As video mode: the face is cropped for the model, animated, pasted back; outside the crop's footprint every
    pixel is the photo's own."""
    from PIL import Image

    from dagan.cli.pipeline import load_pipeline
    from dagan.faces.animation import FaceSession
    from dagan.faces.paste import footprint

    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--result_video", str(tmp_path / "frames") + "/", source="photo.png", crop="auto")
    assert code == 0, capsys.readouterr().err
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 10
    session = FaceSession(load_pipeline_for(files, load_pipeline))
    (face,) = session.picture_faces(photo, "photo")
    x0, y0, x1, y1 = footprint(face.transform, photo.shape[:2])
    assert (x1 - x0) * (y1 - y0) < photo.shape[0] * photo.shape[1] / 2  # a face crop, not the whole picture
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    for path in frames:
        frame = np.asarray(Image.open(path))
        assert frame.shape == photo.shape
        assert np.array_equal(frame[outside], photo[outside])
        assert np.abs(frame[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).max() > 10  # the face was redrawn


def test_speech_shrinks_to_max_size_and_names_flags_that_do_not_apply(files, photo, tmp_path, capsys):
    from PIL import Image

    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--relative", "--smooth", "--max_size", "256", "--result_video", str(tmp_path / "frames") + "/",
                source="photo.png", crop="auto")
    error = capsys.readouterr().err
    assert code == 0, error
    assert "the result is 256x256 (--max_size 256" in error
    assert "--relative, --smooth only apply with --driving_video" in error
    assert Image.open(tmp_path / "frames" / "000000.png").size == (256, 256)
    code = demo(files, "--driving_audio", str(files / "speech.wav"), "--audio_checkpoint", str(files / "audio5.pt"),
                "--driving_video", str(files / "speech.wav"), "--result_video", str(tmp_path / "out.mp4"))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and error.startswith("error: ") and "drop --driving_video" in error


def load_pipeline_for(files, load_pipeline):
    """The tiny pipeline as demo.py loads it (torch, CPU)."""
    from dagan.cli.demo import build_parser

    return load_pipeline(build_parser().parse_args(["--checkpoint", str(files / "dagan.pt"), "--cpu", "--backend",
                                                    "torch"]))


def test_long_audio_runs_in_windows_with_the_same_lips(files):
    model = AudioDrivenModel.load(files / "audio5.pt")
    time = np.arange(int(6.0 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = Audio((0.3 * np.sin(2 * np.pi * 300 * time) * (np.sin(2 * np.pi * 3 * time) > 0)).astype(np.float32),
                  SAMPLE_RATE)
    mel, times = log_mel(audio, 24), frame_times(150, 25.0)
    whole = model.predict(mel, times, chunk_frames=1000)
    windowed = model.predict(mel, times, chunk_frames=40)
    assert windowed.local.shape == whole.local.shape == (150, 30) and windowed.pose.shape == (150, 6)
    assert torch.allclose(windowed.local, whole.local, atol=1e-3)  # the bidirectional context beyond 50 frames has faded


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

    from dagan.app import Animator, AppSettings  # (test_app.py builds the page, audio mode included)
    from dagan.app.speech_tab import SpeechRequest, speak

    import shutil
    root = tmp_path / "server"  # the app only uses the checkpoints it lists (checkpoints/ under its root)
    (root / "checkpoints").mkdir(parents=True)
    for name in ("audio5.pt", "audio10.pt"):
        shutil.copyfile(files / name, root / "checkpoints" / name)
    settings = AppSettings(checkpoint=str(files / "dagan.pt"), device="cpu", work_dir=str(tmp_path / "work"),
                           search_root=str(root))
    animator = Animator(settings)
    request = SpeechRequest(str(files / "portrait.png"), str(files / "speech.wav"), str(files / "dagan.pt"),
                            "checkpoints/audio5.pt", "cpu", fps=25.0, crop="none")
    video, status = speak(animator, request)
    assert probe(video).num_frames == num_video_frames(0.4, 25.0) and probe(video).has_audio and "Done" in status
    request.audio_checkpoint = "checkpoints/audio10.pt"
    with pytest.raises(gr.Error, match="built for 10 keypoints"):
        speak(animator, request)
    request.audio_checkpoint = "checkpoints/audio5.pt"
    upload = tmp_path / "uploads" / "a1b2c3"  # where the server keeps an upload: never shown to the browser
    upload.mkdir(parents=True)
    samples = np.full(16000, 0.1, "<f4")
    samples[100] = np.nan
    samples.tofile(upload / "speech.raw")
    from conftest import ffmpeg

    ffmpeg("-f", "f32le", "-ar", "16000", "-ac", "1", "-i", str(upload / "speech.raw"), "-c:a", "pcm_f32le",
           str(upload / "speech.wav"))
    request.speech = str(upload / "speech.wav")
    with pytest.raises(gr.Error) as caught:
        speak(animator, request)
    assert "NaN or infinite" in str(caught.value) and str(tmp_path) not in str(caught.value)
    animator.settings.max_speech_minutes = 0.1 / 60  # 0.1 s: the 0.4 s speech is too long
    request.speech = str(files / "speech.wav")
    with pytest.raises(gr.Error, match="lasts more than .* --max_speech_minutes"):
        speak(animator, request)


def test_app_audio_mode_takes_a_photo_as_the_video_mode_does(files, photo, tmp_path):
    """The page's face crop applies to speech too: an uncropped photo comes back whole, at its own size."""
    import shutil

    from dagan.app import Animator, AppSettings
    from dagan.app.speech_tab import SpeechRequest, speak

    root = tmp_path / "server"
    (root / "checkpoints").mkdir(parents=True)
    shutil.copyfile(files / "audio5.pt", root / "checkpoints" / "audio5.pt")
    animator = Animator(AppSettings(checkpoint=str(files / "dagan.pt"), device="cpu", work_dir=str(tmp_path / "work"),
                                    search_root=str(root)))
    video, _ = speak(animator, SpeechRequest(str(files / "photo.png"), str(files / "speech.wav"),
                                             str(files / "dagan.pt"), "checkpoints/audio5.pt", "cpu"))
    assert probe(video).size == (512, 512) and probe(video).num_frames == 10


@pytest.fixture(scope="module")
def speaking_video(files, tmp_path_factory):
    """A 0.6 s test-pattern video whose audio track is the 'speech' repeated (for the script round trips)."""
    from conftest import ffmpeg

    path = tmp_path_factory.mktemp("speaking") / "target.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=64x64:r=25:d=0.6", "-stream_loop", "2", "-i", str(files / "speech.wav"),
           "-map", "0:v", "-map", "1:a", "-t", "0.6", "-c:v", "libx264", "-c:a", "aac", "-pix_fmt", "yuv420p", str(path))
    return path


def test_prepare_av_writes_safe_items_and_resumes(files, speaking_video, tmp_path, capsys):
    from conftest import load_script
    from dagan.audio.data import load_item

    script = load_script("prepare_av")
    arguments = ["--inp", str(speaking_video), "--out", str(tmp_path / "items"), "--checkpoint", str(files / "dagan.pt"),
                 "--num_mels", "24", "--tolerance", "10", "--device", "cpu", "--no_progress"]
    assert script.main(arguments) == 0
    item = load_item(tmp_path / "items" / "target.npz")
    assert item.keypoints.shape == (15, 5, 2) and item.mel.shape[1] == 24 and item.fps == 25.0
    assert script.main(arguments) == 0 and "0 items written, 1 already there" in capsys.readouterr().err
    assert script.main(["--inp", str(tmp_path / "missing.mp4"), *arguments[2:]]) == 1


def test_personalize_script_writes_a_model_and_refuses_to_overwrite(files, speaking_video, tmp_path, capsys):
    from conftest import load_script

    script = load_script("personalize")
    output = tmp_path / "target_audio.pt"
    arguments = ["--video", str(speaking_video), "--checkpoint", str(files / "dagan.pt"), "--output", str(output),
                 "--init", str(files / "audio5.pt"), "--steps", "3", "--device", "cpu"]
    assert script.main(arguments) == 0
    model = AudioDrivenModel.load(output)
    assert model.num_kp == 5 and model.reference_pose is not None and len(model.reference_pose) == 15
    assert script.main(arguments) == 1 and "pass --overwrite" in capsys.readouterr().err
    assert script.main([*arguments, "--init", str(files / "audio10.pt"), "--overwrite"]) == 1
    assert "built for 10 keypoints" in capsys.readouterr().err


def test_personalize_never_hands_back_the_model_of_another_clip(files, speaking_video, tmp_path, capsys):
    """A finished run for one clip is not resumed for another (its model used to come back byte for byte)."""
    from conftest import ffmpeg, load_script

    other = tmp_path / "other.mp4"
    ffmpeg("-f", "lavfi", "-i", "mandelbrot=s=64x64:r=25", "-stream_loop", "2", "-i", str(files / "speech.wav"),
           "-map", "0:v", "-map", "1:a", "-t", "0.6", "-c:v", "libx264", "-c:a", "aac", "-pix_fmt", "yuv420p", str(other))
    script, output = load_script("personalize"), tmp_path / "target_audio.pt"
    common = ["--checkpoint", str(files / "dagan.pt"), "--output", str(output), "--init", str(files / "audio5.pt"),
              "--steps", "2", "--device", "cpu"]
    assert script.main(["--video", str(speaking_video), *common]) == 0
    first = output.read_bytes()
    output.rename(tmp_path / "first.pt")
    assert script.main(["--video", str(other), *common]) == 1
    assert "holds a run for other inputs (clip differ)" in capsys.readouterr().err
    assert script.main(["--video", str(other), *common, "--overwrite"]) == 0
    assert output.read_bytes() != first and any(path.name.startswith("target_audio_run.old-")
                                                for path in tmp_path.iterdir())


def test_lip_sync_measures(tmp_path):
    from dagan.eval.lipsync import lip_sync_scan, lse_scores, mouth_opening, pose_ratios

    landmarks = np.zeros((68, 2))
    landmarks[48], landmarks[54] = (0, 0), (10, 0)
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        landmarks[upper], landmarks[lower] = (5, -1), (5, 2)
    assert mouth_opening(landmarks) == pytest.approx(0.3)
    time = np.arange(int(4 * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = (np.sin(2 * np.pi * 1.3 * time) > 0.3).astype(np.float32)
    audio = Audio(0.5 * envelope * np.sin(2 * np.pi * 200 * time).astype(np.float32), SAMPLE_RATE)
    frames = frame_times(100, 25.0)
    mouth = np.interp(frames - 3 / 25.0, time, envelope)  # the mouth trails the audio by 3 frames
    scan = lip_sync_scan(mouth, audio, 25.0)
    assert max(scan, key=scan.get) == 3
    track = np.random.default_rng(0).normal(size=(50, 3))
    ratios = pose_ratios(2 * track, track)
    assert np.allclose(ratios.std, 2) and np.allclose(ratios.velocity_std, 2)
    with pytest.raises(ValueError, match="SyncNet"):
        lse_scores("result.mp4", None)


def test_offset_check_finds_a_shifted_audio_track():
    from dagan.data.synthetic import talking

    if not talking.available():
        pytest.skip("text-to-speech needs espeak-ng: apt-get install espeak-ng (or pip install espeakng-loader)")
    from dagan.audio.prepare import check_offset
    from dagan.geometry import Keypoints

    clip = talking.identity_clip(talking.IDENTITIES[3], talking.SENTENCES[:2], 25.0, 10)
    keypoints = Keypoints(torch.from_numpy(clip.keypoints), torch.from_numpy(clip.jacobians))
    synced = check_offset(keypoints, clip.audio, 25.0)
    assert synced.is_synced() and synced.correlation > 0.5
    late = Audio(np.concatenate([np.zeros(int(0.24 * SAMPLE_RATE), np.float32), clip.audio.samples]), SAMPLE_RATE)
    offset = check_offset(keypoints, late, 25.0)  # the audio now trails the mouth by 6 frames
    assert abs(offset.lag_frames - (synced.lag_frames - 6)) <= 1 and not offset.is_synced()


def test_demo_without_any_driving_input_says_what_to_give(files, tmp_path, capsys):
    assert demo(files, "--result_video", str(tmp_path / "out.mp4")) == 1
    assert "--driving_audio and --audio_checkpoint" in capsys.readouterr().err
