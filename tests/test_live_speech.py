"""Streaming speech motion (dagan.audio.streaming): equal to the offline prediction where the windows coincide, a
bounded look-ahead, and silence keeping the mouth closed and still."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from dagan.audio.decode import SAMPLE_RATE, Audio
from dagan.audio.features import frame_energy_db, frame_times, log_mel, num_video_frames
from dagan.audio.model import AudioDrivenModel
from dagan.audio.streaming import NOISE_BLOCK, SILENCE_DBFS, StreamingMotion
from dagan.config import load_config

FPS = 25.0


@pytest.fixture(scope="module")
def audio_model() -> AudioDrivenModel:
    torch.manual_seed(0)
    model = AudioDrivenModel(load_config(None), num_kp=5).eval()
    model.style = torch.randn(12)
    return model


def speech_like(seconds: float, silent_from: float | None = None, silent_to: float | None = None) -> np.ndarray:
    """A voiced buzz with a syllable-rate envelope (mono float32, 16 kHz); zeros between silent_from and silent_to."""
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * time)
    voice = sum(np.sin(2 * np.pi * harmonic * np.cumsum(pitch) / SAMPLE_RATE) / harmonic for harmonic in range(1, 8))
    samples = 0.2 * voice * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * time))
    if silent_from is not None:
        samples[(time >= silent_from) & (time < silent_to)] = 0.0
    return samples.astype(np.float32)


def streamed(stream: StreamingMotion, samples: np.ndarray, piece_seconds: float = 0.02):
    """Push ``samples`` in pieces (as a microphone would), then end: every FrameMotion, and for each, how many
    samples had been pushed when it came out."""
    frames, pushed = [], 0
    piece = int(piece_seconds * SAMPLE_RATE)
    for begin in range(0, len(samples), piece):
        pushed = min(len(samples), begin + piece)
        frames += [(motion, pushed) for motion in stream.push(samples[begin:pushed])]
    frames += [(motion, len(samples)) for motion in stream.end()]
    return frames


@pytest.mark.parametrize("chunk_frames, overlap", [(5, 10), (256, 50)])  # live defaults; demo.py's windows
def test_streaming_equals_offline_where_windows_coincide(audio_model, chunk_frames, overlap):
    samples = speech_like(2.4)
    total = num_video_frames(len(samples) / SAMPLE_RATE, FPS)
    offline = audio_model.predict(log_mel(Audio(samples, SAMPLE_RATE), audio_model.params.num_mels),
                                  frame_times(total, FPS), seed=3, chunk_frames=chunk_frames, overlap=overlap)
    stream = StreamingMotion(audio_model, FPS, total_frames=total, seed=3, chunk_frames=chunk_frames,
                             overlap=overlap, silence_db=None)
    frames = [motion for motion, _ in streamed(stream, samples)]
    assert [motion.index for motion in frames] == list(range(total))
    torch.testing.assert_close(torch.stack([motion.local for motion in frames]), offline.local, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack([motion.pose for motion in frames]), offline.pose, rtol=0, atol=1e-5)


@pytest.mark.parametrize("total_known", [True, False])  # a file; a microphone
def test_streaming_equals_offline_after_old_audio_is_dropped(audio_model, total_known):
    """An 8 s clip at the live windows: the stream drops the audio behind it (its retained samples start seconds
    into the clip), and its motion and silence flags still equal the offline ones computed on the whole clip."""
    samples = speech_like(8.0, silent_from=5.0, silent_to=6.0)
    total = num_video_frames(len(samples) / SAMPLE_RATE, FPS)
    times = frame_times(total, FPS)
    offline = audio_model.predict(log_mel(Audio(samples, SAMPLE_RATE), audio_model.params.num_mels), times,
                                  seed=3, chunk_frames=5, overlap=10)
    silent = frame_energy_db(Audio(samples, SAMPLE_RATE), times, 1.0 / FPS) < SILENCE_DBFS
    stream = StreamingMotion(audio_model, FPS, total_frames=total if total_known else None, seed=3)
    offsets = []
    frames = []
    piece = int(0.04 * SAMPLE_RATE)
    for begin in range(0, len(samples), piece):
        frames += stream.push(samples[begin:begin + piece])
        offsets.append(stream.offset)
    frames += stream.end()
    assert [motion.index for motion in frames] == list(range(total))
    assert offsets[-1] / SAMPLE_RATE > 6.0 and len(stream.samples) / SAMPLE_RATE < 2.0  # the start was dropped
    assert sum(silent) > 20 and [motion.silent for motion in frames] == list(silent)
    expected_local = torch.where(torch.from_numpy(silent)[:, None], torch.zeros_like(offline.local), offline.local)
    coinciding = total if total_known else total - 15  # a microphone's last windows reach past the unknown end
    local = torch.stack([motion.local for motion in frames])
    torch.testing.assert_close(local[:coinciding], expected_local[:coinciding], rtol=0, atol=1e-5)
    if total_known:  # a microphone draws its pose noise a block at a time
        torch.testing.assert_close(torch.stack([motion.pose for motion in frames]), offline.pose, rtol=0, atol=1e-5)


def test_a_long_microphone_session_keeps_bounded_audio():
    """200 s at the microphone (40 ms pieces, a tiny model; past the first block of pose noise): the audio and the
    pose noise kept stay under a bound that does not grow with the session, and every frame's motion comes out."""
    config = load_config(None)
    config.audio_params.num_mels, config.audio_params.audio_channels = 8, 4
    config.audio_params.hidden_channels = config.audio_params.pose_hidden_channels = 4
    torch.manual_seed(0)
    stream = StreamingMotion(AudioDrivenModel(config, num_kp=2).eval(), FPS)
    noise = (0.1 * np.random.default_rng(0).standard_normal(int(0.04 * SAMPLE_RATE))).astype(np.float32)
    kept, noise_frames, count = [], [], 0
    for _ in range(int(200 / 0.04)):
        count += sum(1 for _ in stream.push(noise))
        kept.append(len(stream.samples) / SAMPLE_RATE)
        noise_frames.append(stream.noise.shape[1] if stream.noise is not None else 0)
    assert stream.received == 200 * SAMPLE_RATE
    assert count >= 200 * FPS - stream.look_ahead * FPS - stream.chunk_frames  # all but the look-ahead
    bound = 2 * stream.look_ahead  # seconds: the look-back (overlap, mel context) and the audio not used yet
    assert max(kept) < bound and max(kept[-1500:]) == pytest.approx(max(kept[:1500]), abs=0.05)
    assert max(noise_frames) <= 2 * NOISE_BLOCK


