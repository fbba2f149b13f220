"""The web app's live speech room: the browser's microphone drives the portrait, and the talking portrait comes
back with the speech as its sound.

The microphone streams over the page's connection (gradio's ``gr.Audio(streaming=True)``: a chunk every
:data:`STREAM_EVERY` seconds); each chunk only goes into the recording's :class:`Inbox`, since gradio keeps only the
newest chunk while its handler runs. The work is an event of its own, started with the recording
(:func:`speak_live`, a generator): the audio is resampled to 16 kHz mono (:class:`StreamingResampler`) and pushed
into the streaming audio model (:class:`~dagan.audio.streaming.StreamingMotion`, as ``scripts/live.py
--driving_audio mic``); each frame's motion is rendered by :class:`~dagan.live.speech.SpeechAnimator`, pasted back
into the whole portrait when asked (as ``scripts/live.py --paste_back``); and the frames go out in short MP4
segments (the project's :class:`~dagan.io.VideoWriter`: H.264 and AAC), each holding its frames and the
microphone's audio of the same moments, to a streamed ``gr.Video`` that the browser plays as it grows (HLS).

A frame is shown ``StreamingMotion.look_ahead`` seconds after its sound at the earliest, plus the rest of its
segment and of its microphone chunk (docs/live.md "In the browser"); silence keeps the mouth closed and still
(StreamingMotion gives silent frames no local motion). gradio's streamed video needs FFmpeg's ``ffmpeg`` and
``ffprobe`` on PATH.
"""
from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple, Optional

import gradio as gr
import numpy as np

from dagan.app.common import KNOWN_ERRORS, find_checkpoints, portrait_face, read_portrait, scrub
from dagan.audio.decode import SAMPLE_RATE, Audio, write_wav
from dagan.audio.streaming import FrameMotion, StreamingMotion
from dagan.faces.plans import FacePlan
from dagan.io import VideoWriter, to_uint8
from dagan.live.speech import SpeechAnimator

FPS = 25.0  # video frames per second of speech
STREAM_EVERY = 0.1  # seconds of microphone audio in each chunk the browser sends (gradio's page fixes it at 0.1)
SEGMENT_FRAMES = 10  # frames (with their audio) per streamed segment: 0.4 s at 25 fps, at least
MAX_SEGMENT_FRAMES = 50  # a segment holds the frames rendered while the last one was muxed, up to 2 s of them
IDLE_SECONDS = 20.0  # a recording that has sent nothing for this long has ended (a closed tab sends no stop)
FIRST_CHUNK_SECONDS = 30.0  # how long a recording may wait for its first chunk (the microphone permission prompt)
RENDER_SHARE = 0.5  # the share of real time rendering may take (the rest: encoding and gradio's muxing)
MAX_RENDER_EVERY = 5  # when rendering is slower than that, every n-th frame is rendered (at least 5 per second)
NEEDS_FFMPEG = ("Speech in the browser needs FFmpeg's ffmpeg and ffprobe on PATH (gradio streams the talking "
                "portrait through them): apt-get install ffmpeg, brew install ffmpeg, or winget install ffmpeg.")


# Audio from the browser.
def mono_float(samples: np.ndarray) -> np.ndarray:
    """A microphone chunk as gradio gives it ((n,) or (n, channels), int16/int32/float) -> (n,) float32 in [-1, 1]."""
    samples = np.asarray(samples)
    if samples.dtype.kind == "i":
        samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    elif samples.dtype.kind == "u":
        middle = float(np.iinfo(samples.dtype).max + 1) / 2
        samples = (samples.astype(np.float32) - middle) / middle
    samples = samples.astype(np.float32, copy=False)
    return samples.mean(axis=1) if samples.ndim == 2 else samples.reshape(-1)


