"""Process-group helpers that also work in a single process without torch.distributed initialised.

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; plain ``python train.py`` does not, and then everything
here degrades to rank 0 of 1.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> DistributedContext:
    """Initialise the process group when launched by torchrun (nccl on GPUs, gloo on CPUs) and pick the device."""
    if not launched_by_torchrun():
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistributedContext(0, 0, 1, device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if rank == 0 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0 \
            and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        warnings.warn("torchrun --max-restarts shares its rendezvous store with the ranks, so restarted ranks can "
                      "find the addresses of the dead ones and fail to connect (pytorch/pytorch#135712); launch "
                      "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun ...")
    return DistributedContext(rank, local_rank, world_size, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launch_share() -> tuple[int, int]:
    """(rank, world size) of this process among those launched together: the process group's when initialised,
    else torchrun's RANK / WORLD_SIZE (no process group needed: batch commands split their items by these), else
    (0, 1). Rank r of w takes the items i with i % w == r."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launched_by_torchrun():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def use_local_gpu() -> None:
    """Under torchrun on a machine with GPUs, make ``cuda`` mean this rank's own GPU (LOCAL_RANK), one per rank."""
    if launched_by_torchrun() and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar statistics over ranks (identity in a single process)."""
    if get_world_size() == 1 or not values:
        return values
    names = sorted(values)
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {name: float(value) / get_world_size() for name, value in zip(names, tensor.tolist())}


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on at least one (e.g. a stop request seen by one process)."""
    if get_world_size() == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def check_in_sync(module: torch.nn.Module, device: torch.device, tolerance: float = 1e-6) -> None:
    """Raise when the ranks' copies of ``module``'s parameters differ (they must stay identical under DDP)."""
    if get_world_size() == 1:
        return
    sums = torch.stack([parameter.detach().double().sum() for parameter in module.parameters()]).to(device)
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    spread = float((high - low).abs().max())
    if spread > tolerance * max(1.0, float(sums.abs().max())):
        raise RuntimeError(f"DDP ranks diverged: parameter sums differ by {spread:.3g} across ranks")
