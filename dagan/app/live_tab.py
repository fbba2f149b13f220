"""The web app's live tab: the browser's camera drives the portrait (gradio's webcam streaming over the page's
connection, on localhost like the rest of the app). The source is prepared once per portrait and model
(:class:`~dagan.live.animator.LiveAnimator`, batch 1), the face is followed (:class:`~dagan.live.tracking.FaceTracker`
when a face backend is installed, else the whole frame), and the motion is relative to the first frame with a face
after the stream starts or after "Re-anchor". The browser sends the next frame only when the last one has come
back, so frames never queue up. With "Paste back into the whole portrait" the portrait's face is found and the
animated face is blended into the whole picture (``LiveAnimator`` with the face's crop plan, as ``scripts/live.py
--paste_back``); without it the whole picture is the face and the model's square crop comes back."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import gradio as gr
import numpy as np

from dagan.app.common import KNOWN_ERRORS, portrait_face, read_portrait, scrub
from dagan.faces.animation import MotionOptions
from dagan.inference import to_uint8
from dagan.live.animator import LiveAnimator
from dagan.live.loop import FACE_LOST, draw_text
from dagan.live.tracking import FaceTracker, WholeFrameTracker

STREAM_EVERY = 0.04  # seconds between camera frames the browser sends (at most 25 per second)


@dataclass
class LiveSession:
    """One browser tab's live state: what it was built for, the animator, the tracker, the last good result."""

    key: tuple
    animator: LiveAnimator
    tracker: object
    last_good: Optional[np.ndarray] = None
    frames: int = field(default=0)


def driving_tracker():
    from dagan.faces.detection import MissingFaceBackend, get_face_analyzer

    try:
        return FaceTracker(get_face_analyzer("auto"))
    except (MissingFaceBackend, ImportError):
        return WholeFrameTracker()


def source_animator(animator_app, source_image: str, checkpoint: str, device: str, paste_back: bool) -> LiveAnimator:
    """The portrait prepared for live driving: with ``paste_back`` its face is cropped and pasted back into the
    whole picture, else the whole picture is the face."""
    name = os.path.basename(source_image)
    try:
        pipeline, _ = animator_app.cache.get(animator_app.resolve_checkpoint(checkpoint), device)
        picture = to_uint8(read_portrait(source_image))
        if not paste_back:
            return LiveAnimator(pipeline, picture, None, MotionOptions())
        picture, face = portrait_face(animator_app, pipeline, picture, name)
        return LiveAnimator(pipeline, picture, face, MotionOptions(), paste_back=True)
    except gr.Error:
        raise
    except KNOWN_ERRORS as error:
        raise gr.Error(scrub(str(error), {source_image: name}), print_exception=False) from None


def live_frame(animator_app, camera: Optional[np.ndarray], source_image: Optional[str], checkpoint: Optional[str],
               device: str, session: Optional[LiveSession], paste_back: bool = False):
    """One camera frame (H, W, 3) uint8 in, the animated portrait out (and the session, kept by the page)."""
    if camera is None or not source_image or not checkpoint:
        return None, session
    key = (source_image, checkpoint, device, bool(paste_back))
    if session is None or session.key != key:
        session = LiveSession(key, source_animator(animator_app, source_image, checkpoint, device, paste_back),
                              driving_tracker())
    animator = session.animator
    transform = session.tracker(camera, animator.size)
    if transform is None:
        held = session.last_good if session.last_good is not None else animator.picture
        return draw_text(held, [FACE_LOST]), session
    result = animator.compose(animator.render(animator.keypoints(animator.driving_crop(camera, transform))))
    session.last_good, session.frames = result, session.frames + 1
    return result, session


def reanchor(session: Optional[LiveSession]) -> Optional[LiveSession]:
    if session is not None:
        session.animator.reanchor()
    return session


def add_live_tab(animator_app, source, checkpoint, device) -> None:
    """The live controls inside the app's ``gr.Blocks``: the page's portrait, checkpoint and device are used."""
    with gr.Accordion("Live: your camera drives the portrait", open=False, elem_id="live"):
        gr.Markdown("Allow the camera, look at it with a neutral face and start the stream: that first frame is the "
                    "anchor of the motion (**Re-anchor** takes the next one).")
        with gr.Row():
            camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy",
                              elem_id="live-camera", webcam_options=gr.WebcamOptions(mirror=False))
            output = gr.Image(label="Live portrait", type="numpy", format="png", interactive=False,
                              elem_id="live-output")
        with gr.Row():
            button = gr.Button("Re-anchor", elem_id="live-reanchor")
            paste_back = gr.Checkbox(False, label="Paste back into the whole portrait", elem_id="live-paste-back")
        session = gr.State(None)

    def frame(camera_frame, source_image, checkpoint_path, device_name, state, use_paste_back):
        return live_frame(animator_app, camera_frame, source_image, checkpoint_path, device_name, state,
                          use_paste_back)

    camera.stream(frame, [camera, source, checkpoint, device, session, paste_back], [output, session],
                  stream_every=STREAM_EVERY, concurrency_limit=1, show_progress="hidden", api_name="live_frame")
    button.click(reanchor, [session], [session], api_name="live_reanchor")