def test_frames_come_out_within_the_look_ahead(audio_model):
    samples = speech_like(3.0)
    stream = StreamingMotion(audio_model, FPS)  # a microphone: the length is not known
    assert stream.look_ahead == pytest.approx(15 / FPS + 0.2 + 0.025)
    frames = streamed(stream, samples)
    live = [(motion, pushed) for motion, pushed in frames if pushed < len(samples)]
    assert len(live) > 0.6 * len(frames)  # most frames come out before the audio ends
    for motion, pushed in live:
        waited = pushed / SAMPLE_RATE - motion.index / FPS
        assert 0 < waited <= stream.look_ahead + stream.chunk_frames / FPS + 0.02 + 1e-9


def test_silence_keeps_the_mouth_closed_and_still(audio_model):
    samples = speech_like(3.0, silent_from=1.0, silent_to=2.2)
    frames = [motion for motion, _ in streamed(StreamingMotion(audio_model, FPS), samples)]
    silent = [motion for motion in frames if 1.05 <= motion.index / FPS <= 2.15]
    spoken = [motion for motion in frames if motion.index / FPS < 0.95]
    assert silent and all(motion.silent for motion in silent)
    assert all(float(motion.local.abs().max()) == 0.0 for motion in silent)  # the reference mouth, not moving
    assert not any(motion.silent for motion in spoken)
    assert all(float(motion.local.abs().max()) > 0.0 for motion in spoken)
    ungated = [motion for motion, _ in streamed(StreamingMotion(audio_model, FPS, silence_db=None), samples)]
    assert any(float(ungated[motion.index].local.abs().max()) > 0 for motion in silent)  # the gate did it


