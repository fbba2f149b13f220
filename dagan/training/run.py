"""What every training run needs around its loop: the run directory, statistics, image grids, checkpoints that
survive (atomic, last k kept, resumable), stop requests (SIGTERM / Ctrl-C) and divergence checks."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import sys
import time
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

from dagan.checkpoint import CheckpointError, atomic_save, read_file
from dagan.config import Config, save_config
from dagan.io.files import OutputError, check_writable, guard_output, refuse_to_overwrite, remove_stale_temporaries

CHECKPOINT_PATTERN = re.compile(r"^(\d{8})\.pt$")


FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch has a fused Adam kernel


def adam(parameters, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with torch's fused kernel when every parameter is a floating tensor on a CPU or CUDA device (one
    kernel for all parameters: about 5x faster steps than the per-tensor loop on a CPU), else the default
    implementation. Same update rule and the same state_dict either way, so checkpoints resume across both."""
    parameters = list(parameters)
    fused = bool(parameters) and all(p.is_floating_point() and p.device.type in FUSED_ADAM_DEVICES
                                     for p in parameters)
    return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=fused or None)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the term."""


class TrainingError(ValueError):
    """A problem with the training setup (batch size split, resume file...), with what to do about it."""


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    """Stop with a message naming the first non-finite loss term."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise TrainingDiverged(f"loss term {name!r} became {float(value)} at step {step}; the run stops here and "
                                   "keeps its last good checkpoint (lower the learning rate or check the data)")


class DataWaitInterrupted(Exception):
    """A stop request arrived while the training loop waited for a batch (see ``StopRequest.next_batch``)."""


class StepStart:
    """Where the step in progress began, for a stop that abandons it midway (a stalled store, a rank that stopped):
    the random state, and copies of the buffers of ``modules`` (batch-norm running statistics, which each forward
    pass in training mode updates before any gradient is all-reduced). ``optimizers_stepped``: set by the loop just
    before the first optimizer step, after which the step cannot be taken back."""

    def __init__(self, *modules: Optional[torch.nn.Module]):
        self.rng = rng_state()
        self.modules = [module for module in modules if module is not None]
        self.buffers = [buffer.detach().clone() for module in self.modules for buffer in module.buffers()]
        self.optimizers_stepped = False

    def restore_buffers(self) -> None:
        """Put the buffers back as they were when the step began."""
        with torch.no_grad():
            live = [buffer for module in self.modules for buffer in module.buffers()]
            for buffer, saved in zip(live, self.buffers):
                buffer.copy_(saved)


def stop_while_waiting_for_data(step: int, save: Callable[..., None], start: Optional[StepStart], distributed: bool,
                                logger: "RunLogger") -> None:
    """A stop request abandoned the step in progress (see :func:`stopped_while_waiting`):
    save the last finished step at once.

    ``start`` is None when the last step had finished; otherwise the abandoned step is taken back to ``start``
    (its buffers and random state; its gradients were never applied) and saved as the finished step before it.
    After its optimizers have stepped it cannot be, so nothing is saved and the run resumes from its last
    checkpoint. With several ranks, the others may be blocked in a collective call (waiting for this rank) or
    already gone, so the save makes no collective call (``alone``): rank 0 writes the checkpoint by itself."""
    if start is not None and start.optimizers_stepped:
        logger.message(f"stopped during step {step + 1}, after its optimizers had stepped: nothing saved; resume "
                       "with --resume auto (from the last checkpoint)")
        return
    if start is not None:
        start.restore_buffers()
    save(step, None if start is None else start.rng, alone=distributed)
    logger.message(f"stopped at step {step} while waiting for data; resume with --resume auto")


def stopped_while_waiting(error: BaseException, stop: "StopRequest", distributed: bool, grace_s: float = 2.0) -> bool:
    """Whether ``error`` means that a stop request abandoned the step while the data stalled, rather than a fault:
    a :class:`DataWaitInterrupted` on this rank, or a failed collective call (an all-reduce of gradients, a barrier)
    because another rank stopped while it waited for data and this rank was asked to stop as well (torchrun and
    cluster schedulers send SIGTERM to every rank). The signal handler runs once the failed call has returned, so
    the request may be seen up to ``grace_s`` later."""
    if isinstance(error, DataWaitInterrupted):
        return True
    if not distributed or not isinstance(error, RuntimeError):
        return False
    deadline = time.monotonic() + grace_s
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.05)
    return stop.requested