class StreamingResampler:
    """Resamples audio that arrives in pieces, giving what ``scipy.signal.resample_poly`` gives on the whole signal
    (the same filter), a piece at a time: each output sample waits only for the filter's half length after it (under
    1 ms at 48 or 44.1 kHz), and :meth:`end` gives the rest (the signal's end read as zeros, as resample_poly does).
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE):
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} and {rate_out}")
        divisor = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // divisor, int(rate_in) // divisor
        half_len = 10 * max(self.up, self.down)  # resample_poly's default filter, in upsampled samples
        reach = -(-half_len // self.up) + 1  # input samples the filter reaches on each side
        self.pad = -(-reach // self.down) * self.down  # rounded up to whole input blocks of `down` samples
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0  # the input index of buffer[0] (a multiple of `down`)
        self.done = 0  # output samples given so far

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add input samples; returns the output samples now known."""
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32).reshape(-1)])
        received = self.offset + len(self.buffer)
        return self._emit((received - self.pad) * self.up // self.down if received > self.pad else 0)

    def end(self) -> np.ndarray:
        """No more input: the remaining output samples."""
        received = self.offset + len(self.buffer)
        return self._emit(-(-received * self.up // self.down))

    def _emit(self, stop: int) -> np.ndarray:
        from scipy.signal import resample_poly

        if stop <= self.done:
            return np.zeros(0, np.float32)
        start = max(0, (self.done // self.up) * self.down - self.pad)  # a multiple of `down`: on the output grid
        window = self.buffer[start - self.offset:]
        if self.up == self.down:
            out = window.copy()
        else:
            out = resample_poly(window.astype(np.float64), self.up, self.down).astype(np.float32)
        first = start * self.up // self.down
        result = out[self.done - first:stop - first]
        if len(result) < stop - self.done:  # end(): resample_poly's own length is ceil(n * up / down)
            result = np.concatenate([result, np.zeros(stop - self.done - len(result), np.float32)])
        self.done = stop
        keep = max(0, (self.done // self.up) * self.down - self.pad)  # the next window's start
        if keep > self.offset:
            self.buffer = self.buffer[keep - self.offset:]
            self.offset = keep
        return result


class Inbox:
    """One recording's microphone chunks, put by the stream handler and taken by the work, thread-safe."""

    def __init__(self):
        self.created = self.last = time.monotonic()
        self.closed = False
        self._chunks: deque = deque()
        self._condition = threading.Condition()

    def put(self, sample_rate: int, samples: np.ndarray) -> None:
        with self._condition:
            self._chunks.append((int(sample_rate), samples))
            self.last = time.monotonic()
            self._condition.notify_all()

    def close(self) -> None:
        with self._condition:
            self.closed = True
            self._condition.notify_all()

    def take(self, timeout: float) -> list[tuple[int, np.ndarray]]:
        """Every chunk waiting (waits up to ``timeout`` seconds for one unless closed)."""
        with self._condition:
            if not self._chunks and not self.closed:
                self._condition.wait(timeout)
            chunks = list(self._chunks)
            self._chunks.clear()
            return chunks

    @property
    def finished(self) -> bool:
        """Closed (the recording stopped), or nothing sent for IDLE_SECONDS (the page went away; before the first
        chunk FIRST_CHUNK_SECONDS)."""
        wait = FIRST_CHUNK_SECONDS if self.last == self.created else IDLE_SECONDS
        return self.closed or time.monotonic() - self.last > wait


# The portrait and one recording.
class SpokenFrame(NamedTuple):
    """One frame of live speech: its index, the picture, the browser's audio of its period (mono float32 at the
    microphone's rate) and its motion."""

    index: int
    image: np.ndarray
    audio: np.ndarray
    motion: FrameMotion


class SpeechVoice:
    """The portrait prepared once for live speech with one DaGAN pipeline and audio model.

    face: the portrait's face (its crop plan) for paste-back into the whole ``picture``
    (:class:`~dagan.faces.paste.PasteBack`, as ``scripts/live.py --paste_back``); None: the whole picture is the
    face, resized to the model (as ``scripts/live.py --driving_audio``), and the frames are the model's crop.
    """

    def __init__(self, pipeline, audio_model, picture: np.ndarray, face: Optional[FacePlan] = None,
                 key: tuple = ()):
        from dagan.audio.animate import check_compatible
        from dagan.faces.alignment import warp_to_crop
        from dagan.faces.paste import PasteBack

        check_compatible(audio_model, pipeline)
        self.key, self.audio_model, self.picture, self.face = key, audio_model, picture, face
        crop = picture if face is None else warp_to_crop(picture, face.transform)
        self.animator = SpeechAnimator(pipeline, crop)  # the source's work, once
        self.paste = None if face is None else PasteBack(face.transform, picture.shape[:2],
                                                         whole_picture=face.whole_picture)

    def render(self, motion: FrameMotion) -> np.ndarray:
        """One frame of speech motion: the model's crop, or the whole portrait with the face pasted back."""
        generated = self.animator.render_motion(motion)
        if self.paste is None:
            return generated
        output = self.picture.copy()
        self.paste(output, generated)
        return output

    def still(self) -> np.ndarray:
        """The portrait with no motion (silence and no head pose): what a quiet microphone shows; rendering it
        also warms the networks up before the first frame of speech."""
        import torch

        size = self.audio_model.num_kp * 6
        return self.render(FrameMotion(0, torch.zeros(6), torch.zeros(size), True))


class SpeechListener:
    """One recording: the browser's audio in (:meth:`hear`, any sample rate), the frames of speech out, each with
    the audio of its own period (so that the returned video carries the speech in sync)."""

    def __init__(self, voice: SpeechVoice, fps: float = FPS, seed: int = 0, keep_up: bool = False):
        self.voice, self.fps, self.keep_up = voice, float(fps), keep_up
        self.stream = StreamingMotion(voice.audio_model, self.fps, seed=seed)  # a microphone: the length is open
        self.rate: Optional[int] = None
        self.resampler: Optional[StreamingResampler] = None
        self.heard = np.zeros(0, np.float32)  # the browser's audio from sample `heard_from` on
        self.heard_from = 0
        self.render_seconds = 0.0  # one frame's render time, a moving average (keep_up)
        self.last_image: Optional[np.ndarray] = None

    @property
    def look_ahead(self) -> float:
        """Seconds of audio a frame waits for after its own time (the streaming model's)."""
        return self.stream.look_ahead

    def hear(self, sample_rate: int, samples: np.ndarray) -> list[SpokenFrame]:
        """One microphone chunk ((n,) or (n, channels), int or float); returns the frames now known."""
        samples = mono_float(samples)
        if self.rate is None:
            self.rate, self.resampler = int(sample_rate), StreamingResampler(int(sample_rate))
        elif int(sample_rate) != self.rate:
            raise ValueError(f"the microphone changed its sample rate from {self.rate} to {sample_rate} Hz")
        self.heard = np.concatenate([self.heard, samples])
        return self._frames(list(self.stream.push(self.resampler.push(samples))))

    def end(self) -> list[SpokenFrame]:
        """The recording stopped: the remaining frames."""
        if self.resampler is None:
            return []
        motions = list(self.stream.push(self.resampler.end()))
        return self._frames(motions + list(self.stream.end()))

    @property
    def render_every(self) -> int:
        """1: every frame is rendered; n: every n-th (the others repeat it), when ``keep_up`` and rendering every
        frame would take more than RENDER_SHARE of real time (a CPU with a large model), so that the portrait
        stays live at a lower frame rate instead of falling behind its sound."""
        if not self.keep_up or self.render_seconds == 0.0:
            return 1
        return min(MAX_RENDER_EVERY, max(1, math.ceil(self.render_seconds * self.fps / RENDER_SHARE)))

    def render(self, motion: FrameMotion) -> np.ndarray:
        """The frame of one motion (the last one again between the frames rendered, see :attr:`render_every`)."""
        if self.last_image is not None and motion.index % self.render_every:
            return self.last_image
        started = time.perf_counter()
        self.last_image = self.voice.render(motion)
        elapsed = time.perf_counter() - started
        self.render_seconds = elapsed if self.render_seconds == 0.0 else 0.8 * self.render_seconds + 0.2 * elapsed
        return self.last_image

    def _frames(self, motions: list[FrameMotion]) -> list[SpokenFrame]:
        frames = []
        for motion in motions:
            begin, end = (round(index * self.rate / self.fps) for index in (motion.index, motion.index + 1))
            audio = self.heard[begin - self.heard_from:end - self.heard_from]
            if len(audio) < end - begin:  # the last frame of a recording may end after the audio
                audio = np.concatenate([audio, np.zeros(end - begin - len(audio), np.float32)])
            frames.append(SpokenFrame(motion.index, self.render(motion), audio, motion))
            if end > self.heard_from:
                self.heard = self.heard[end - self.heard_from:]
                self.heard_from = end
        return frames


def write_segment(path: Path, frames: list[SpokenFrame], sample_rate: int, fps: float = FPS) -> str:
    """One streamed segment: the frames as H.264 with their audio as AAC (an MP4 the browser's player takes)."""
    wav = path.with_suffix(".wav")
    write_wav(wav, Audio(np.concatenate([frame.audio for frame in frames]), int(sample_rate)))
    try:
        # cut at the frames' length (the audio must end with its video, or the player holds the picture while
        # the rest plays); veryfast: a segment is watched once, as it comes (a third less time than medium)
        with VideoWriter(path, fps, audio_from=wav, num_frames=len(frames), preset="veryfast") as writer:
            for frame in frames:
                writer.write(frame.image)
    finally:
        wav.unlink(missing_ok=True)
    return str(path)


class SpeechWork(threading.Thread):
    """One recording's work, beside the page's events: the inbox's chunks go through the listener (the streaming
    model and the renderer) as they come, and the rendered frames wait for :meth:`take` (the segment writer), so
    that rendering goes on while gradio muxes the last segment into its stream."""

    def __init__(self, listener: SpeechListener, inbox: Inbox):
        super().__init__(name="dagan-live-speech-app", daemon=True)
        self.listener, self.inbox = listener, inbox
        self.frames: list[SpokenFrame] = []
        self.done = False
        self.error: Optional[BaseException] = None
        self.shown = self.spoken = 0  # frames taken, and those with speech (the rest were silent)
        self._condition = threading.Condition()

    def run(self) -> None:
        try:
            while True:
                chunks = self.inbox.take(timeout=0.1)
                for sample_rate, samples in chunks:
                    self._add(self.listener.hear(sample_rate, samples))
                if not chunks and self.inbox.finished:
                    self._add(self.listener.end())
                    return
        except Exception as error:  # raised by take(), in the page's event
            self.error = error
        finally:
            with self._condition:
                self.done = True
                self._condition.notify_all()

    def _add(self, frames: list[SpokenFrame]) -> None:
        if frames:
            with self._condition:
                self.frames += frames
                self._condition.notify_all()

    def take(self, least: int = SEGMENT_FRAMES, most: int = MAX_SEGMENT_FRAMES) -> list[SpokenFrame]:
        """The next frames, at least ``least`` (fewer at the end) and at most ``most``; [] when all are taken."""
        with self._condition:
            while len(self.frames) < least and not self.done:
                self._condition.wait(0.5)
            if self.error is not None:
                raise self.error
            taken, self.frames = self.frames[:most], self.frames[most:]
            self.shown += len(taken)
            self.spoken += sum(not frame.motion.silent for frame in taken)
            return taken


# The page.
def prepare_voice(animator_app, holder: dict, source_image: Optional[str], checkpoint: Optional[str],
                  audio_checkpoint: Optional[str], device: str, paste_back: bool) -> SpeechVoice:
    """The session's :class:`SpeechVoice` for these settings (kept in ``holder`` until they change)."""
    from dagan.audio.model import AudioDrivenModel

    if not source_image:
        raise gr.Error("Upload a source portrait first.", print_exception=False)
    if not audio_checkpoint:
        raise gr.Error("Pick an audio model (train one with scripts/personalize.py).", print_exception=False)
    key = (source_image, checkpoint, audio_checkpoint, device, bool(paste_back))
    voice = holder.get("voice")
    if voice is not None and voice.key == key:
        return voice
    names = {source_image: os.path.basename(source_image)}
    try:
        audio_model = AudioDrivenModel.load(animator_app.resolve_checkpoint(audio_checkpoint))
        pipeline, _ = animator_app.cache.get(animator_app.resolve_checkpoint(checkpoint), device)
        picture = to_uint8(read_portrait(source_image))
        face = None
        if paste_back:
            picture, face = portrait_face(animator_app, pipeline, picture, names[source_image])
        voice = SpeechVoice(pipeline, audio_model, picture, face, key)
        voice.still()  # the networks' first calls are slow: not on the first frame of speech
    except gr.Error:
        raise
    except KNOWN_ERRORS as error:
        raise gr.Error(scrub(str(error), names), print_exception=False) from None
    holder["voice"] = voice
    return voice


def current_inbox(holder: dict, fresh: bool = False) -> Inbox:
    """The recording's inbox. ``fresh`` (a recording starts): a new one, unless a chunk opened one just now (the
    start and the chunks come as separate events, the start first unless the server is very busy)."""
    inbox = holder.get("inbox")
    if inbox is None or inbox.closed or (fresh and time.monotonic() - inbox.created > 1.0):
        if inbox is not None:
            inbox.close()
        inbox = holder["inbox"] = Inbox()
    return inbox


def hear_chunk(chunk, holder: dict) -> None:
    """The microphone stream's handler: the chunk (sample rate, samples) goes into the recording's inbox."""
    if chunk is not None:
        sample_rate, samples = chunk
        current_inbox(holder).put(sample_rate, samples)


def start_listening(holder: dict, recordings: int) -> int:
    """A recording starts: a fresh inbox for its chunks; the count of recordings goes up (its change starts the
    work, :func:`speak_live`, as an event of its own: the microphone's events are let go by the page at Stop, and
    the work goes on after it with the last frames)."""
    current_inbox(holder, fresh=True)
    return recordings + 1


def stop_listening(holder: dict) -> None:
    """The recording stopped: its work finishes the frames it has heard."""
    inbox = holder.get("inbox")
    if inbox is not None:
        inbox.close()


def streaming_tools_missing() -> bool:
    """Whether gradio's streamed video lacks FFmpeg's ffmpeg or ffprobe (it runs them from PATH)."""
    return not (shutil.which("ffmpeg") and shutil.which("ffprobe"))


def speak_live(animator_app, holder: dict, source_image, checkpoint, device, audio_checkpoint, paste_back):
    """The work of one recording, a generator of (segment, status): each segment an MP4 of the talking portrait
    with its audio (gradio streams them into one video), then ``gr.skip()`` and "Stopped." when all is shown."""
    inbox = current_inbox(holder)
    try:
        voice = prepare_voice(animator_app, holder, source_image, checkpoint, audio_checkpoint, device, paste_back)
        listener = SpeechListener(voice, keep_up=True)
        delay = f"each frame comes {listener.look_ahead:.2f} s + up to {SEGMENT_FRAMES / FPS:.1f} s after its sound"
        yield gr.skip(), f"Listening ({delay})."
        directory = animator_app.request_directory()
        work = SpeechWork(listener, inbox)
        work.start()
        previous: Optional[Path] = None
        count = 0
        while frames := work.take():
            path = Path(write_segment(directory / f"segment{count:05d}.mp4", frames, listener.rate))
            if previous is not None:
                previous.unlink(missing_ok=True)  # gradio has muxed it into its stream by now
            previous, count = path, count + 1
            yield str(path), (f"Listening: {work.shown / FPS:.1f} s shown, speech heard in {work.spoken} of "
                              f"{work.shown} frames ({delay}).")
        yield gr.skip(), f"Stopped: {work.shown / FPS:.1f} s shown, speech heard in {work.spoken} frames."
    finally:
        inbox.close()  # also when the page goes away mid-stream


def add_live_speech_tab(animator_app, settings, source, checkpoint, device) -> None:
    """The live speech controls inside the app's ``gr.Blocks``: the page's portrait, checkpoint and device."""
    with gr.Accordion("Live speech: your microphone drives the portrait", open=False, elem_id="live-speech"):
        gr.Markdown("Pick an audio model, allow the microphone and press **Record**: the portrait says what it "
                    "hears, and the video beside it plays that with your voice, a second or two behind.")
        with gr.Row():
            audio_model = gr.Dropdown(find_checkpoints(settings.search_root), value=None, label="Audio model",
                                      elem_id="live-audio-model",
                                      info="from scripts/personalize.py or train_params.stage=audio")
            paste_back = gr.Checkbox(False, label="Paste back into the whole portrait",
                                     elem_id="live-speech-paste-back")
        with gr.Row():
            microphone = gr.Audio(label="Microphone", sources=["microphone"], streaming=True, type="numpy",
                                  elem_id="live-microphone")
            output = gr.Video(label="Talking portrait", streaming=True, autoplay=True, interactive=False,
                              elem_id="live-speech-output")
        status = gr.Markdown(elem_id="live-speech-status")
        holder = gr.State(dict)  # per page: the recording's inbox and the prepared portrait
        recordings = gr.State(0)

    def speak(state, source_image, checkpoint_path, device_name, model_path, use_paste_back):
        if streaming_tools_missing():
            raise gr.Error(NEEDS_FFMPEG, print_exception=False)
        yield from speak_live(animator_app, state, source_image, checkpoint_path, device_name, model_path,
                              use_paste_back)

    async def hear(chunk, state):  # on the event loop, not a worker thread: the chunk is taken as soon as it comes
        hear_chunk(chunk, state)

    async def start(state, count):
        return start_listening(state, count)

    async def stop(state):
        stop_listening(state)

    microphone.stream(hear, [microphone, holder], None, stream_every=STREAM_EVERY, concurrency_limit=None,
                      show_progress="hidden", api_name=False)
    microphone.start_recording(start, [holder, recordings], [recordings], concurrency_limit=None,
                               show_progress="hidden", api_name=False)
    recordings.change(speak, [holder, source, checkpoint, device, audio_model, paste_back], [output, status],
                      concurrency_limit=None, show_progress="hidden", api_name="live_speech")
    microphone.stop_recording(stop, [holder], None, concurrency_limit=None, show_progress="hidden", api_name=False)
