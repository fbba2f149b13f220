"""The web app's live rooms: the camera and the microphone drive the portrait.

In process: the microphone's chunks become frames with their own audio (resampled to 16 kHz for the streaming
audio model, as ``scripts/live.py --driving_audio mic``), silence keeps the portrait's own mouth, each streamed
segment carries its frames and their audio, and paste-back keeps the portrait outside the face. In a real browser:
Debian's Chromium with a fake camera playing a clip (--use-file-for-fake-video-capture) or a fake microphone playing
espeak-ng speech (--use-file-for-fake-audio-capture), driven by Playwright; what comes back is the animated portrait
(and, for speech, its sound)."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NEEDS_FACES, REPO_ROOT, config_path, has_dlib

sys.path.insert(0, str(Path(__file__).parent))
from app_browser import CHROMIUM, CHROMIUM_ARGS, AppServer, browser_missing  # noqa: E402

SOURCE = REPO_ROOT / "data" / "samples" / "source.png"
DRIVING = REPO_ROOT / "data" / "samples" / "driving.mp4"
MIC_RATE = 48000  # what Chromium's microphone gives gradio
CHUNK = MIC_RATE // 10  # gradio's microphone chunks: 0.1 s


@pytest.fixture(scope="module")
def audio_checkpoint(tmp_path_factory) -> str:
    """A small untrained audio model for the tiny DaGAN (5 keypoints) whose head pose is held at zero (its pose
    std is 0), so that a silent frame is exactly the portrait at its own keypoints; its local motion is 3x larger
    than the untrained network's."""
    from dagan.audio.model import AudioDrivenModel, Normalization
    from dagan.config import load_config

    config = load_config(config_path("tiny.yaml"), ["audio_params.num_mels=24", "audio_params.audio_channels=16",
                                                    "audio_params.hidden_channels=16",
                                                    "audio_params.pose_hidden_channels=8"])
    torch.manual_seed(0)
    normalization = Normalization(torch.zeros(30), torch.full((30,), 3.0), torch.zeros(6), torch.zeros(6))
    path = tmp_path_factory.mktemp("audio_model") / "audio.pt"
    AudioDrivenModel(config, 5, normalization).save(path)
    return str(path)


def speech_like(seconds: float, rate: int = MIC_RATE) -> np.ndarray:
    """A voiced buzz with a syllable-rate envelope, mono float32."""
    time_ = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * harmonic * 130 * time_) / harmonic for harmonic in range(1, 8))
    return (0.2 * voice * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * time_))).astype(np.float32)


