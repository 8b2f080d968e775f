"""Device memory: how much a sweep may use, and what to do when it runs out.

Sweeps (the atlas, and later steering) choose their batch size from a memory budget
(:mod:`tlatlas.atlas.batching` estimates what one example costs). The budget defaults to
what the device has free, times :data:`SAFETY_FRACTION`:

- CUDA: ``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds reserved
  but unused (that is free to this process, though the driver counts it as used);
- CPU: ``MemAvailable`` from ``/proc/meminfo`` (the kernel's estimate of what can be
  allocated without swapping), else the free physical pages.

When an estimate is wrong anyway, :func:`is_out_of_memory` recognises the error, so the
caller can halve its batch and retry (and say so through :class:`MemoryBackoffWarning`:
the library never prints).
"""

import gc
import os
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

SAFETY_FRACTION = 0.8
"""Share of the free memory a default budget takes (the rest covers the allocator's
fragmentation, other processes and what the estimate leaves out)."""


class MemoryBackoffWarning(RuntimeWarning):
    """A sweep ran out of memory and retried with a smaller batch (the message says which;
    a RuntimeWarning, so Python shows it by default, unlike a ResourceWarning)."""


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_memory_bytes(device: torch.device | str) -> int:
    """Bytes this process could still allocate on ``device`` (CUDA or CPU RAM)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + max(cached, 0))
    available = _meminfo_available()
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - not Linux nor POSIX sysconf
        return 4 * 2**30


def default_budget(device: torch.device | str, fraction: float = SAFETY_FRACTION) -> int:
    """The memory budget of a sweep on ``device``: its free memory times ``fraction``."""
    return int(free_memory_bytes(device) * fraction)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA's, or the CPU allocator's)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def release_cached_memory(device: torch.device | str) -> None:
    """Drop unreachable tensors and, on CUDA, return cached blocks to the driver (so a
    retry after an out-of-memory error starts from a clean allocator)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages that ops allocate and are still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}  # storage address -> live tensors viewing it
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= self.sizes.pop(key)

    def _track(self, t: torch.Tensor, key: int) -> None:
        self.refs[key] = self.refs.get(key, 0) + 1
        weakref.finalize(t, self._drop, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if key in self.refs:  # a view of (or in-place op on) a tensor made here
                self._track(t, key)
            elif key not in inputs and size > 0:  # a new allocation
                self.sizes[key] = size
                self.current += size
                self.peak = max(self.peak, self.current)
                self._track(t, key)
        return out


class PeakTensorMemory:
    """Peak bytes of the tensors allocated inside the block, above what was allocated
    before it (``peak_bytes`` after exit).

    CUDA: the caching allocator's ``max_memory_allocated``. CPU: every op's output storage
    is counted from allocation until its last tensor dies (a ``TorchDispatchMode``; it
    slows a forward down, so it is for tests and small benchmarks). Model weights and
    other tensors made before the block do not count.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0

    def __enter__(self) -> "PeakTensorMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = _LiveTensorBytes()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._mode.__exit__(*exc)
            self.peak_bytes = self._mode.peak


__all__ = ["SAFETY_FRACTION", "MemoryBackoffWarning", "PeakTensorMemory", "default_budget",
           "free_memory_bytes", "is_out_of_memory", "release_cached_memory"]
