"""The web app's speech tab: upload speech, pick an audio model (and optionally a reference clip of the target),
get the portrait saying it. Uses the app's pipeline cache, request directories and one-line errors."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import gradio as gr

from dagan.app.common import KNOWN_ERRORS, find_checkpoints, no_progress, read_portrait, scrub, track
from dagan.audio.animate import POSE_MODES, animate_from_audio, animate_picture_from_audio, check_compatible, check_face
from dagan.audio.decode import open_audio
from dagan.audio.features import num_video_frames
from dagan.audio.model import AudioDrivenModel
from dagan.io import open_video, open_writer


@dataclass
class SpeechRequest:
    source_image: Optional[str]
    speech: Optional[str]
    checkpoint: Optional[str]
    audio_checkpoint: Optional[str]
    device: str = "auto"
    reference_video: Optional[str] = None
    pose: str = "learned"
    fps: float = 25.0
    seed: int = 0
    crop: str = "auto"  # the page's face options, as for a driving video
    paste_back: bool = True
    faces: str = "largest"


def speak(animator, request: SpeechRequest, progress=None) -> tuple[str, str]:
    """Run one speech request with the app's :class:`~dagan.app.video_tab.Animator`: (result video path, status line)."""
    progress = no_progress if progress is None else progress
    names = {path: os.path.basename(path) for path in (request.source_image, request.speech, request.reference_video)
             if path}
    try:
        return _speak(animator, request, progress)
    except gr.Error:
        raise
    except KNOWN_ERRORS as error:
        raise gr.Error(scrub(str(error), names), print_exception=False) from None


def _speak(animator, request: SpeechRequest, progress) -> tuple[str, str]:
    started = time.perf_counter()
    if not request.source_image or not request.speech:
        raise gr.Error("Upload a source portrait and the speech (an audio file).", print_exception=False)
    if not request.audio_checkpoint:
        raise gr.Error("Pick an audio model (train one with scripts/personalize.py).", print_exception=False)
    audio_checkpoint = animator.resolve_checkpoint(request.audio_checkpoint)  # only the server's own files
    if not request.fps or request.fps <= 0:
        raise gr.Error("The frame rate must be positive.", print_exception=False)
    source = read_portrait(request.source_image)
    audio = open_audio(request.speech, max_seconds=animator.settings.max_speech_minutes * 60)  # streamed below
    audio_model = AudioDrivenModel.load(audio_checkpoint)
    progress(0.0, desc="Loading the model")
    pipeline, _ = animator.cache.get(animator.resolve_checkpoint(request.checkpoint), request.device)
    check_compatible(audio_model, pipeline)
    reference = None
    if request.reference_video:
        reference = open_video(request.reference_video)
        check_face(reference)
    frames = speech_frames(animator, request, pipeline, audio_model, source, audio, reference)
    total = num_video_frames(audio.duration, float(request.fps))
    result = animator.request_directory() / "speech_result.mp4"
    with open_writer(result, float(request.fps), audio_from=request.speech) as writer:
        for frame in track(frames, total, progress, "Animating"):
            writer.write(frame)
    return str(result), f"Done: {total} frames at {request.fps:g} fps in {time.perf_counter() - started:.1f} s."


def speech_frames(animator, request: SpeechRequest, pipeline, audio_model, source, audio, reference):
    """The frames of a speech request: with face crop ``auto`` the photo's faces are found, cropped, animated and
    pasted back (as for a driving video, ``demo.py --driving_audio``); with ``none`` the whole picture is the input."""
    if request.crop != "auto":
        return animate_from_audio(pipeline, audio_model, source, audio, float(request.fps), reference, request.pose,
                                  int(request.seed))
    from dagan.faces import get_face_analyzer
    from dagan.faces.animation import PHOTO_DETECT_MAX_SIDE, FaceOptions, FaceSession, fit_picture
    from dagan.faces.plans import parse_face_selection
    from dagan.io import to_uint8

    options = FaceOptions(crop="auto", paste_back=bool(request.paste_back), faces=parse_face_selection(request.faces))
    if animator.face_analyzer is None:
        animator.face_analyzer = get_face_analyzer("auto", detect_max_side=PHOTO_DETECT_MAX_SIDE)
    session = FaceSession(pipeline, options, analyzer=animator.face_analyzer)
    return animate_picture_from_audio(session, audio_model, fit_picture(to_uint8(source), options.max_size), audio,
                                      float(request.fps), reference, request.pose, int(request.seed),
                                      name=os.path.basename(request.source_image))


def add_speech_tab(animator, settings, source, checkpoint, device, result, status, face_controls) -> None:
    """The speech controls, inside the app's ``gr.Blocks``; results go to the page's result video and status.
    face_controls: the page's face crop, paste-back and faces inputs (a photo is taken as the video mode takes it)."""
    with gr.Accordion("Speech instead of a driving video (audio model)", open=False):
        speech = gr.Audio(label="Speech", type="filepath", sources=["upload"], elem_id="speech-audio")
        models = find_checkpoints(settings.search_root)
        audio_model = gr.Dropdown(models, value=None, label="Audio model",
                                  elem_id="audio-model", info="from scripts/personalize.py or train_params.stage=audio")
        reference = gr.Video(label="Reference clip of the target (optional)", sources=["upload"],
                             elem_id="reference-video")
        with gr.Row():
            pose = gr.Radio(list(POSE_MODES), value="learned", label="Head pose")
            fps = gr.Number(25.0, label="Frames per second", minimum=1)
            seed = gr.Number(0, label="Seed", precision=0)
        button = gr.Button("Animate from speech", variant="primary", elem_id="speech-button")

    def animate_speech(source_image, speech_path, checkpoint_path, device_name, model_path, reference_path, pose_mode,
                       frame_rate, seed_value, crop_mode, use_paste_back, face_choice, progress=gr.Progress()):
        request = SpeechRequest(source_image, speech_path, checkpoint_path, model_path, device_name, reference_path,
                                pose_mode, frame_rate, seed_value, crop_mode, use_paste_back, face_choice)
        return speak(animator, request, progress)

    button.click(animate_speech, [source, speech, checkpoint, device, audio_model, reference, pose, fps, seed,
                                  *face_controls], [result, status], api_name="animate_speech")
