"""Helpers for the web app's browser tests: serve ``scripts/app.py`` on a free loopback port and drive Debian's
headless Chromium with Playwright for Python (never ``playwright install``: the browser comes from apt)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("DAGAN_CHROMIUM", "/usr/bin/chromium")
# Headless, no sandbox (root in CI), and none of Chromium's own network traffic (the machine is offline).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_missing() -> Optional[str]:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright==1.65.2; no `playwright install`)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium, or set DAGAN_CHROMIUM)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AppServer:
    """``scripts/app.py`` in a child process, run from ``workdir`` (so only that folder's checkpoints are listed);
    gradio keeps its uploads and results under ``workdir/gradio``."""

    def __init__(self, workdir: Path, *arguments: str, startup_timeout: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / "server.log"
        command = [sys.executable, str(REPO_ROOT / "scripts" / "app.py"), "--port", str(self.port), *arguments]
        environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
                       "GRADIO_TEMP_DIR": str(workdir / "gradio")}
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=workdir, env=environment, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        try:
            self.wait_until_ready(startup_timeout)
        except BaseException:
            self.stop()
            raise

    def wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        raise RuntimeError(f"the app did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, characters: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-characters:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def launch_chromium(playwright, user_data_dir: Path):
    """A persistent context in a fresh, empty profile directory (Playwright passes --user-data-dir itself)."""
    if user_data_dir.exists():
        shutil.rmtree(user_data_dir)
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900}, accept_downloads=True)


# Plays the <video> muted for half a second: the browser must decode it, not just receive it.
PLAY_VIDEO_JS = """async (selector) => {
  const video = document.querySelector(selector);
  video.muted = true;
  if (video.readyState < 2) await new Promise((resolve, reject) => {
    video.addEventListener("loadeddata", resolve, {once: true});
    video.addEventListener("error", () => reject(new Error("video error " + (video.error && video.error.code))),
                           {once: true});
  });
  await video.play();
  await new Promise((resolve) => setTimeout(resolve, 500));
  video.pause();
  return {duration: video.duration, time: video.currentTime, width: video.videoWidth, height: video.videoHeight};
}"""

# Records every "n/total frames" progress text that the result box shows while a request runs.
WATCH_PROGRESS_JS = """() => {
  window.progressSeen = [];
  new MutationObserver(() => {
    const box = document.querySelector("#result-video");
    const match = box && box.innerText.match(/\\d+\\/\\d+ frames/);
    if (match && window.progressSeen.at(-1) !== match[0]) window.progressSeen.push(match[0]);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
