"""The web app's page: the video tab's controls, the speech tab and the live rooms (camera, microphone), wired to
one :class:`Animator`, served on localhost. Requests are queued one at a time (``default_concurrency_limit=1``): the
model and the CPU/GPU are shared, so runs never interleave (the live microphone's events excepted: its chunks and
its work must run beside each other, see :mod:`dagan.app.live_speech_tab`)."""
from __future__ import annotations

from typing import Optional

import gradio as gr

from dagan.app.common import SAMPLES_DIR, AppSettings, UploadedImage, available_devices, find_checkpoints
from dagan.app.live_speech_tab import add_live_speech_tab
from dagan.app.live_tab import add_live_tab
from dagan.app.speech_tab import add_speech_tab
from dagan.app.video_tab import AnimationRequest, Animator

CSS = "#status {min-height: 1.5em}"
INTRO = """# DaGAN: depth-aware talking heads
Upload a **photo** (with face crop *auto* the faces are found, animated and pasted back into the whole picture; with
*none* it is resized to the model's square input) and a **driving video** of a talking face, or pick the bundled
sample below, then press **Animate**. The result has the driving video's frame rate and audio."""


def build_app(settings: AppSettings, animator: Optional[Animator] = None) -> gr.Blocks:
    """The Gradio page. ``launch_app`` starts it; tests may call ``build_app(...).launch(...)`` themselves."""
    animator = animator or Animator(settings)
    checkpoints = find_checkpoints(settings.search_root, settings.checkpoint)
    devices = available_devices()
    with gr.Blocks(title="DaGAN", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                source = UploadedImage(label="Source portrait", type="filepath", image_mode=None, sources=["upload"],
                                  height=300, elem_id="source-image")
                driving = gr.Video(label="Driving video", sources=["upload"], height=300, elem_id="driving-video")
                if (SAMPLES_DIR / "source.png").is_file() and (SAMPLES_DIR / "driving.mp4").is_file():
                    gr.Examples([[str(SAMPLES_DIR / "source.png"), str(SAMPLES_DIR / "driving.mp4")]],
                                inputs=[source, driving], label="Bundled sample", cache_examples=False,
                                elem_id="samples")
                with gr.Accordion("Settings", open=True):
                    checkpoint = gr.Dropdown(checkpoints, value=checkpoints[0] if checkpoints else None,
                                             label="Checkpoint", elem_id="checkpoint",
                                             info="found in checkpoints/, runs/*/checkpoints/ and runs/*/models/")
                    device = gr.Dropdown(devices, value=settings.device if settings.device in devices else "auto",
                                         label="Device", elem_id="device")
                    with gr.Row():
                        relative = gr.Checkbox(True, label="Relative motion")
                        adapt_scale = gr.Checkbox(True, label="Adapt movement scale")
                        find_best = gr.Checkbox(False, label="Find best frame (face landmarks)")
                    with gr.Row():
                        smooth = gr.Checkbox(False, label="Smooth keypoints")
                        smooth_cutoff = gr.Slider(0.1, 5.0, value=1.0, step=0.1, label="Smoothing cutoff (Hz; "
                                                  "lower is smoother)")
                        visualize = gr.Checkbox(False, label="Visualisation video")
                    with gr.Row():
                        crop = gr.Radio(["auto", "none"], value="auto", label="Face crop", elem_id="crop",
                                        info="auto: find the face(s) and crop them like VoxCeleb; none: resize the "
                                        "whole picture")
                        faces = gr.Radio(["largest", "all"], value="largest", label="Faces", elem_id="faces")
                    with gr.Row():
                        paste_back = gr.Checkbox(True, label="Paste back into the full picture", elem_id="paste-back")
                        motion_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Motion strength (0 = still, "
                                                 "1 = as driven)", elem_id="motion-scale")
                with gr.Accordion("Motion control (0 = the portrait's own, 1 = the driver's)", open=False,
                                  elem_id="motion-control"):
                    animate_what = gr.Radio(["all", "pose", "expression"], value="all", label="Animate",
                                            elem_id="animate", info="pose: the head only; expression: the face only")
                    with gr.Row():
                        pose_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Head pose", elem_id="pose-scale")
                        expression_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Expression",
                                                     elem_id="expression-scale")
                    with gr.Row():
                        eyes_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Eyes", elem_id="eyes-scale")
                        brows_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Brows", elem_id="brows-scale")
                        mouth_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Mouth", elem_id="mouth-scale")
                    with gr.Row():
                        hold_eyes = gr.Checkbox(False, label="Hold the eye openness", elem_id="hold-eyes")
                        eye_openness = gr.Slider(0.0, 0.6, value=0.3, step=0.01, label="Eye openness (eye aspect "
                                                 "ratio: 0.3 open, < 0.1 closed)", elem_id="eye-openness")
                    with gr.Row():
                        hold_mouth = gr.Checkbox(False, label="Hold the mouth openness", elem_id="hold-mouth")
                        mouth_openness = gr.Slider(0.0, 1.2, value=0.3, step=0.01, label="Mouth openness (lip gap / "
                                                   "mouth width: 0 closed, 0.6 wide)", elem_id="mouth-openness")
                    preview_frame = gr.Slider(0, 300, value=12, step=1, label="Preview at driving frame",
                                              elem_id="preview-frame")
                    preview_button = gr.Button("Preview one frame", elem_id="preview-button")
                button = gr.Button("Animate", variant="primary", elem_id="animate-button")
            with gr.Column():
                result = gr.Video(label="Result (the full picture with paste-back)", interactive=False, height=300,
                                  elem_id="result-video")
                panels = gr.Video(label="Visualisation (source, driving, result, depth)", interactive=False,
                                  height=300, elem_id="visualization-video")
                status = gr.Markdown(elem_id="status")
                preview = gr.Image(label="Preview (one frame; the motion sliders update it)", interactive=False,
                                   height=300, elem_id="preview-image")

        def make_request(source_image, driving_video, checkpoint_path, device_name, use_relative, use_adapt_scale,
                         use_smooth, cutoff, use_best_frame, use_visualize, crop_mode, use_paste_back, face_choice,
                         strength, what=None, pose=None, expression=None, eyes=None, brows=None, mouth=None,
                         eyes_held=False, eyes_open=None, mouth_held=False, mouth_open=None, frame=None):
            motion = {name: value for name, value in (("animate", what), ("pose_scale", pose),
                                                      ("expression_scale", expression), ("eyes_scale", eyes),
                                                      ("brows_scale", brows), ("mouth_scale", mouth),
                                                      ("preview_frame", frame)) if value is not None}
            return AnimationRequest(source_image, driving_video, checkpoint_path, device_name, use_relative,
                                    use_adapt_scale, use_smooth, cutoff, use_best_frame, use_visualize, crop_mode,
                                    use_paste_back, face_choice, strength, **motion,
                                    eye_openness=eyes_open if eyes_held else None,
                                    mouth_openness=mouth_open if mouth_held else None)

        def animate(*values, progress=gr.Progress()):
            outcome = animator(make_request(*values), progress)
            return outcome.video, outcome.visualization, outcome.status

        def show_preview(*values):
            request = make_request(*values)
            if not (request.source_image and request.driving_video and request.checkpoint):
                return None, "Upload a portrait and a driving video to see a preview."
            outcome = animator.preview(request)
            return outcome.frame, outcome.status

        settings_inputs = [source, driving, checkpoint, device, relative, adapt_scale, smooth, smooth_cutoff,
                           find_best, visualize, crop, paste_back, faces, motion_scale]
        motion_inputs = [animate_what, pose_scale, expression_scale, eyes_scale, brows_scale, mouth_scale, hold_eyes,
                         eye_openness, hold_mouth, mouth_openness, preview_frame]
        button.click(animate, settings_inputs + motion_inputs, [result, panels, status], api_name="animate")
        preview_button.click(show_preview, settings_inputs + motion_inputs, [preview, status], api_name="preview")
        for control in (pose_scale, expression_scale, eyes_scale, brows_scale, mouth_scale, eye_openness,
                        mouth_openness, preview_frame):
            control.release(show_preview, settings_inputs + motion_inputs, [preview, status], api_name=False)
        for control in (animate_what, hold_eyes, hold_mouth):
            control.input(show_preview, settings_inputs + motion_inputs, [preview, status], api_name=False)
        add_speech_tab(animator, settings, source, checkpoint, device, result, status, [crop, paste_back, faces])
        add_live_tab(animator, source, checkpoint, device)
        add_live_speech_tab(animator, settings, source, checkpoint, device)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def launch_app(settings: AppSettings, host: str = "127.0.0.1", port: int = 7860, **launch_kwargs) -> gr.Blocks:
    """Build and serve the app (blocks unless ``prevent_thread_lock=True`` is passed)."""
    demo = build_app(settings)
    allowed = [str(SAMPLES_DIR)] if SAMPLES_DIR.is_dir() else []
    demo.launch(server_name=host, server_port=port, max_file_size=int(settings.max_upload_mb * 2**20),
                allowed_paths=allowed, ssr_mode=False, footer_links=["gradio", "settings"], css=CSS,
                **launch_kwargs)
    return demo