def _ignore_signal(number, frame) -> None:
    """A handler that does nothing (SIG_DFL instead would make a signal already pending raise OSError)."""


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag the loop checks, so that it can save a checkpoint before exiting.

    ``signal_number`` remembers which signal asked (the run then exits with 128 + it: 130 for Ctrl-C, 143 for
    SIGTERM). A second Ctrl-C stops at once (KeyboardInterrupt), except while a checkpoint is being written
    (inside ``saving()``): the save finishes first, so the last good checkpoint is never lost.
    """

    def __init__(self):
        self.requested = False
        self.signal_number: Optional[int] = None
        self.in_save = False
        self.waiting_for_data = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for number in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not in the main thread: no signal handling
                pass
        return self

    def _handle(self, number, frame) -> None:
        if self.requested and number == signal.SIGINT:
            if self.in_save:
                print("\nstill writing the checkpoint; the run stops right after it", file=sys.stderr)
                return
            raise KeyboardInterrupt
        self.requested, self.signal_number = True, number
        print(f"\nreceived {signal.Signals(number).name}: saving a checkpoint and stopping", file=sys.stderr)
        self._quiet_worker_deaths()
        if self.waiting_for_data:
            raise DataWaitInterrupted

    def _quiet_worker_deaths(self) -> None:
        """After a stop request, the death of a DataLoader worker no longer raises in the loop (torch's SIGCHLD
        handler would): torchrun sends SIGTERM to each rank's whole process group, workers included, and their
        exit must not break off the checkpoint being written. A batch that is then missing ends the step as a
        stalled store does."""
        if hasattr(signal, "SIGCHLD") and signal.SIGCHLD not in self.previous:
            try:
                self.previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, _ignore_signal)
            except ValueError:  # not in the main thread
                pass

    def next_batch(self, batches):
        """``next(batches)``, abandoned with DataWaitInterrupted when a stop request arrives meanwhile (a stalled
        store), so that the run saves its last finished step at once instead of waiting for the store."""
        self.waiting_for_data = True
        try:
            return next(batches)
        finally:
            self.waiting_for_data = False

    @contextlib.contextmanager
    def saving(self):
        """Defer a second Ctrl-C until the block (a checkpoint write) is done."""
        self.in_save = True
        try:
            yield
        finally:
            self.in_save = False

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class CheckpointManager:
    """``<run>/checkpoints/<step:08d>.pt``, written atomically and fsync'ed; only the newest ``keep`` are kept.

    Temporary files of killed runs are removed when the manager is made. A half-written checkpoint is never
    picked: it only ever exists under a temporary name, and ``--resume auto`` also skips, with a warning, a
    newest file that does not load (truncated or emptied by a crash of the file system)."""

    def __init__(self, directory: str, keep: int):
        self.directory, self.keep = directory, keep
        for stale in remove_stale_temporaries(directory):
            warnings.warn(f"removed {stale.name}, a partial checkpoint left by a killed run", stacklevel=2)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"{step:08d}.pt")

    def all(self) -> list[str]:
        names = [name for name in os.listdir(self.directory) if CHECKPOINT_PATTERN.match(name)] \
            if os.path.isdir(self.directory) else []
        return [os.path.join(self.directory, name) for name in sorted(names)]

    def latest(self) -> Optional[str]:
        paths = self.all()
        return paths[-1] if paths else None

    def save(self, state: dict, step: int) -> str:
        path = self.path(step)
        atomic_save(state, path)
        for old in self.all()[:-self.keep]:
            os.remove(old)
        return path

    def resume_state(self, resume: Optional[str]) -> Optional[tuple[str, dict]]:
        """``(path, state)`` to continue from: ``None`` starts fresh; ``"auto"``: the newest checkpoint of this run
        that loads (older ones are tried, with a warning, when the newest is damaged); else the given file."""
        if resume is None:
            return None
        if resume != "auto":
            if not os.path.isfile(resume):
                raise TrainingError(f"--resume {resume!r}: no such checkpoint file (use --resume auto to continue "
                                    "the newest checkpoint of --log_dir)")
            return resume, load_training_state(resume)
        damaged = []
        for path in reversed(self.all()):
            try:
                state = load_training_state(path)
            except CheckpointError as error:
                damaged.append(path)
                warnings.warn(f"skipping a damaged checkpoint: {error}", stacklevel=2)
                continue
            if damaged:
                warnings.warn(f"resuming from {path}, the newest checkpoint that loads", stacklevel=2)
            return path, state
        if damaged:
            raise TrainingError(f"no checkpoint in {self.directory!r} can be read ({len(damaged)} damaged); start a "
                                "new run with another --log_dir, or --overwrite to move this one aside")
        return None


def load_training_state(path: str) -> dict:
    state = read_file(path, "cpu", "training checkpoint")
    if not isinstance(state, dict) or "training" not in state:
        raise TrainingError(f"{path!r} holds no training state (optimizers, step); it cannot be resumed. To start "
                            "from its weights, put them in the config instead")
    return state


# Run directories: never overwrite a run.
RUN_FILES = ("config.yaml", "stats.jsonl")


def has_run(log_dir: str) -> bool:
    """Whether ``log_dir`` holds (part of) a training run: its config, statistics or checkpoints."""
    checkpoints = os.path.join(log_dir, "checkpoints")
    return any(os.path.exists(os.path.join(log_dir, name)) for name in RUN_FILES) or (
        os.path.isdir(checkpoints) and any(CHECKPOINT_PATTERN.match(name) for name in os.listdir(checkpoints)))


def claim_run_directory(log_dir: str, resume: Optional[str], overwrite: bool, is_main: bool = True,
                        inputs: tuple = ()) -> Optional[str]:
    """Make ``log_dir`` ready for this run before any work starts; returns where an old run was moved, if anywhere.

    A directory that holds a run is only continued (``--resume``) or, with ``overwrite``, moved aside to
    ``<log_dir>.old-<time>`` (never deleted); otherwise the run is refused with what to do. The directory must be
    writable, a folder, and its run files (``config.yaml``, ``stats.jsonl``) none of ``inputs`` (the config file,
    ``--init``). Only the main rank moves or creates anything.
    """
    if overwrite and resume is not None:
        raise TrainingError("--overwrite starts a new run and --resume continues one; give only one of them")
    try:
        guard_output(log_dir, (), "--log_dir", "run directory", folder=True)
        for name in RUN_FILES:  # appended to and rewritten on resume: the run directory check below owns them
            refuse_to_overwrite(os.path.join(log_dir, name), inputs, f"run's {name}", "--log_dir")
    except OutputError as error:
        raise TrainingError(str(error)) from None
    moved = None
    if resume is None and has_run(log_dir):
        if not overwrite:
            newest = CheckpointManager(os.path.join(log_dir, "checkpoints"), 1).latest()
            holds = f"checkpoints up to {os.path.basename(newest)}" if newest else "a config and statistics"
            raise TrainingError(f"run directory {log_dir!r} already holds a run ({holds}); continue it with "
                                "--resume auto, start a new run with another --log_dir, or pass --overwrite to move "
                                "the old run aside")
        if is_main:
            moved = f"{log_dir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(log_dir, moved)
    if is_main:
        try:
            check_writable(os.path.join(log_dir, "checkpoints", "00000000.pt"), "run directory")
        except OutputError as error:
            raise TrainingError(str(error)) from None
    return moved


# Resuming with a changed config.
ARCHITECTURE_SECTIONS = ("model_params", "audio_params")  # what the networks are built from
FIXED_ON_RESUME = ("train_params.freeze",)  # what the optimizers hold


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in the checkpoint, value now)}`` for every setting that differs."""
    old, new = flatten(saved), flatten(current)
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}


