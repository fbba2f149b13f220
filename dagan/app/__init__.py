"""The web app: upload a portrait and a driving video (or speech), get the animated portrait back (Gradio).

    python scripts/app.py --checkpoint checkpoints/vox.pt          # then open http://127.0.0.1:7860

One module per part:

* :mod:`~dagan.app.common`: settings, checkpoint discovery, :class:`PipelineCache` (a
  :class:`~dagan.inference.DaGANPipeline` loaded once per checkpoint and device, the last few kept), reading
  uploads with one-line errors;
* :mod:`~dagan.app.video_tab`: :class:`Animator`, one video-driven request from the uploads to the result files;
* :mod:`~dagan.app.speech_tab`: the speech-driven controls and requests;
* :mod:`~dagan.app.page`: :func:`build_app` lays out the page and wires the buttons; :func:`launch_app` serves it.
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it must not phone home

from dagan.app.common import (  # noqa: E402
    KNOWN_ERRORS,
    AppSettings,
    PipelineCache,
    UploadedImage,
    find_checkpoints,
    read_portrait,
)
from dagan.app.page import build_app, launch_app  # noqa: E402
from dagan.app.video_tab import AnimationRequest, AnimationResult, Animator  # noqa: E402

__all__ = ["KNOWN_ERRORS", "AnimationRequest", "AnimationResult", "Animator", "AppSettings", "PipelineCache",
           "UploadedImage", "build_app", "find_checkpoints", "launch_app", "read_portrait"]
