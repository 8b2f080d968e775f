"""Experiment blocks: one registered block per question the origin report asked.

A block is declarative: an id, a priority (lower runs first), the one-line question it
answers, its parameters per size, a cost estimate, and ``run(ctx) -> dict`` returning a
JSON-able value. ``summarize(results)`` turns finished results into claims, threats and
gems (:mod:`experiments.claims`): it gets every block's successful records (``results[id]``,
each with its ``path``), so a block may compare itself with another block's results; every
statement cites the result files its values come from.

Registering is ``register_block(Block(...))``, which refuses duplicates. Users add their
own blocks the same way from a module named in ``$TLATLAS_EXPERIMENT_PLUGINS``
(comma-separated import paths), imported when the registry is first used.
"""

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SIZES = ("smoke", "small", "full")
"""Run sizes: ``smoke`` proves the pipeline on a CPU in minutes, ``full`` is the study."""

PLUGINS_ENV = "TLATLAS_EXPERIMENT_PLUGINS"


@dataclass(frozen=True, kw_only=True)
class Cost:
    """A block's estimated cost for one model and seed."""

    seconds: float
    """Wall time on a 2-core CPU for a 135M-parameter model (scale by model size)."""
    memory_gb: float = 2.0
    """Peak host (or GPU) memory."""
    gpus: float = 0.0
    """GPUs to request from a cluster scheduler (0: CPU is fine)."""


def size_costs(smoke: float, small: float, full: float, *, memory: float = 2.0,
               full_memory: float | None = None) -> dict[str, Cost]:
    """Costs per size from seconds per size; ``full`` asks for a GPU."""
    return {"smoke": Cost(seconds=smoke, memory_gb=memory),
            "small": Cost(seconds=small, memory_gb=memory),
            "full": Cost(seconds=full, memory_gb=full_memory or memory, gpus=1.0)}


@dataclass(frozen=True, kw_only=True)
class Statement:
    """One sentence of claims.md / threats.md / gems.md, backed by results."""

    kind: str
    """``claim``, ``threat`` or ``gem``."""
    text: str
    """The sentence, with the measured values written into it."""
    sources: tuple[str, ...]
    """Result files (relative to the experiments root) the values come from."""

    def __post_init__(self) -> None:
        if self.kind not in ("claim", "threat", "gem"):
            raise ValueError(f"statement kind must be claim, threat or gem, got {self.kind!r}")
        if not self.sources:
            raise ValueError("a statement must cite at least one result file")


@dataclass(frozen=True, kw_only=True)
class Block:
    """One experiment."""

    id: str
    """Short stable id used on the command line and in file names."""
    priority: int
    """Lower runs first."""
    question: str
    """The one-line question the block answers."""
    params: Mapping[str, Mapping[str, Any]]
    """Parameters per size (``smoke``/``small``/``full``); recorded in every result."""
    cost: Mapping[str, Cost]
    """Estimated cost per size."""
    run: Callable[[Any], dict]
    """``run(ctx: experiments.context.BlockContext) -> dict`` (JSON-able)."""
    models: int = 1
    """How many models the block compares (2: needs ``--models A B``)."""
    seeded: bool = True
    """False when the seed changes nothing (e.g. a timing): run once, with the first seed."""
    summarize: Callable[[dict[str, list[dict]]], list[Statement]] | None = None
    """Statements from finished records: ``results[block_id]`` lists records (with ``path``)."""
    tags: tuple[str, ...] = field(default=())
    """Free-form labels (``atlas``, ``lora``, ``steering``, ``quant``)."""

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("-", "").isalnum():
            raise ValueError(f"block id must be alphanumeric with dashes, got {self.id!r}")
        for what, table in (("params", self.params), ("cost", self.cost)):
            missing = [s for s in SIZES if s not in table]
            if missing:
                raise ValueError(f"block {self.id}: {what} has no entry for sizes {missing}")
        if self.models not in (1, 2):
            raise ValueError(f"block {self.id}: models must be 1 or 2")


BLOCKS: dict[str, Block] = {}
_loaded = False


def register_block(block: Block) -> Block:
    """Add ``block`` to the registry; a second block with the same id is an error."""
    if block.id in BLOCKS:
        raise ValueError(f"an experiment block named {block.id!r} is already registered")
    BLOCKS[block.id] = block
    return block


def all_blocks() -> dict[str, Block]:
    """Every registered block (built-in and plugins), by priority then id."""
    global _loaded
    if not _loaded:
        _loaded = True
        from experiments.blocks import atlas_blocks, lora_blocks, steering_blocks  # noqa: F401

        for name in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
            importlib.import_module(name.strip())
    return dict(sorted(BLOCKS.items(), key=lambda kv: (kv[1].priority, kv[0])))


def select_blocks(spec: str) -> list[Block]:
    """``all`` or a comma list of ids, in priority order; unknown ids raise KeyError."""
    blocks = all_blocks()
    if spec.strip() == "all":
        return list(blocks.values())
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in blocks]
    if unknown:
        raise KeyError(f"unknown blocks {unknown}; known: {', '.join(blocks)}")
    return [b for b in blocks.values() if b.id in wanted]
