"""The web app's live tab in a real browser: Debian's Chromium with a fake camera playing a clip
(--use-file-for-fake-video-capture), driven by Playwright; the frames that come back are the animated portrait."""
from __future__ import annotations

import io
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from app_browser import CHROMIUM, CHROMIUM_ARGS, AppServer, browser_missing  # noqa: E402

SOURCE = REPO_ROOT / "data" / "samples" / "source.png"
DRIVING = REPO_ROOT / "data" / "samples" / "driving.mp4"


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
    from PIL import Image

    frames, seen, deadline = [], set(), time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        images = page.locator("#live-output img")
        source = images.first.get_attribute("src") if images.count() else None
        if source and source not in seen:
            seen.add(source)
            with urllib.request.urlopen(source, timeout=10) as response:
                frames.append(np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")))
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