def test_live_speech_renders_the_offline_frames_and_records_with_audio(audio_model, tiny_checkpoint, tmp_path):
    """Streaming motion with demo.py's windows, rendered by the live speech animator, gives the frames of
    animate_from_audio (demo.py --driving_audio); scripts/live.py records the speech live with its audio."""
    from conftest import REPO_ROOT

    from dagan.audio.animate import animate_from_audio
    from dagan.audio.decode import write_wav
    from dagan.cli.live import main
    from dagan.inference import DaGANPipeline
    from dagan.io import open_video, read_image_uint8
    from dagan.live.speech import SpeechAnimator

    samples = speech_like(1.2)
    source = read_image_uint8(str(REPO_ROOT / "data" / "samples" / "source.png"))
    pipeline = DaGANPipeline.load(tiny_checkpoint, device="cpu", batch_size=1)
    offline = list(animate_from_audio(pipeline, audio_model, source, Audio(samples, SAMPLE_RATE), fps=FPS, seed=0))
    total = num_video_frames(len(samples) / SAMPLE_RATE, FPS)
    stream = StreamingMotion(audio_model, FPS, total_frames=total, seed=0, chunk_frames=256, overlap=50,
                             silence_db=None)
    animator = SpeechAnimator(pipeline, source)
    live = [animator.render_motion(motion) for motion, _ in streamed(stream, samples)]
    assert len(live) == len(offline) == total
    for live_frame, offline_frame in zip(live, offline):
        assert np.abs(live_frame.astype(int) - offline_frame.astype(int)).max() <= 1

    speech, audio_checkpoint, out = tmp_path / "speech.wav", tmp_path / "audio.pt", tmp_path / "live.mp4"
    write_wav(speech, Audio(samples, SAMPLE_RATE))
    audio_model.save(audio_checkpoint)
    assert main(["--source_image", str(REPO_ROOT / "data" / "samples" / "source.png"), "--checkpoint",
                 tiny_checkpoint, "--backend", "torch", "--driving_audio", str(speech), "--audio_checkpoint",
                 str(audio_checkpoint), "--record", str(out)]) == 0
    video = open_video(out)
    assert video.has_audio and total - 2 <= video.num_frames <= total  # one frame per video frame (the last may lag)


