"""Data-parallel sweeps under ``torchrun`` (``torch.distributed``), DESIGN §9.

``torchrun --nproc-per-node N -m tlatlas atlas ...`` starts N processes with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in their environment. Each rank scores the
disjoint stratified slice ``(rank, world_size)`` of the suite (the slicing of
``--shard i/n``), accumulates sums and counts locally, and the sums are added across
ranks with ``all_reduce`` — one collective per tensor, never one per cell — gloo on the
CPU, NCCL on CUDA (one GPU per local rank). Rank 0 alone writes files and prints.

Failure: every step that ends in a collective runs inside :func:`collective_step`. A rank
whose step raises still joins the step's agreement (an ``all_reduce`` of one failure flag
per rank), so every rank raises :class:`RankFailedError` naming the failed rank(s) and
their errors, and no rank goes on to write. A rank killed by a signal cannot take part:
the others' next collective fails (gloo: connection closed; or the process-group
timeout), and ``torchrun`` itself reports the dead rank and its signal. Either way rank 0
writes only after the final reduction succeeded, so no partial atlas is ever written.

Importing this module has no side effect; nothing joins a process group until
:func:`process_group` is entered.
"""

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from tlatlas.atlas.ablation import RoleStats
from tlatlas.atlas.sums import EXAMPLE_KEYS, AtlasSums, canonical_rows
from tlatlas.errors import InvalidInputError, TlatlasError

DEFAULT_TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for a slow (or hung) rank before the run fails."""

FAULT_ENV = "TLATLAS_TEST_FAULT"
"""Test hook, ``ACTION:RANK:BATCHES`` with ACTION ``kill`` or ``raise``: the rank RANK
SIGKILLs itself (``kill``) or raises RuntimeError (``raise``) after scoring BATCHES
batches of its sweep. Used by tests/test_distributed.py to check the failure path."""


class RankFailedError(TlatlasError):
    """One or more ranks of a distributed run failed; the run wrote nothing."""


@dataclass(frozen=True, kw_only=True)
class DistContext:
    """Where this process stands in a ``torch.distributed`` process group."""

    rank: int
    """Global rank, ``0 .. world_size - 1``."""
    world_size: int
    """Number of processes in the group."""
    local_rank: int
    """Rank on this machine (picks the GPU)."""
    backend: str
    """``gloo`` (CPU) or ``nccl`` (CUDA)."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise InvalidInputError(f"rank {self.rank} outside world of size {self.world_size}")
        if self.backend not in ("gloo", "nccl"):
            raise InvalidInputError(f"unknown backend {self.backend!r}; choose gloo or nccl")

    @property
    def is_primary(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device this rank computes on (its own GPU under NCCL)."""
        return torch.device(f"cuda:{self.local_rank}") if self.backend == "nccl" \
            else torch.device("cpu")

    @property
    def shard(self) -> tuple[int, int]:
        """This rank's slice of the suite, as ``--shard i/n`` would name it."""
        return self.rank, self.world_size


def env_context() -> DistContext | None:
    """The process group torchrun (or any launcher) describes in the environment.

    None when ``WORLD_SIZE`` is unset: a plain single-process run. Does not join the group.
    """
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as err:
        raise TlatlasError(f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not "
                           f"integers ({err}); launch with torchrun") from err
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


@contextmanager
def process_group(ctx: DistContext, *, timeout: timedelta = DEFAULT_TIMEOUT
                  ) -> Iterator[DistContext]:
    """Join the process group ``ctx`` describes (env:// rendezvous); leave it on exit."""
    if ctx.backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=ctx.backend, init_method="env://", rank=ctx.rank,
                            world_size=ctx.world_size, timeout=timeout)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- failure


def _agree(ctx: DistContext, step: str, error: BaseException | None) -> None:
    """Collective: every rank learns which ranks failed ``step``; all raise if any did."""
    flags = torch.zeros(ctx.world_size, dtype=torch.int64, device=ctx.device)
    flags[ctx.rank] = int(error is not None)
    dist.all_reduce(flags)
    failed = [r for r, f in enumerate(flags.tolist()) if f]
    if not failed:
        return
    messages: list[str | None] = [None] * ctx.world_size
    mine = f"{type(error).__name__}: {error}" if error is not None else None
    dist.all_gather_object(messages, mine)
    detail = "; ".join(f"rank {r}: {messages[r]}" for r in failed)
    raise RankFailedError(f"{step} failed on rank{'s' if len(failed) > 1 else ''} "
                          f"{', '.join(map(str, failed))} of {ctx.world_size} ({detail}); "
                          "nothing was written") from error


