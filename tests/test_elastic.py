"""Elastic restarts: torchrun with c10d rendezvous and --max-restarts, one of two CPU (gloo) ranks killed mid-run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, config_path
from dagan.checkpoint import export_official_depth, read_file
from dagan.config import load_config
from dagan.model import DaGAN
from test_training import free_port, gan_overrides

STEPS = 2  # killed after the checkpoint of step 1, resumed for step 2


def torchrun_command(log_dir: Path, depth_dir: Path, port: int, data: tuple[str, ...] = ()) -> list[str]:
    """The multi-node launch of the README (c10d rendezvous, restarts, --resume auto) on one machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test", "--max-restarts=1",
               "--monitor-interval=0.2", str(REPO_ROOT / "train.py"), "--config", config_path("tiny.yaml"),
               "--log_dir", str(log_dir), "--resume", "auto"]
    for override in gan_overrides(str(depth_dir), STEPS, "train_params.checkpoint_every=1",
                                  "train_params.image_every=100",
                                  "train_params.loss_weights.perceptual=[0, 0, 0, 0, 0]",  # no VGG19: faster
                                  *data):
        command += ["--set", override]
    return command


def worker_with_rank(agent: int, rank: int) -> int | None:
    """The pid of the agent's child process that runs ``rank`` (its RANK environment variable), from /proc."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            parent = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
            if int(parent.split()[1]) == agent and \
                    f"RANK={rank}".encode() in (status.parent / "environ").read_bytes().split(b"\0"):
                return int(status.parent.name)
        except (OSError, StopIteration):
            continue  # a process that ended meanwhile
    return None


def data_overrides(data_format: str, tmp_path: Path) -> tuple[str, ...]:
    """Nothing for the folder dataset (data/samples); for ``stream``, data/samples written as a streaming dataset."""
    if data_format == "folders":
        return ()
    pytest.importorskip("litdata")
    from dagan.data import StreamSettings, make_stream

    make_stream(REPO_ROOT / "data" / "samples", tmp_path / "stream", StreamSettings())
    return ("dataset_params.format=stream", f"dataset_params.root_dir={tmp_path / 'stream'}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through Linux /proc")
@pytest.mark.parametrize("data_format", ["folders", "stream"])
def test_killed_rank_restarts_and_ends_with_the_weights_of_an_unbroken_run(tmp_path, data_format):
    data = data_overrides(data_format, tmp_path)
    torch.manual_seed(0)
    depth_dir = tmp_path / "depth"
    export_official_depth(DaGAN(load_config(config_path("tiny.yaml"))), depth_dir)
    # Without TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 the relaunched ranks find the dead ranks' addresses in the
    # rendezvous store that torchrun shares with them, and fail to connect (pytorch/pytorch#135712).
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
                   "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    unbroken = subprocess.run(torchrun_command(tmp_path / "unbroken", depth_dir, free_port(), data),
                              capture_output=True, text=True, timeout=900, env=environment)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    broken_dir = tmp_path / "broken"
    agent = subprocess.Popen(torchrun_command(broken_dir, depth_dir, free_port(), data), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=environment)
    deadline = time.time() + 600
    while not (broken_dir / "checkpoints" / "00000001.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    victim = worker_with_rank(agent.pid, 1)
    assert victim is not None and not (broken_dir / "checkpoints" / f"{STEPS:08d}.pt").exists()
    os.kill(victim, signal.SIGKILL)
    _, error = agent.communicate(timeout=900)
    assert agent.returncode == 0, error[-3000:]
    assert "restart" in error.lower(), error[-3000:]  # the agent relaunched the group
    a = read_file(tmp_path / "unbroken" / "checkpoints" / f"{STEPS:08d}.pt")
    b = read_file(broken_dir / "checkpoints" / f"{STEPS:08d}.pt")
    assert a["step"] == b["step"] == STEPS
    for network in ("generator", "kp_detector", "discriminator"):
        for key, value in a["networks"][network].items():
            assert torch.equal(value, b["networks"][network][key]), f"{network}.{key}"