def reconcile_resumed_config(saved: dict, current: dict, path: str, stage: str, saved_stage: str,
                             learning_rates: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Check the config of a resumed run against its checkpoint's.

    Refuses another stage's checkpoint and any change to the networks (``model_params``), listing the
    differences. Returns the learning rates that changed, ``{optimizer name: (old, new)}``, for
    :func:`apply_learning_rates`; ``learning_rates`` maps optimizer names to their dotted config keys.
    Other changes (steps, logging, data) are allowed and listed on stderr.
    """
    if saved_stage != stage:
        raise TrainingError(f"{path!r} is a {saved_stage}-stage checkpoint, but this run is the {stage} stage; "
                            f"resume it with --set train_params.stage={saved_stage}, or start the {stage} stage with "
                            "a new --log_dir")
    changes = config_changes(saved, current)
    architecture = [key for key in changes if key.split(".")[0] in ARCHITECTURE_SECTIONS or key in FIXED_ON_RESUME]
    if architecture:
        listed = "; ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in architecture[:6])
        raise TrainingError(f"cannot resume {path!r}: the networks in the config differ from the checkpoint's "
                            f"({listed}); resume with the run's own config ({os.path.dirname(os.path.dirname(path))}"
                            "/config.yaml) or start a new run with another --log_dir")
    changed_rates = {name: changes[key] for name, key in learning_rates.items() if key in changes}
    for key, (old, new) in changes.items():
        how = "applied to the optimizer" if key in learning_rates.values() else "takes effect from here"
        print(f"resume: {key} changed from {old!r} to {new!r} ({how})", file=sys.stderr)
    return changed_rates


def apply_learning_rates(optimizer: torch.optim.Optimizer, scheduler: Optional[Any], old: float, new: float) -> None:
    """Scale a resumed optimizer's learning rate (and its scheduler's base) by ``new / old``: the new rate
    applies, with the decays the schedule already made."""
    ratio = new / old
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if scheduler is None:
        return
    scheduler.base_lrs = [rate * ratio for rate in scheduler.base_lrs]
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# Random-number states, in a form torch.load(weights_only=True) accepts.
def rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "numpy_position": int(numpy_state[2]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_position"], 0, 0.0))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class RunLogger:
    """Rank 0's outputs: the resolved config, ``stats.jsonl``, TensorBoard events, PNG grids and a progress bar."""

    def __init__(self, log_dir: str, config: Config, total_steps: int, start_step: int, enabled: bool = True,
                 description: str = "train"):
        self.enabled, self.log_dir = enabled, log_dir
        self.writer = None
        self.bar = None
        if not enabled:
            return
        os.makedirs(os.path.join(log_dir, "images"), exist_ok=True)
        save_config(config, os.path.join(log_dir, "config.yaml"))
        self.stats_path = os.path.join(log_dir, "stats.jsonl")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(log_dir, "tensorboard"), purge_step=start_step or None)
        except ImportError:
            warnings.warn("tensorboard is not installed (pip install 'dagan[train]'); logging to stats.jsonl only")
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc=description, unit="step", dynamic_ncols=True)
        self.started = time.time()

    def step(self, step: int, stats: Optional[dict[str, float]] = None) -> None:
        """Advance the bar; with ``stats``, also write them (a record of the step's averaged losses)."""
        if not self.enabled:
            return
        self.bar.update(step - self.bar.n)
        if stats is None:
            return
        self.bar.set_postfix({name.split("/")[-1]: f"{value:.3g}" for name, value in stats.items()
                              if name.startswith("Loss/")}, refresh=False)
        record = {"step": step, "time": round(time.time() - self.started, 3), **stats}
        with open(self.stats_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in stats.items():
                self.writer.add_scalar(name, value, step)

    def image(self, step: int, grid: np.ndarray) -> None:
        """Save an (H, W, 3) uint8 grid as images/<step>.png (and to TensorBoard)."""
        if not self.enabled:
            return
        from dagan.io.images import write_png

        write_png(os.path.join(self.log_dir, "images", f"{step:08d}.png"), grid)
        if self.writer is not None:
            self.writer.add_image("samples", grid, step, dataformats="HWC")

    def message(self, text: str) -> None:
        """A line for the user on stderr (above the progress bar)."""
        if self.enabled:
            self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def steps_per_epoch(dataset_length: int, batch_size: int) -> int:
    return max(1, math.ceil(dataset_length / batch_size))


def per_rank_batch(batch_size: int, world_size: int, accumulation: int) -> int:
    """The global batch split over ranks and accumulation steps; it must divide evenly."""
    parts = world_size * accumulation
    if batch_size % parts:
        raise TrainingError(f"train batch size {batch_size} does not split over {world_size} rank(s) x "
                            f"{accumulation} accumulation step(s); make it a multiple of {parts}")
    return batch_size // parts