@contextmanager
def collective_step(ctx: DistContext | None, step: str) -> Iterator[None]:
    """Run a step on every rank; if it raises on any rank, raise RankFailedError on all.

    Enter it on every rank around the same work (no-op without a process group).
    """
    if ctx is None:
        yield
        return
    try:
        yield
    except Exception as err:
        _agree(ctx, step, err)
        raise  # pragma: no cover - _agree always raises when this rank failed
    _agree(ctx, step, None)


def fault_hook(ctx: DistContext | None) -> Callable[[int], None] | None:
    """The :data:`FAULT_ENV` test hook for this rank, as an ``on_batch`` callback (or None)."""
    spec = os.environ.get(FAULT_ENV)
    if ctx is None or not spec:
        return None
    action, rank, after = spec.split(":")
    if int(rank) != ctx.rank:
        return None
    seen = [0]

    def hook(_n: int) -> None:
        seen[0] += 1
        if seen[0] < int(after):
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"{FAULT_ENV} fault injected after {seen[0]} batches")

    return hook


# --------------------------------------------------------------------------- reductions


def _all_reduce(ctx: DistContext, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Sum (or ``op``) one tensor over all ranks; returns a new CPU tensor."""
    buf = t.detach().to(ctx.device, copy=True).contiguous()
    dist.all_reduce(buf, op=op)
    return buf.cpu()


def all_reduce_sums(sums: AtlasSums, ctx: DistContext) -> AtlasSums:
    """Atlas sums and counts added over all ranks (fp64, one all_reduce per tensor), and
    the per-example rows of every rank concatenated (one all_gather), in canonical order."""
    rows = {k: v for k, v in sums.tensors.items() if k in EXAMPLE_KEYS}
    totals = {k: v for k, v in sums.tensors.items() if k not in EXAMPLE_KEYS}
    _check_same(ctx, (sums.families, sums.layers, sums.max_offset,
                      sorted((k, tuple(v.shape)) for k, v in totals.items()),
                      sorted((k, tuple(v.shape[:-1])) for k, v in rows.items())),
                "atlas sums")
    tensors = {k: _all_reduce(ctx, totals[k].double()) for k in sorted(totals)}
    if rows:
        gathered: list[dict[str, torch.Tensor] | None] = [None] * ctx.world_size
        dist.all_gather_object(gathered, {k: v.cpu() for k, v in rows.items()})
        tensors.update(canonical_rows({k: torch.cat([g[k] for g in gathered], dim=-1)
                                       for k in rows}))
    return AtlasSums(families=sums.families, layers=sums.layers, max_offset=sums.max_offset,
                     tensors=tensors)


def all_reduce_role_stats(stats: Mapping[str, RoleStats], ctx: DistContext
                          ) -> dict[str, RoleStats]:
    """Mean-ablation reference sums and counts added over all ranks.

    Every hook's sums are stacked into one fp64 tensor and its counts into one int64
    tensor: two collectives in all, whatever the number of hooks.
    """
    names = sorted(stats)
    _check_same(ctx, [(n, tuple(stats[n].sums.shape)) for n in names], "reference stats")
    if not names:
        return {}
    sums = _all_reduce(ctx, torch.stack([stats[n].sums.double() for n in names]))
    counts = _all_reduce(ctx, torch.stack([stats[n].counts.long() for n in names]))
    return {n: RoleStats(sums=sums[i], counts=counts[i]) for i, n in enumerate(names)}


def max_over_ranks(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """The largest value of each key over ranks (wall times: the slowest rank)."""
    keys = sorted(values)
    if not keys:
        return {}
    out = _all_reduce(ctx, torch.tensor([float(values[k]) for k in keys], dtype=torch.float64),
                      op=dist.ReduceOp.MAX)
    return dict(zip(keys, out.tolist(), strict=True))


def _check_same(ctx: DistContext, signature: object, what: str) -> None:
    """Refuse to add tensors laid out differently on different ranks."""
    seen: list[object] = [None] * ctx.world_size
    dist.all_gather_object(seen, signature)
    bad = [r for r, s in enumerate(seen) if s != seen[0]]
    if bad:
        raise RankFailedError(f"{what} differ in layout between rank 0 and rank(s) {bad}: "
                              "every rank must sweep the same families, layers and maps")


__all__ = ["DistContext", "RankFailedError", "env_context", "process_group", "collective_step",
           "all_reduce_sums", "all_reduce_role_stats", "max_over_ranks", "fault_hook",
           "FAULT_ENV", "DEFAULT_TIMEOUT"]