def microphone(samples: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """float samples as gradio's microphone chunks: (48000, int16 (4800,)) each."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    return [(MIC_RATE, pcm[begin:begin + CHUNK]) for begin in range(0, len(pcm), CHUNK)]


def workdir_with_models(root: Path, tiny_checkpoint: str, audio_checkpoint: str) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint, root / "checkpoints" / "tiny.pt")
    shutil.copyfile(audio_checkpoint, root / "checkpoints" / "audio.pt")
    return root


def outside_the_paste(paste, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: the pixels a PasteBack leaves as they are (outside its footprint, or where its mask is 0)."""
    outside = np.ones(shape[:2], bool)
    x0, y0, x1, y1 = paste.region
    outside[y0:y1, x0:x1] = paste.mask[..., 0] == 0
    return outside


# The microphone, in process.
@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_resampler_gives_resample_poly_a_piece_at_a_time(rate):
    from scipy.signal import resample_poly

    from dagan.app.live_speech_tab import StreamingResampler

    samples = np.random.default_rng(0).normal(size=2 * rate).astype(np.float32) * 0.1
    resampler = StreamingResampler(rate)
    pieces, begin = [], 0
    for size in np.random.default_rng(1).integers(1, rate // 5, size=1000):
        pieces.append(resampler.push(samples[begin:begin + size]))
        begin += size
        if begin >= len(samples):
            break
    pieces.append(resampler.end())
    divisor = np.gcd(16000, rate)
    whole = resample_poly(samples.astype(np.float64), 16000 // divisor, rate // divisor)
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-6)


def test_microphone_chunks_give_frames_with_their_audio_and_silence_keeps_the_portraits_mouth(tiny_checkpoint,
                                                                                             audio_checkpoint):
    """The stream handler's chunks (int16 at 48 kHz) come out as frames, in segments of 10 to 50, each frame with the
    audio of its own 40 ms; the motion is the streaming model's on the 16 kHz audio (as live.py's microphone); a
    silent frame has no local motion and, with no head pose, is the portrait as the offline pipeline renders it at
    its own keypoints."""
    from scipy.signal import resample_poly

    from dagan.app.live_speech_tab import (SpeechListener, SpeechVoice, SpeechWork, hear_chunk, mono_float,
                                           stop_listening)
    from dagan.audio.features import num_video_frames
    from dagan.audio.model import AudioDrivenModel
    from dagan.audio.streaming import StreamingMotion
    from dagan.inference import DaGANPipeline
    from dagan.io import read_image_uint8

    spoken, silent = 1.2, 1.6
    samples = np.concatenate([speech_like(spoken), np.zeros(int(silent * MIC_RATE), np.float32)])
    holder: dict = {}
    for chunk in microphone(samples):
        hear_chunk(chunk, holder)
    stop_listening(holder)

    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=1)
    model = AudioDrivenModel.load(audio_checkpoint)
    source = read_image_uint8(str(SOURCE))
    voice = SpeechVoice(pipeline, model, source)
    work = SpeechWork(SpeechListener(voice), holder["inbox"])
    work.start()
    segments = []
    while frames := work.take():
        segments.append(frames)
    assert all(10 <= len(segment) <= 50 for segment in segments[:-1]) and 0 < len(segments[-1]) <= 50
    frames = [frame for segment in segments for frame in segment]
    total = num_video_frames(len(samples) / MIC_RATE, 25.0)
    assert [frame.index for frame in frames] == list(range(total))
    assert all(len(frame.audio) == MIC_RATE // 25 for frame in frames)
    heard = mono_float(np.concatenate([samples for _, samples in microphone(samples)]))
    np.testing.assert_array_equal(np.concatenate([frame.audio for frame in frames])[:len(heard)], heard)

    resampled = resample_poly(heard.astype(np.float64), 1, 3).astype(np.float32)
    expected, motions = StreamingMotion(model, 25.0), []  # the clip resampled whole, pushed 0.1 s at a time
    for begin in range(0, len(resampled), 1600):
        motions += expected.push(resampled[begin:begin + 1600])
    motions += expected.end()
    torch.testing.assert_close(torch.stack([frame.motion.local for frame in frames]),
                               torch.stack([motion.local for motion in motions]), rtol=0, atol=1e-5)

    still = next(iter(pipeline.animate(source, [source]))).frame  # the portrait at its own keypoints
    quiet = [frame for frame in frames if frame.index / 25.0 >= spoken + 0.05]
    speaking = [frame for frame in frames if frame.index / 25.0 < spoken - 0.05]
    assert quiet and all(frame.motion.silent and float(frame.motion.local.abs().max()) == 0.0 for frame in quiet)
    for frame in quiet:
        assert np.abs(frame.image.astype(int) - still.astype(int)).max() <= 1
    assert speaking and not any(frame.motion.silent for frame in speaking)
    assert all(float(frame.motion.local.abs().max()) > 0 for frame in speaking)
    assert work.shown == total and work.spoken == sum(not frame.motion.silent for frame in frames)


def test_each_streamed_segment_carries_its_frames_and_their_audio(tmp_path, tiny_checkpoint, audio_checkpoint):
    """The page's work for one recording (speak_live, without the browser): it says what it waits for, then yields
    MP4 segments whose audio (the microphone's) lasts exactly as long as their frames, then "Stopped"."""
    from dagan.app import AppSettings, Animator
    from dagan.app.live_speech_tab import hear_chunk, speak_live, stop_listening
    from dagan.audio.decode import load_audio
    from dagan.audio.features import num_video_frames
    from dagan.io import probe

    workdir_with_models(tmp_path, tiny_checkpoint, audio_checkpoint)
    app = Animator(AppSettings(checkpoint=str(tmp_path / "checkpoints" / "tiny.pt"), search_root=str(tmp_path),
                               work_dir=str(tmp_path / "work"), device="cpu"))
    holder: dict = {}
    work = speak_live(app, holder, str(SOURCE), "checkpoints/tiny.pt", "cpu", "checkpoints/audio.pt", False)
    video, status = next(work)
    assert video is not None and "Listening" in status  # video: gr.skip(), nothing to stream yet
    samples = np.concatenate([speech_like(1.0), np.zeros(MIC_RATE, np.float32)])
    for chunk in microphone(samples):
        hear_chunk(chunk, holder)
    stop_listening(holder)
    shown = 0
    for video, status in work:
        if isinstance(video, str):
            info = probe(video)
            assert info.has_audio and info.size == (64, 64) and info.fps == 25.0
            audio = load_audio(video)
            assert abs(audio.duration - info.num_frames / 25.0) < 0.025  # one AAC frame at most
            shown += info.num_frames
    assert shown == num_video_frames(2.0, 25.0) and status.startswith("Stopped: 2.0 s shown")


@pytest.mark.skipif(not has_dlib(), reason=NEEDS_FACES)
def test_paste_back_gives_the_whole_portrait_unchanged_outside_the_face(tmp_path, tiny_checkpoint, audio_checkpoint):
    """Paste-back in both live rooms: the result has the portrait's size and is the portrait wherever the paste
    mask is 0 (the camera's frame through LiveAnimator as live.py --paste_back; speech through SpeechVoice)."""
    from skimage import data as skimage_data

    from dagan.app import AppSettings, Animator
    from dagan.app.live_speech_tab import SpeechVoice, portrait_face
    from dagan.app.live_tab import live_frame
    from dagan.audio.model import AudioDrivenModel
    from dagan.audio.streaming import FrameMotion
    from dagan.inference import DaGANPipeline
    from dagan.io import open_video, write_png

    portrait = skimage_data.astronaut()  # (512, 512, 3): the face is a part of the picture
    write_png(tmp_path / "astronaut.png", portrait)
    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=1)
    picture, face = portrait_face(types.SimpleNamespace(face_analyzer=None), pipeline, portrait, "astronaut.png")
    assert picture.shape == portrait.shape and not face.whole_picture
    voice = SpeechVoice(pipeline, AudioDrivenModel.load(audio_checkpoint), picture, face)
    frame = voice.render(FrameMotion(3, torch.full((6,), 0.05), torch.full((30,), 0.2), False))
    outside = outside_the_paste(voice.paste, portrait.shape)
    assert frame.shape == portrait.shape and 0.5 < outside.mean() < 0.99
    np.testing.assert_array_equal(frame[outside], portrait[outside])
    assert np.abs(frame[~outside].astype(int) - portrait[~outside]).mean() > 5  # the (untrained) face is in

    app = Animator(AppSettings(checkpoint=tiny_checkpoint, search_root=str(tmp_path), work_dir=str(tmp_path / "w"),
                               device="cpu"))
    camera = next(iter(open_video(DRIVING)))
    result, session = live_frame(app, camera, str(tmp_path / "astronaut.png"), tiny_checkpoint, "cpu", None,
                                 paste_back=True)
    outside = outside_the_paste(session.animator.paste, portrait.shape)
    assert result.shape == portrait.shape
    np.testing.assert_array_equal(result[outside], portrait[outside])
    crop, _ = live_frame(app, camera, str(tmp_path / "astronaut.png"), tiny_checkpoint, "cpu", session)
    assert crop.shape == (64, 64, 3)  # without paste-back: the model's square crop


def write_y4m(path: Path, frame: np.ndarray, count: int = 10) -> None:
    """A YUV4MPEG2 clip (what Chromium's fake camera plays) of ``frame`` (H, W, 3) uint8 repeated."""
    import cv2

    height, width = frame.shape[:2]
    planes = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes()
    with open(path, "wb") as stream:
        stream.write(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(count):
            stream.write(b"FRAME\n" + planes)


def returned_frames(page, count: int, timeout: float = 120.0) -> list[np.ndarray]:
    """The first ``count`` distinct frames the live output shows (decoded PNGs; gradio names a file by its content,
    so equal frames come back under one address)."""
    from PIL import Image, UnidentifiedImageError

    frames, seen, deadline = [], set(), time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        images = page.locator("#live-output img")
        source = images.first.get_attribute("src") if images.count() else None
        if source and source not in seen:
            with urllib.request.urlopen(source, timeout=10) as response:
                data = response.read()
            try:  # a file still being written is read again at the next look
                frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                seen.add(source)
            except UnidentifiedImageError:
                pass
        time.sleep(0.2)
    return frames


@pytest.mark.slow
def test_browser_camera_drives_the_portrait_live(tmp_path, tiny_checkpoint):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from dagan.inference import DaGANPipeline
    from dagan.io import open_video, read_image_uint8

    camera = next(iter(open_video(DRIVING)))
    write_y4m(tmp_path / "camera.y4m", camera)
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(tiny_checkpoint, tmp_path / "checkpoints" / "tiny.pt")
    server = AppServer(tmp_path, "--checkpoint", "checkpoints/tiny.pt", "--device", "cpu")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={tmp_path / 'camera.y4m'}"])
            page = browser.new_context(viewport={"width": 1280, "height": 1400}).new_page()
            page.goto(server.url)
            page.wait_for_selector("#animate-button")
            page.locator("#source-image input[type=file]").set_input_files(SOURCE)
            page.get_by_text("Live: your camera drives the portrait").click()
            page.get_by_text("Click to Access Webcam").click()
            page.locator("#live-camera").get_by_text("Record").click()
            frames = returned_frames(page, 1)
            browser.close()
        log = server.log_tail()
    finally:
        server.stop()
    assert frames, log
    # The camera shows one still face: every frame is at its anchor (zero relative motion), so each returned frame
    # is the portrait rendered at its own keypoints, as the offline pipeline renders it with the source as driver.
    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=1)
    source = read_image_uint8(str(SOURCE))
    offline = next(iter(pipeline.animate(source, [source]))).frame
    for frame in frames:
        assert frame.shape == offline.shape == (64, 64, 3)
        assert np.abs(frame.astype(int) - offline.astype(int)).max() <= 2


# The microphone, in the browser.
def speech_then_silence(path: Path, text: str = "the quick brown fox jumps over the lazy dog",
                        silence: float = 2.0) -> float:
    """espeak-ng saying ``text`` then ``silence`` seconds of silence, a 16 kHz WAV (Chromium's fake microphone
    plays it in a loop); returns the speech's length in seconds."""
    from dagan.audio.decode import Audio, write_wav
    from dagan.data.synthetic import talking

    speech = talking.synthesize(text).audio
    write_wav(path, Audio(np.concatenate([speech.samples, np.zeros(int(silence * speech.sample_rate), np.float32)]),
                          speech.sample_rate))
    return speech.duration


def decode_stream(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The frames (N, H, W, 3) uint8 and the audio (16 kHz mono float32) of a streamed MPEG-TS."""
    from dagan.io import ffmpeg_executable, probe

    width, height = probe(path).size
    command = [ffmpeg_executable(), "-v", "error", "-nostdin", "-i", str(path)]
    video = subprocess.run(command + ["-an", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24",
                                      "pipe:1"], capture_output=True, check=True).stdout
    audio = subprocess.run(command + ["-vn", "-ac", "1", "-ar", "16000", "-f", "f32le", "pipe:1"],
                           capture_output=True, check=True).stdout
    frames = np.frombuffer(video, np.uint8).reshape(-1, height, width, 3)
    return frames, np.frombuffer(audio, np.float32)


def streamed_video(playlist_url: str, path: Path, timeout: float = 30.0) -> Path:
    """The whole stream behind an HLS playlist (its segments in order) as one MPEG-TS file, once the playlist is
    complete (``#EXT-X-ENDLIST``): gradio encodes the stream's audio continuously and adds what its encoder still
    holds as a last segment after the stream ends, so a playlist read before that lacks the last ~0.5 s of sound."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(playlist_url, timeout=10) as response:
            playlist = response.read().decode()
        if "#EXT-X-ENDLIST" in playlist:
            break
        assert time.monotonic() < deadline, f"the stream's playlist did not end within {timeout:.0f} s:\n{playlist}"
        time.sleep(0.2)
    base = playlist_url.split("?")[0].rsplit("/", 1)[0]
    with open(path, "wb") as stream:
        for line in playlist.splitlines():
            if line and not line.startswith("#"):
                with urllib.request.urlopen(f"{base}/{line}", timeout=10) as response:
                    stream.write(response.read())
    return path


# The streamed video once Chromium has played a second of it with sound: its time and decoded bytes.
PLAYED_JS = """() => { const video = document.querySelector('#live-speech-output video');
  return video && video.currentTime > 1 && video.webkitAudioDecodedByteCount > 0 && {time: video.currentTime,
    audio: video.webkitAudioDecodedByteCount, picture: video.webkitVideoDecodedByteCount}; }"""


def wait_for_status(page, pattern: str, timeout: float, server: AppServer) -> re.Match:
    """The live speech status once it matches ``pattern`` (regular expression)."""
    deadline = time.monotonic() + timeout
    while True:
        status = page.locator("#live-speech-status").inner_text()
        match = re.search(pattern, status)
        if match or time.monotonic() > deadline:
            assert match, f"the status never matched {pattern!r}: {status!r}\n{server.log_tail()}"
            return match
        time.sleep(0.25)


@pytest.mark.slow
def test_browser_microphone_makes_the_portrait_speak_with_its_voice(tmp_path, tiny_checkpoint, audio_checkpoint):
    """Chromium's fake microphone plays espeak-ng speech and silence into the live speech room, with paste-back:
    the streamed video that comes back plays (Chromium decodes its picture and sound), shows the whole portrait
    with the face pasted back as the in-process path renders it, and carries the speech as its sound: loud where
    the speech was, silent where the silence was."""
    from dagan.app.live_speech_tab import streaming_tools_missing
    from dagan.data.synthetic import talking

    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    if not has_dlib():
        pytest.skip(NEEDS_FACES)
    if streaming_tools_missing():
        pytest.skip("gradio's streamed video needs FFmpeg's ffmpeg and ffprobe on PATH: apt-get install ffmpeg")
    if not talking.available():
        pytest.skip("text-to-speech needs espeak-ng: apt-get install espeak-ng (or pip install espeakng-loader)")
    from playwright.sync_api import sync_playwright
    from skimage import data as skimage_data

    from dagan.app.live_speech_tab import SpeechVoice, portrait_face
    from dagan.audio.model import AudioDrivenModel
    from dagan.inference import DaGANPipeline
    from dagan.io import write_png

    workdir_with_models(tmp_path, tiny_checkpoint, audio_checkpoint)
    portrait = skimage_data.astronaut()[:320, 48:368].copy()  # the face (80 pixels wide) is a part of it
    write_png(tmp_path / "portrait.png", portrait)
    speech_then_silence(tmp_path / "speech.wav")
    server = AppServer(tmp_path, "--checkpoint", "checkpoints/tiny.pt", "--device", "cpu")
    playlists: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                *CHROMIUM_ARGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={tmp_path / 'speech.wav'}"])
            page = browser.new_context(viewport={"width": 1280, "height": 1600}).new_page()
            page.on("response", lambda response: playlists.append(response.url)
                    if response.url.split("?")[0].endswith("/playlist.m3u8") else None)
            page.goto(server.url)
            page.wait_for_selector("#animate-button")
            page.locator("#source-image input[type=file]").set_input_files(tmp_path / "portrait.png")
            page.get_by_text("Live speech: your microphone drives the portrait").click()
            page.locator("#live-audio-model input").click()
            page.get_by_role("option", name="checkpoints/audio.pt").click()
            page.locator("#live-speech-paste-back input").check()
            page.locator("#live-microphone").get_by_text("Record").first.click()
            wait_for_status(page, r"(?:[4-9]|\d\d+)\.\d s shown", 90, server)  # a pass of speech and silence
            page.locator("#live-microphone").get_by_text("Stop").first.click()
            stopped = wait_for_status(page, r"Stopped: (\d+\.\d) s shown, speech heard in (\d+) frames", 60,
                                      server)
            played = page.wait_for_function(PLAYED_JS, timeout=30_000).json_value()  # the browser plays it
            assert playlists, server.log_tail()
            stream = streamed_video(playlists[-1], tmp_path / "stream.ts")  # while the page's session lasts
            browser.close()
        frames, audio = decode_stream(stream)
        log = server.log_tail()
    finally:
        server.stop()
    shown, spoken = float(stopped.group(1)), int(stopped.group(2))
    assert played["time"] > 1 and played["audio"] > 0 and played["picture"] > 0, played
    assert len(frames) == round(shown * 25) >= 100, log
    assert 0 < spoken < len(frames)  # the microphone gave speech and silence

    # The picture: the whole portrait with the (untrained, so nearly still) face pasted back, as the in-process
    # path renders it with no motion (H.264 and 4:2:0 colour keep it within a few levels).
    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=1)
    picture, face = portrait_face(types.SimpleNamespace(face_analyzer=None), pipeline, portrait, "portrait.png")
    voice = SpeechVoice(pipeline, AudioDrivenModel.load(audio_checkpoint), picture, face)
    still = voice.still()
    outside = outside_the_paste(voice.paste, portrait.shape)
    assert frames.shape[1:] == portrait.shape
    for frame in frames:
        assert np.abs(frame.astype(int) - still).mean() < 3.0
        assert np.abs(frame[outside].astype(int) - portrait[outside]).mean() < 3.0

    # The sound: the microphone's, frame by frame: loud in the speech, silent in the silence.
    assert abs(len(audio) / 16000 - shown) < 0.1
    window = 640  # 40 ms
    levels = 20 * np.log10(np.sqrt(np.mean(audio[:len(audio) // window * window].reshape(-1, window) ** 2,
                                            axis=1)) + 1e-9)
    assert levels.max() > -30 and levels.min() < -60, levels.round()
    assert 0.1 < np.mean(levels > -40) < 0.9