class FakeMicrophone:
    """A stand-in for the sounddevice module: its InputStream plays ``samples``, then silence, to the callback in
    real time, ``blocksize`` samples at a time, as a microphone would."""

    PortAudioError = RuntimeError

    def __init__(self, samples: np.ndarray):
        self.samples = samples

    def query_devices(self, device=None, kind=None) -> dict:
        return {"name": "fake microphone", "max_input_channels": 1}

    def InputStream(self, samplerate, channels, dtype, device, blocksize, callback):
        import contextlib
        import threading
        import time

        samples, stop = self.samples, threading.Event()

        def play() -> None:
            start = time.perf_counter()
            for count in itertools.count(1):
                block = samples[(count - 1) * blocksize:count * blocksize]
                block = np.concatenate([block, np.zeros(blocksize - len(block), np.float32)])
                if stop.wait(max(0.0, start + count * blocksize / samplerate - time.perf_counter())):
                    return
                callback(block[:, None], blocksize, None, None)

        @contextlib.contextmanager
        def stream():
            thread = threading.Thread(target=play, daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
        return stream()


def test_a_microphone_session_is_recorded_with_what_it_heard(audio_model, tiny_checkpoint, tmp_path, monkeypatch):
    """scripts/live.py --driving_audio mic --record: the recording's audio track is what the microphone heard, from
    the first sample on (the time of frame 0), and lasts as long as the video."""
    import sys

    from conftest import REPO_ROOT

    from dagan.audio.decode import load_audio
    from dagan.cli.live import main
    from dagan.io import open_video

    speech = speech_like(1.2)
    monkeypatch.setitem(sys.modules, "sounddevice", FakeMicrophone(speech))
    audio_checkpoint, out = tmp_path / "audio.pt", tmp_path / "mic.mp4"
    audio_model.save(audio_checkpoint)
    assert main(["--source_image", str(REPO_ROOT / "data" / "samples" / "source.png"), "--checkpoint",
                 tiny_checkpoint, "--backend", "torch", "--driving_audio", "mic", "--audio_checkpoint",
                 str(audio_checkpoint), "--record", str(out), "--max_frames", "40"]) == 0
    video = open_video(out)
    heard = load_audio(out).samples
    assert video.has_audio and video.num_frames >= 40
    assert abs(len(heard) / SAMPLE_RATE - video.num_frames / FPS) <= 1 / FPS  # as long as the video
    expected = np.concatenate([speech, np.zeros(max(0, len(heard) - len(speech)), np.float32)])[:len(heard)]
    lags = range(-400, 401, 4)  # +-25 ms
    correlation = [float(np.corrcoef(np.roll(heard, lag), expected)[0, 1]) for lag in lags]
    best = int(np.argmax(correlation))
    assert correlation[best] > 0.9 and abs(list(lags)[best]) <= 16  # the same sound, from the same start
    assert sorted(path.name for path in tmp_path.iterdir()) == ["audio.pt", "mic.mp4"]  # no temporary left


def test_a_speech_recording_stopped_early_keeps_the_audio_of_its_frames(tmp_path):
    """A speech file's recording stopped after 10 frames (Ctrl-C): its audio is the file's first 0.4 s, not more."""
    from dagan.audio.decode import load_audio, write_wav
    from dagan.io import open_video
    from dagan.live.loop import ShownFrame
    from dagan.live.sinks import RecordSink
    from dagan.live.slot import CapturedFrame

    speech = tmp_path / "speech.wav"
    write_wav(speech, Audio(speech_like(1.2), SAMPLE_RATE))
    record = RecordSink(str(tmp_path / "talking.mp4"), FPS, protected_paths=[str(speech)], audio_from=str(speech),
                        by_index=True)
    image = np.zeros((64, 64, 3), np.uint8)
    for index in range(10):
        record.show(ShownFrame(image, image, CapturedFrame(image, 0.0, index), True))
    record.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
    heard = load_audio(tmp_path / "talking.mp4").samples
    assert open_video(tmp_path / "talking.mp4").num_frames == 10 and len(heard) == 0.4 * SAMPLE_RATE
    assert np.corrcoef(heard, speech_like(0.4))[0, 1] > 0.99
    assert sorted(path.name for path in tmp_path.iterdir()) == ["speech.wav", "talking.mp4"]


def test_a_failed_microphone_recording_leaves_nothing(tmp_path):
    """On an error the recording, its video alone and the heard audio's temporary file are all removed."""
    from dagan.live.loop import ShownFrame
    from dagan.live.sinks import RecordSink
    from dagan.live.slot import CapturedFrame

    record = RecordSink(str(tmp_path / "mic.mp4"), FPS, by_index=True, heard=True)
    list(record.audio_track.record(iter([speech_like(0.5)])))
    image = np.zeros((64, 64, 3), np.uint8)
    for index in range(3):
        record.show(ShownFrame(image, image, CapturedFrame(image, 0.0, index), True))
    assert any(tmp_path.iterdir())  # the heard audio so far
    record.__exit__(RuntimeError, RuntimeError("the model failed"), None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "getpgid"), reason="process groups are POSIX")
def test_ctrl_c_in_a_terminal_does_not_reach_the_recording_encoder(tmp_path):
    """A terminal's Ctrl-C goes to its whole foreground process group: the encoder is outside it, so the
    recording is finished by this program (kept on Ctrl-C) rather than cut by ffmpeg's own exit."""
    from dagan.live.loop import ShownFrame
    from dagan.live.sinks import RecordSink
    from dagan.live.slot import CapturedFrame

    record = RecordSink(str(tmp_path / "live.mp4"), FPS)
    image = np.zeros((64, 64, 3), np.uint8)
    for index in range(3):
        record.show(ShownFrame(image, image, CapturedFrame(image, 0.0, index), True))
        record.writer.write(image)  # the encoder starts with the first frame written
    try:
        assert os.getpgid(record.writer._process.pid) != os.getpgid(0)
    finally:
        record.abort()


def test_missing_microphone_support_is_one_line(monkeypatch):
    import sys

    from dagan.live.capture import LiveError
    from dagan.live.speech import microphone_pieces

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # not installed
    with pytest.raises(LiveError, match="needs sounddevice"):
        microphone_pieces()
