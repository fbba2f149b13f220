"""The web app: the request handler on its own (errors, results, model cache), then end to end in headless Chromium.

The browser tests need Playwright for Python and Debian's Chromium (/usr/bin/chromium) and skip without them.
They leave screenshots in test-artifacts/; with DAGAN_UPDATE_DOCS_SCREENSHOT=1 the result page is also copied to
docs/app-screenshot.png (DAGAN_APP_TEST_CHECKPOINT picks another checkpoint for that picture).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

gr = pytest.importorskip("gradio", reason="the web app needs gradio: pip install gradio==6.31.0")

from app_browser import PLAY_VIDEO_JS, WATCH_PROGRESS_JS, AppServer, browser_missing, launch_chromium  # noqa: E402
from conftest import REPO_ROOT, config_path, ffmpeg, load_script, make_test_clip  # noqa: E402
from dagan.app import AnimationRequest, Animator, AppSettings, build_app, find_checkpoints  # noqa: E402
from dagan.checkpoint import export_official  # noqa: E402
from dagan.config import load_config  # noqa: E402
from dagan.io import probe  # noqa: E402
from dagan.model import DaGAN  # noqa: E402

SAMPLES = REPO_ROOT / "data" / "samples"
ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "app-screenshot.png"


@pytest.fixture
def animator(tmp_path, tiny_checkpoint) -> Animator:
    return Animator(AppSettings(checkpoint=tiny_checkpoint, search_root=str(tmp_path), work_dir=str(tmp_path / "work"),
                                device="cpu"))


def request(source=str(SAMPLES / "source.png"), driving=None, checkpoint=None, **options) -> AnimationRequest:
    return AnimationRequest(source, driving, checkpoint, **{"device": "cpu", **options})


def text_file(folder: Path, name: str) -> str:
    path = folder / name
    path.write_text("this is a text file, not a picture or a video\n")
    return str(path)


# The request handler, without a browser.
@pytest.mark.parametrize("source, driving, message", [
    (None, "clip", "Upload a source portrait"),
    ("sample", None, "Upload a driving video"),
])
def test_missing_uploads_are_reported(animator, tiny_checkpoint, short_clip, source, driving, message):
    sources = {None: None, "sample": str(SAMPLES / "source.png")}
    with pytest.raises(gr.Error, match=message):
        animator(request(sources[source], str(short_clip) if driving else None, tiny_checkpoint))


def test_text_file_as_portrait_is_reported(animator, tiny_checkpoint, short_clip, tmp_path):
    with pytest.raises(gr.Error) as caught:
        animator(request(text_file(tmp_path, "notes.txt"), str(short_clip), tiny_checkpoint))
    assert caught.value.message == ("The portrait 'notes.txt' is not an image that can be read; upload a PNG, JPEG, "
                                    "BMP or WebP file.")


@pytest.mark.parametrize("kind, reason", [
    ("text", "it is not a video that can be decoded"),
    ("empty", "the file is empty"),
    ("audio only", "it has no video frames"),
])
def test_unusable_driving_video_is_reported(animator, tiny_checkpoint, tmp_path, kind, reason):
    path = tmp_path / "upload.mp4"
    if kind == "text":
        text_file(tmp_path, path.name)
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:d=0.5", "-c:a", "aac", str(path))
    with pytest.raises(gr.Error) as caught:
        animator(request(driving=str(path), checkpoint=tiny_checkpoint))
    assert caught.value.message == (f"The driving video 'upload.mp4' cannot be used: {reason}. Upload an MP4, MOV, "
                                    "WebM or AVI file.")
    assert str(tmp_path) not in caught.value.message


def test_too_large_upload_is_reported(tmp_path, tiny_checkpoint, short_clip):
    animator = Animator(AppSettings(max_upload_mb=0.05, work_dir=str(tmp_path / "work")))
    with pytest.raises(gr.Error, match=r"The portrait 'source.png' is 0\.1 MB; the limit is 0.05 MB"):
        animator(request(driving=str(short_clip), checkpoint=tiny_checkpoint))


@pytest.mark.parametrize("checkpoint, message", [
    (None, "No checkpoint selected"),
    ("missing.pt", "Checkpoint 'missing.pt' is not one of this server's checkpoints"),
    ("checkpoints/notes.pt", "could not be read as a torch file"),
])
def test_bad_checkpoint_is_reported(animator, short_clip, tmp_path, checkpoint, message):
    if checkpoint == "checkpoints/notes.pt":  # listed (in the app's checkpoints/ folder) but not a checkpoint
        (tmp_path / "checkpoints").mkdir()
        text_file(tmp_path / "checkpoints", "notes.pt")
    with pytest.raises(gr.Error, match=message):
        animator(request(driving=str(short_clip), checkpoint=checkpoint))


def test_unexpected_failure_is_one_line(animator, tiny_checkpoint, short_clip, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(animator.cache, "get", broken)
    with pytest.raises(gr.Error) as caught:
        animator(request(driving=str(short_clip), checkpoint=tiny_checkpoint))
    assert caught.value.message == "Something went wrong (RuntimeError); the server log has the details."


def test_find_best_frame_without_faces_is_reported(animator, tiny_checkpoint, tmp_path):
    clip = make_test_clip(tmp_path / "pattern.mp4", seconds=0.5)  # a test pattern: no face anywhere
    with pytest.raises(gr.Error, match="face"):
        animator(request(driving=str(clip), checkpoint=tiny_checkpoint, find_best_frame=True))


class RecordingProgress(list):
    """Stands in for gradio.Progress, which is falsy too (it has a __len__)."""

    def __call__(self, *args, **kwargs):
        self.append((args, kwargs))


def test_animation_keeps_frames_and_audio_and_reuses_the_model(animator, tiny_checkpoint, short_clip, tmp_path):
    updates = RecordingProgress()
    first = animator(request(driving=str(short_clip), checkpoint=tiny_checkpoint, visualize=True, smooth=True),
                     updates)
    driving = probe(short_clip)
    for path, width in ((first.video, 64), (first.visualization, 5 * 64)):
        info = probe(path)
        assert (info.num_frames, info.size, info.has_audio) == (driving.num_frames, (width, 64), True)
        assert info.fps == pytest.approx(driving.fps)
    assert updates[-1] == (((driving.num_frames, driving.num_frames),), {"desc": "Animating", "unit": "frames"})
    assert "model loaded" in first.status and animator.cache.loads == 1

    silent = make_test_clip(tmp_path / "silent.mp4", seconds=0.6)
    second = animator(request(driving=str(silent), checkpoint=tiny_checkpoint, relative=False, adapt_scale=False))
    assert (probe(second.video).num_frames, probe(second.video).has_audio) == (probe(silent).num_frames, False)
    assert second.visualization is None
    assert "model reused" in second.status and animator.cache.loads == 1
    assert Path(first.video).parent != Path(second.video).parent  # one directory per request


def test_official_checkpoint_uses_the_depth_folder_and_config(tmp_path, short_clip):
    torch.manual_seed(0)
    release = export_official(DaGAN(load_config(config_path("tiny.yaml"))), tmp_path / "release")
    without_depth = Animator(AppSettings(checkpoint=release["checkpoint"], work_dir=str(tmp_path / "work")))
    with pytest.raises(gr.Error, match="official DaGAN checkpoint: it needs the depth network"):
        without_depth(request(driving=str(short_clip), checkpoint=release["checkpoint"]))
    animator = Animator(AppSettings(checkpoint=release["checkpoint"],
                                    depth_checkpoint=str(tmp_path / "release" / "depth"),
                                    config=config_path("tiny.yaml"), work_dir=str(tmp_path / "work")))
    result = animator(request(driving=str(short_clip), checkpoint=release["checkpoint"]))
    assert probe(result.video).num_frames == probe(short_clip).num_frames


def test_checkpoints_are_listed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vox.pth.tar").write_bytes(b"")
    (tmp_path / "checkpoints" / "README.md").write_text("not a checkpoint")
    (tmp_path / "runs" / "exp" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "checkpoints" / "00000100.pt").write_bytes(b"")
    (tmp_path / "runs" / "quickstart" / "models" / "depth").mkdir(parents=True)  # the quickstart's export
    (tmp_path / "runs" / "quickstart" / "models" / "dagan.pt").write_bytes(b"")
    given = tmp_path / "elsewhere.pt"
    given.write_bytes(b"")
    names = find_checkpoints(tmp_path, str(given))
    assert names[0] == "elsewhere.pt"
    assert sorted(names[1:]) == ["checkpoints/vox.pth.tar", "runs/exp/checkpoints/00000100.pt",
                                 "runs/quickstart/models/dagan.pt"]


def test_requests_are_queued_one_at_a_time(tmp_path, tiny_checkpoint):
    demo = build_app(AppSettings(checkpoint=tiny_checkpoint, search_root=str(tmp_path), work_dir=str(tmp_path)))
    assert demo._queue.default_concurrency_limit == 1
    assert [fn.concurrency_limit for fn in demo.fns.values() if fn.name == "animate"] == ["default"]


def test_script_refuses_a_missing_checkpoint(capsys):
    script = load_script("app")
    defaults = script.build_parser().parse_args([])
    assert (defaults.host, defaults.port, defaults.max_upload_mb, defaults.device) == ("127.0.0.1", 7860, 200, "auto")
    assert script.main(["--checkpoint", "missing.pt"]) == 1
    assert "checkpoint 'missing.pt' does not exist" in capsys.readouterr().err


# End to end: the app in a child process, headless Chromium driven by Playwright.
@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("app")
    (workdir / "checkpoints").mkdir()
    chosen = os.environ.get("DAGAN_APP_TEST_CHECKPOINT")
    checkpoint = Path("checkpoints") / (Path(chosen).name if chosen else "tiny.pt")  # listed as found there
    if chosen:
        (workdir / checkpoint).symlink_to(os.path.abspath(chosen))
    else:
        shutil.copyfile(tiny_checkpoint, workdir / checkpoint)
    app = AppServer(workdir, "--checkpoint", str(checkpoint), "--device", "cpu")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path_factory.mktemp("chromium") / "profile")
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#animate-button")
    yield page
    page.close()


def test_browser_animates_uploaded_sample(page, server, short_clip, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#checkpoint input")).to_have_value(re.compile(r"^checkpoints/.+\.pt$"))
    page.locator("#source-image input[type=file]").set_input_files(SAMPLES / "source.png")
    page.locator("#driving-video input[type=file]").set_input_files(short_clip)
    page.wait_for_selector("#source-image img[src]")
    page.wait_for_selector("#driving-video video[src]")
    page.get_by_label("Visualisation video").check()
    page.evaluate(WATCH_PROGRESS_JS)
    page.click("#animate-button")
    result = page.locator("#result-video video[src]")
    expect(result).to_be_attached(timeout=180_000)
    expect(page.locator("#visualization-video video[src]")).to_be_attached(timeout=10_000)

    driving = probe(short_clip)
    expect(page.locator("#status")).to_contain_text(f"Done: {driving.num_frames} frames")
    progress = page.evaluate("window.progressSeen")  # the progress bar counted frames while it worked
    assert any(text.endswith(f"/{driving.num_frames} frames") for text in progress), progress
    assert page.locator("[data-testid=toast-body]").count() == 0, page.locator("[data-testid=toast-body]").all_inner_texts()
    played = page.evaluate(PLAY_VIDEO_JS, "#result-video video")
    assert played["time"] > 0 and played["duration"] > 0 and played["width"] > 0, played

    downloaded = tmp_path / "result.mp4"  # what the page links to, fetched like the browser does
    response = page.request.get(result.get_attribute("src"))
    assert response.ok, response.status
    downloaded.write_bytes(response.body())
    info = probe(downloaded)
    assert (info.num_frames, info.has_audio) == (driving.num_frames, driving.has_audio)
    assert info.fps == pytest.approx(driving.fps)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    if os.environ.get("DAGAN_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "app.png", DOCS_SCREENSHOT)


@pytest.mark.parametrize("name, messages", [
    ("notes.mp4", ["The driving video 'notes.mp4' cannot be used: it is not a video that can be decoded."]),
    ("notes.txt", ["Invalid file type: notes.txt", "Upload a driving video"]),  # the page refuses it before we do
])
def test_browser_shows_error_for_text_file_as_video(page, tmp_path, name, messages):
    from playwright.sync_api import expect

    page.locator("#source-image input[type=file]").set_input_files(SAMPLES / "source.png")
    page.locator("#driving-video input[type=file]").set_input_files(text_file(tmp_path, name))
    page.wait_for_selector("#source-image img[src]")
    page.click("#animate-button")
    for message in messages:
        expect(page.locator("[data-testid=toast-body]").filter(has_text=message)).to_be_visible(timeout=60_000)
    assert "Traceback" not in page.content()
    expect(page.locator("#result-video video")).to_have_count(0)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-error-{Path(name).suffix[1:]}.png"), full_page=True)


def test_browser_bundled_sample_fills_the_inputs(page):
    page.locator("#samples [data-testid=dataset-cell-0-0]").click()
    page.wait_for_selector("#source-image img[src]", timeout=30_000)
    page.wait_for_selector("#driving-video video[src]", timeout=30_000)


# A path that is not listed, existing or not: gradio's own check of the choices, or ours, with no path-specific text.
SAME_ANSWER = r"is not in the list of choices|is not one of this server's checkpoints"


@pytest.mark.parametrize("portrait, checkpoint, message", [
    ("notes.txt", None, "is not an image that can be read"),
    ("fake.png", None, "is not an image that can be read"),
    ("clip.mp4", None, "is not an image that can be read"),
    ("source.png", "/etc/shadow", SAME_ANSWER),
    ("source.png", "/no/such/file.pt", SAME_ANSWER),
])
def test_api_callers_get_readable_errors(server, short_clip, tmp_path, portrait, checkpoint, message):
    """Through gradio's HTTP API (no page), as a script or an attacker on the network would call it."""
    from gradio_client import Client, handle_file

    paths = {"notes.txt": text_file(tmp_path, "notes.txt"), "fake.png": text_file(tmp_path, "fake.png"),
             "clip.mp4": str(short_clip), "source.png": str(SAMPLES / "source.png")}
    client = Client(server.url, verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(paths[portrait]), handle_file(str(short_clip)),
                       checkpoint or "checkpoints/tiny.pt", "cpu", True, True, False, 1.0, False, False,
                       api_name="/animate")


