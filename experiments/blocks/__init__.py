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

    python -m experiments.run --list          # every registered block and its question

The types and :func:`register_block` live in :mod:`experiments.blocks.base` (re-exported
here); this package imports the built-in block modules and the plugins on first use.
"""

import importlib
import os

from experiments.blocks.base import (
    BLOCKS,
    SIZES,
    VERDICTS,
    Block,
    Cost,
    Statement,
    by_model_size,
    judged,
    register_block,
    size_costs,
)

__all__ = ["BLOCKS", "PLUGINS_ENV", "SIZES", "VERDICTS", "Block", "Cost", "Statement",
           "all_blocks", "by_model_size", "judged", "register_block", "select_blocks",
           "size_costs"]

PLUGINS_ENV = "TLATLAS_EXPERIMENT_PLUGINS"
_loaded = False


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
