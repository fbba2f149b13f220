"""Peak memory of a call (CPU resident set, GPU allocations) and the largest batch that fits a budget."""
from __future__ import annotations

import ctypes
import os
from typing import Callable, NamedTuple, Optional

import torch

GIB = 2 ** 30
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _status_bytes(field: str) -> Optional[int]:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def release_freed_memory() -> None:
    """Make the resident set follow live memory (glibc): large blocks are mapped and unmapped per allocation
    (threshold 64 KiB, no longer adaptive) and free heap pages go back to the system. Slower allocations: use it
    for memory measurements, not timings. A no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class PeakMemory(NamedTuple):
    """Bytes: CPU peak resident set during the call above the resident set before it, and GPU peak allocation
    above the allocation before it (None when not measurable / not on a GPU)."""

    cpu_rss: Optional[int]
    gpu_allocated: Optional[int]


def peak_memory(function: Callable[[], object], device: torch.device) -> PeakMemory:
    """Run ``function`` once and measure its peak memory increments (see :class:`PeakMemory`)."""
    cpu = None
    gpu_before = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    release_freed_memory()
    rss_before = _status_bytes("VmRSS") if reset_peak_rss() else None
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if rss_before is not None:
        cpu = max(0, _status_bytes("VmHWM") - rss_before)
    gpu = torch.cuda.max_memory_allocated() - gpu_before if gpu_before is not None else None
    return PeakMemory(cpu, gpu)


def largest_batch(batch_sizes: list[int], peaks: list[int], budget_bytes: float, resident_bytes: float = 0.0
                  ) -> Optional[int]:
    """Largest batch whose predicted peak fits ``budget_bytes``: a least-squares line peak = a + b * batch through
    the measured (batch, peak) points, plus the ``resident_bytes`` already in use (weights, process)."""
    if len(batch_sizes) < 2 or len(set(batch_sizes)) < 2:
        return None
    count = len(batch_sizes)
    mean_batch, mean_peak = sum(batch_sizes) / count, sum(peaks) / count
    slope = (sum((b - mean_batch) * (p - mean_peak) for b, p in zip(batch_sizes, peaks))
             / sum((b - mean_batch) ** 2 for b in batch_sizes))
    intercept = mean_peak - slope * mean_batch
    if slope <= 0:
        return None
    return max(0, int((budget_bytes - resident_bytes - intercept) // slope))


def resident_bytes(device: torch.device) -> float:
    """What the process holds now: CPU resident set, or GPU allocations on a GPU."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated())
    return float(_status_bytes("VmRSS") or 0)


def physical_cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
