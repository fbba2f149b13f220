"""Both training stages on the tiny config: smoke runs, exact resume, DDP on CPU, learning, losses, errors."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, config_path, load_script
from dagan.cli.train import main as train_main
from dagan.checkpoint import export_official_depth, read_file
from dagan.config import load_config
from dagan.losses import keypoint_distance_loss
from dagan.model import DaGAN

SAMPLES = str(REPO_ROOT / "data" / "samples")
COMMON = ["train_params.vgg19_weights=random", "train_params.num_workers=0", f"dataset_params.root_dir={SAMPLES}",
          "train_params.log_every=1", "train_params.image_every=2"]


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("depth")
    export_official_depth(DaGAN(load_config(config_path("tiny.yaml"))), folder)
    return str(folder)


def gan_overrides(depth_dir: str, steps: int, *extra: str) -> list[str]:
    return [*COMMON, f"model_params.depth_params.checkpoint_dir={depth_dir}", f"train_params.num_steps={steps}",
            "train_params.checkpoint_every=2", *extra]


def run_train(log_dir, overrides, resume=None) -> int:
    arguments = ["--config", config_path("tiny.yaml"), "--log_dir", str(log_dir)]
    for override in overrides:
        arguments += ["--set", override]
    if resume:
        arguments += ["--resume", resume]
    return train_main(arguments)


def stats(log_dir) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(log_dir, "stats.jsonl"))]


def test_gan_stage_smoke(tmp_path, depth_dir):
    assert run_train(tmp_path, gan_overrides(depth_dir, 2)) == 0
    records = stats(tmp_path)
    assert [record["step"] for record in records] == [1, 2]
    expected = {"perceptual", "generator_gan", "feature_matching", "equivariance_value", "equivariance_jacobian",
                "kp_distance", "discriminator_gan"}
    assert {name.split("/")[1] for name in records[0] if name.startswith("Loss/")} == expected
    assert all(torch.isfinite(torch.tensor(value)) for record in records for value in record.values()
               if isinstance(value, float))
    assert os.path.isfile(tmp_path / "config.yaml") and os.path.isfile(tmp_path / "images" / "00000002.png")
    state = read_file(tmp_path / "checkpoints" / "00000002.pt")
    assert state["step"] == 2 and set(state["training"]["optimizers"]) == {"generator", "kp_detector",
                                                                             "discriminator"}
    model = DaGAN.from_checkpoint(tmp_path / "checkpoints" / "00000002.pt")  # usable for inference as it is
    assert model.config.model_params.common_params.num_kp == 5


def test_depth_stage_smoke_writes_official_depth(tmp_path):
    overrides = [*COMMON, "train_params.stage=depth", "depth_train_params.num_steps=2",
                 "depth_train_params.batch_size=2", "depth_train_params.uncertainty=true",
                 "train_params.checkpoint_every=2"]
    assert run_train(tmp_path, overrides) == 0
    records = stats(tmp_path)
    assert {"Loss/photometric", "Loss/smoothness"} <= set(records[-1])
    encoder = read_file(tmp_path / "depth" / "encoder.pth")
    assert "encoder.conv1.weight" in encoder and encoder["height"] == 256
    # Stage 2 can start from it.
    model = DaGAN(load_config(config_path("tiny.yaml")))
    from dagan.model import load_official_depth_into
    load_official_depth_into(model, tmp_path / "depth")


def test_resume_is_bit_identical(tmp_path, depth_dir):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train(straight, gan_overrides(depth_dir, 4)) == 0
    assert run_train(resumed, gan_overrides(depth_dir, 2)) == 0
    assert run_train(resumed, gan_overrides(depth_dir, 4), resume="auto") == 0
    a = read_file(straight / "checkpoints" / "00000004.pt")
    b = read_file(resumed / "checkpoints" / "00000004.pt")
    for network in ("generator", "kp_detector", "discriminator"):
        for key, value in a["networks"][network].items():
            assert torch.equal(value, b["networks"][network][key]), f"{network}.{key}"
    assert [r["Loss/perceptual"] for r in stats(straight)][2:] == [r["Loss/perceptual"] for r in stats(resumed)][2:]


def test_stop_request_saves_a_checkpoint(tmp_path, depth_dir, monkeypatch):
    from dagan.training import run as run_module
    original = run_module.StopRequest.__enter__

    def enter_and_request(self):
        original(self)
        self.requested = True  # as if SIGTERM arrived during the first step
        return self
    monkeypatch.setattr(run_module.StopRequest, "__enter__", enter_and_request)
    assert run_train(tmp_path, gan_overrides(depth_dir, 50)) == 0  # a stop without a signal (set in code)
    assert os.listdir(tmp_path / "checkpoints") == ["00000001.pt"]


def test_nan_loss_stops_and_names_the_term(tmp_path, depth_dir, capsys, monkeypatch):
    import dagan.training.gan_stage as gan_stage
    monkeypatch.setattr(gan_stage, "perceptual_loss", lambda *args: torch.tensor(float("nan")))
    assert run_train(tmp_path, gan_overrides(depth_dir, 3)) == 1
    error = capsys.readouterr().err
    assert "'perceptual'" in error and "step 0" in error
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def test_bad_roots_and_settings_give_clear_errors(tmp_path, depth_dir, capsys):
    assert run_train(tmp_path / "a", [*gan_overrides(depth_dir, 1), f"dataset_params.root_dir={tmp_path}/none"]) == 1
    assert "none" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    assert run_train(tmp_path / "b", [*gan_overrides(depth_dir, 1), f"dataset_params.root_dir={empty}"]) == 1
    assert "empty" in capsys.readouterr().err
    assert run_train(tmp_path / "c", [*COMMON, "train_params.num_steps=1"]) == 1
    assert "model_params.depth_params.checkpoint_dir" in capsys.readouterr().err
    assert run_train(tmp_path / "d", [*gan_overrides(depth_dir, 1), "train_params.grad_accumulation=3"]) == 1
    assert "multiple of 3" in capsys.readouterr().err
    assert run_train(tmp_path / "e", gan_overrides(depth_dir, 1), resume=str(tmp_path / "nope.pt")) == 1
    assert "--resume auto" in capsys.readouterr().err


def test_broken_video_is_skipped(tmp_path, depth_dir):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    os.symlink(os.path.join(SAMPLES, "driving.mp4"), root / "train" / "good.mp4")
    (root / "train" / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.warns(UserWarning, match="broken"):
        assert run_train(tmp_path / "run", [*gan_overrides(depth_dir, 1), f"dataset_params.root_dir={root}"]) == 0


def test_keypoint_distance_has_gradient_when_too_close():
    value = torch.tensor([[[0.0, 0.0], [0.05, 0.0], [0.9, 0.9]]], requires_grad=True)
    loss = keypoint_distance_loss(value, margin=0.2, form="hinge")
    loss.backward()
    assert loss > 0 and value.grad[0, 0, 0] > 0 > value.grad[0, 1, 0]  # descent pushes the close pair apart
    assert value.grad[0, 2].abs().sum() == 0  # the far keypoint is left alone
    value.grad = None
    reference = keypoint_distance_loss(value, margin=0.2, form="sign")
    reference.backward()
    assert reference > 0 and value.grad.abs().sum() == 0  # the reference's form has no gradient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_rank_gloo_ddp_matches_one_rank(tmp_path, depth_dir):
    """Two CPU ranks (gloo) with 2 samples each against one process with the same global batch of 4 in two
    accumulated micro-batches of 2 (so that BatchNorm sees the same 2 samples: SyncBatchNorm needs GPUs).

    The ranks must stay identical (the run checks it at every checkpoint and fails otherwise), the losses must
    agree, and after one step the parameters must agree except where Adam's first update, lr * sign(gradient),
    flips for gradients that are zero up to float rounding (a difference of exactly 2 lr).
    """
    overrides = gan_overrides(depth_dir, 1, "train_params.batch_size=4", "train_params.image_every=100",
                              "train_params.checkpoint_every=1")
    one = tmp_path / "one"
    assert run_train(one, [*overrides, "train_params.grad_accumulation=2"]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(REPO_ROOT / "train.py"), "--config", config_path("tiny.yaml"), "--log_dir", str(tmp_path / "two")]
    for override in overrides:
        command += ["--set", override]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    first_one, first_two = stats(one)[0], stats(tmp_path / "two")[0]
    for name in ("Loss/perceptual", "Loss/equivariance_value", "Loss/generator_gan", "Loss/discriminator_gan"):
        assert abs(first_one[name] - first_two[name]) <= 1e-4 * abs(first_one[name]), (name, first_one, first_two)
    a = read_file(one / "checkpoints" / "00000001.pt")["networks"]
    b = read_file(tmp_path / "two" / "checkpoints" / "00000001.pt")["networks"]
    differences = torch.cat([(a[net][key] - b[net][key]).abs().flatten()
                             for net in ("generator", "kp_detector", "discriminator") for key in a[net]
                             if a[net][key].is_floating_point() and "running" not in key])
    learning_rate = load_config(config_path("tiny.yaml")).train_params.lr_generator
    assert float((differences > 1e-5).float().mean()) < 0.01
    assert float(differences.max()) <= 2 * learning_rate * 1.01


@pytest.mark.slow
def test_gan_stage_learns_to_reconstruct(tmp_path, depth_dir):
    """50 steps on the sample clip at 64x64: reconstruction L1 of held-back pairs of the clip drops >= 30%."""
    from dagan.model import load_official_depth_into
    from dagan.data import FramesDataset
    assert run_train(tmp_path, gan_overrides(depth_dir, 50, "train_params.batch_size=2", "train_params.log_every=50",
                                             "train_params.image_every=1000", "train_params.checkpoint_every=50")) == 0
    config = load_config(config_path("tiny.yaml"), [f"dataset_params.root_dir={SAMPLES}"])
    dataset = FramesDataset.from_config(config.dataset_params, is_train=True, seed=123)
    pairs = [dataset.sample(key) for key in range(8)]
    source, driving = torch.stack([p["source"] for p in pairs]), torch.stack([p["driving"] for p in pairs])

    def reconstruction_l1(model: DaGAN) -> float:
        with torch.no_grad():
            return float((model.eval().reconstruct(source, driving).prediction - driving).abs().mean())

    torch.manual_seed(0)
    untrained = DaGAN(config)
    load_official_depth_into(untrained, depth_dir)
    before = reconstruction_l1(untrained)
    after = reconstruction_l1(DaGAN.from_checkpoint(tmp_path / "checkpoints" / "00000050.pt"))
    print(f"reconstruction L1 before {before:.4f}, after 50 steps {after:.4f}")
    assert after <= 0.7 * before, (before, after)


def test_export_checkpoint_script(tmp_path, depth_dir):
    assert run_train(tmp_path / "run", gan_overrides(depth_dir, 2)) == 0
    module = load_script("export_checkpoint")
    trained = tmp_path / "run" / "checkpoints" / "00000002.pt"
    assert module.main(["--checkpoint", str(trained), "--inference", str(tmp_path / "dagan.pt"),
                        "--official", str(tmp_path / "release")]) == 0
    inference = read_file(tmp_path / "dagan.pt")
    assert "training" not in inference and set(inference["networks"]) >= {"generator", "kp_detector"}
    from dagan.model import load_official
    official = load_official(tmp_path / "release" / "checkpoint.pth.tar", tmp_path / "release" / "depth",
                             config_path("tiny.yaml"))
    ours = DaGAN.from_checkpoint(trained)
    for name in ("generator", "kp_detector", "depth_encoder"):
        for key, value in ours.network_state_dicts()[name].items():
            assert torch.equal(value, official.network_state_dicts()[name][key])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, depth_dir):
    import signal
    import time
    command = [sys.executable, str(REPO_ROOT / "train.py"), "--config", config_path("tiny.yaml"), "--log_dir",
               str(tmp_path)]
    for override in gan_overrides(depth_dir, 10000, "train_params.checkpoint_every=10000"):
        command += ["--set", override]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    stats_path = tmp_path / "stats.jsonl"
    deadline = time.time() + 300
    while not (stats_path.exists() and stats_path.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, error = process.communicate(timeout=300)
    assert process.returncode == 143, error[-2000:]  # 128 + SIGTERM, after saving: `train && export` stops here
    assert "resume with --resume auto" in error
    saved = os.listdir(tmp_path / "checkpoints")
    assert len(saved) == 1 and int(saved[0][:8]) >= 2


def test_fused_adam_matches_the_reference_update_and_resumes_across_kinds():
    from dagan.training.run import adam
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    fused_parameters = [value.clone().requires_grad_() for value in start]
    plain_parameters = [value.clone().requires_grad_() for value in start]
    fused = adam(fused_parameters, 1e-2, betas=(0.5, 0.999))
    plain = torch.optim.Adam(plain_parameters, lr=1e-2, betas=(0.5, 0.999))
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        gradients = [torch.randn_like(value) for value in start]
        for parameters, optimizer in ((fused_parameters, fused), (plain_parameters, plain)):
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = gradient.clone()
            optimizer.step()
    for a, b in zip(fused_parameters, plain_parameters):
        assert torch.allclose(a, b, atol=1e-6) and not torch.equal(a, torch.zeros_like(a))
    # A state saved by one kind loads into the other and continues identically.
    resumed = adam([value.detach().clone().requires_grad_() for value in plain_parameters], 1e-2, (0.5, 0.999))
    resumed.load_state_dict(copy.deepcopy(plain.state_dict()))  # as from a file: no shared state tensors
    gradients = [torch.randn_like(value) for value in start]
    for parameters, optimizer in ((resumed.param_groups[0]["params"], resumed), (plain_parameters, plain)):
        for parameter, gradient in zip(parameters, gradients):
            parameter.grad = gradient.clone()
        optimizer.step()
    for a, b in zip(resumed.param_groups[0]["params"], plain_parameters):
        assert torch.allclose(a, b, atol=1e-6)
    # Integer or meta tensors fall back to the default implementation.
    assert not adam([torch.zeros(2, device="meta", requires_grad=True)], 1e-3).defaults["fused"]


# Run directories and resuming: a run is never overwritten, damaged or mixed with another.
@pytest.fixture(scope="module")
def three_step_run(tmp_path_factory, depth_dir):
    """A finished 3-step GAN run with a checkpoint after every step; tests work on copies of it."""
    run = tmp_path_factory.mktemp("three-steps") / "run"
    assert run_train(run, gan_overrides(depth_dir, 3, "train_params.checkpoint_every=1")) == 0
    return run


def copy_of(run, tmp_path):
    import shutil
    return shutil.copytree(run, tmp_path / "run")


def test_rerun_into_a_run_directory_is_refused_and_overwrite_moves_it_aside(three_step_run, tmp_path, depth_dir,
                                                                             capsys):
    from dagan.training.run import claim_run_directory
    run = copy_of(three_step_run, tmp_path)
    before = sorted(os.listdir(run / "checkpoints"))
    assert run_train(run, gan_overrides(depth_dir, 2)) == 1
    error = capsys.readouterr().err.strip()
    assert "already holds a run (checkpoints up to 00000003.pt)" in error and "--resume auto" in error
    assert "--overwrite" in error and len(error.splitlines()) == 1
    assert sorted(os.listdir(run / "checkpoints")) == before
    moved = claim_run_directory(str(run), None, overwrite=True)
    assert sorted(os.listdir(os.path.join(moved, "checkpoints"))) == before  # moved aside, never deleted
    assert os.listdir(run / "checkpoints") == []  # the new run starts in an empty directory


def test_resume_auto_falls_back_to_the_newest_readable_checkpoint(three_step_run, tmp_path, depth_dir):
    run = copy_of(three_step_run, tmp_path)
    newest = run / "checkpoints" / "00000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a crash of the machine
    (run / "checkpoints" / "00000002.pt").write_bytes(b"")  # emptied
    with pytest.warns(UserWarning, match="resuming from .*00000001.pt"):
        assert run_train(run, gan_overrides(depth_dir, 2, "train_params.checkpoint_every=1"), resume="auto") == 0
    assert read_file(run / "checkpoints" / "00000002.pt")["step"] == 2  # continued from step 1


def test_resume_applies_a_changed_learning_rate_and_refuses_other_networks(three_step_run, tmp_path, depth_dir,
                                                                           capsys):
    run = copy_of(three_step_run, tmp_path)
    changed = gan_overrides(depth_dir, 4, "train_params.lr_generator=1e-5", "train_params.checkpoint_every=1")
    assert run_train(run, changed, resume="auto") == 0
    assert "lr_generator changed from 0.0002 to 1e-05 (applied to the optimizer)" in capsys.readouterr().err
    state = read_file(run / "checkpoints" / "00000004.pt")
    assert state["training"]["optimizers"]["generator"]["param_groups"][0]["lr"] == pytest.approx(1e-5)
    assert state["training"]["optimizers"]["kp_detector"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    wider = "model_params.generator_params.block_expansion=16"
    assert run_train(run, gan_overrides(depth_dir, 6, wider), resume="auto") == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "model_params.generator_params.block_expansion: 8 -> 16" in error


def test_a_checkpoint_of_the_other_stage_is_named(tmp_path, depth_dir, capsys):
    from dagan.checkpoint import atomic_save
    from dagan.config import config_to_dict
    config = load_config(config_path("tiny.yaml"))
    atomic_save({"format": "dagan", "version": 1, "config": config_to_dict(config), "step": 1, "networks": {},
                 "training": {"stage": "depth"}}, tmp_path / "checkpoints" / "00000001.pt")
    assert run_train(tmp_path, gan_overrides(depth_dir, 2), resume="auto") == 1
    error = capsys.readouterr().err.strip()
    assert "is a depth-stage checkpoint" in error and "train_params.stage=depth" in error
    assert len(error.splitlines()) == 1


def test_stale_temporary_checkpoints_are_removed_but_live_ones_kept(tmp_path):
    from dagan.io.files import temporary_sibling
    from dagan.training.run import CheckpointManager
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    (tmp_path / "checkpoints").mkdir()
    live = temporary_sibling(tmp_path / "checkpoints" / "00000006.pt")
    dead = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    live.write_bytes(b"being written"), dead.write_bytes(b"left by a killed run")
    with pytest.warns(UserWarning, match="partial checkpoint"):
        CheckpointManager(str(tmp_path / "checkpoints"), keep=3)
    assert live.exists() and not dead.exists()


def test_a_second_ctrl_c_waits_for_the_checkpoint_being_written():
    import signal
    from dagan.training.run import StopRequest
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: save and stop
        assert stop.requested and stop.signal_number == signal.SIGINT
        with stop.saving():
            os.kill(os.getpid(), signal.SIGINT)  # second one during the save: deferred, nothing raised
            written = True
        assert written
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # outside a save it stops at once


def test_full_disk_during_a_checkpoint_save_is_one_line(tmp_path, monkeypatch):
    import dagan.io.files as files
    from dagan.checkpoint import CheckpointError, atomic_save
    (tmp_path / "00000002.pt").write_bytes(b"older checkpoint")

    def full_disk_save(obj, target, *args, **kwargs):
        target.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2176 vs 2064")
    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(files, "disk_is_nearly_full", lambda directory: True)
    with pytest.raises(CheckpointError) as error:
        atomic_save({"step": 2}, tmp_path / "00000002.pt")
    message = str(error.value)
    assert "could not write" in message and "00000002.pt" in message and "the disk is full" in message
    assert "\n" not in message and "enforce fail" not in message
    assert os.listdir(tmp_path) == ["00000002.pt"] and (tmp_path / "00000002.pt").read_bytes() == b"older checkpoint"


def test_a_step_abandoned_midway_is_saved_as_it_began_or_not_at_all():
    """A stop during a step (a stalled store, a rank that stopped) saves the step before it: the forward pass of
    the abandoned step moved the batch-norm statistics, which are put back; once its optimizers have stepped it
    cannot be taken back, and nothing is saved."""
    from dagan.training.run import StepStart, stop_while_waiting_for_data

    class Messages(list):
        def message(self, text):
            self.append(text)

    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = {key: value.clone() for key, value in network.state_dict().items()}
    start = StepStart(network, None)
    network(torch.randn(2, 3, 8, 8))  # the abandoned step's forward pass
    assert not torch.equal(network[1].running_mean, before["1.running_mean"])
    saved, messages = [], Messages()

    def save(step, rng, alone=False):
        saved.append((step, rng, alone, {key: value.clone() for key, value in network.state_dict().items()}))

    stop_while_waiting_for_data(5, save, start, True, messages)
    (step, rng, alone, state), = saved
    assert step == 5 and alone and rng is start.rng
    for key, value in before.items():
        assert torch.equal(state[key], value), key

    saved.clear()
    start = StepStart(network)
    start.optimizers_stepped = True
    stop_while_waiting_for_data(5, save, start, True, messages)
    assert saved == [] and "nothing saved" in messages[-1]