def test_the_app_restores_faces_when_started_with_restore(tiny_checkpoint, short_clip, tmp_path):
    """``app.py --restore MODEL.onnx``: every animation's face goes through the restoration model."""
    import importlib.util
    import warnings

    from dagan.faces.restore import RestoreOptions
    from dagan.io import open_video
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")

    class Brighten(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return (image + 0.2).clamp(-1, 1)
    graph = str(tmp_path / "restore256.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Brighten(), (torch.zeros(1, 3, 256, 256),), graph, input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False)
    settings = dict(checkpoint=tiny_checkpoint, search_root=str(tmp_path), device="cpu")
    plain = Animator(AppSettings(**settings, work_dir=str(tmp_path / "a")))
    restored = Animator(AppSettings(**settings, work_dir=str(tmp_path / "b"), restore=RestoreOptions(graph)))
    options = dict(crop="none", paste_back=False)
    before = plain(request(driving=str(short_clip), checkpoint=tiny_checkpoint, **options))
    after = restored(request(driving=str(short_clip), checkpoint=tiny_checkpoint, **options))
    assert "Restoring faces with gpen_bfr_256" in after.status and after.frames == before.frames
    brightness = [float(next(iter(open_video(result.video))).mean()) for result in (before, after)]
    assert brightness[1] > brightness[0] + 3  # brighter inside the face mask
