"""Memory-aware batching: how many examples (and positions) one atlas forward can take.

The exact sweep keeps, for every example of a batch, the clean run's activations at every
swept layer, the replacement values, the keys/values of every layer, and then runs
stacked intervention forwards (3 rows per example for the layer map, ``position_chunk``
rows per example for the position map), each ending in a few ``d_vocab``-wide fp32 rows
for the metrics. :func:`example_bytes` counts those bytes for one example of a given
width; :func:`plan_batch` divides a budget by it. The budget defaults to what the device
has free (:func:`tlatlas.models.memory.default_budget`), so the same logic picks a batch
from GPU memory on CUDA and from RAM on the CPU.

The count is an estimate from the model's shape (activations as the Hugging Face eager
attention computes them); the sweep still halves a batch that runs out of memory and
retries it (:func:`tlatlas.atlas.engine.run_family_batches`). The tests measure the live
tensor bytes of a sweep and check them against the budget.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tlatlas.errors import TlatlasError
from tlatlas.models.loading import LoadedModel
from tlatlas.models.memory import default_budget
from tlatlas.tasks import Example
from tlatlas.tokens import prompt_ids

MAX_AUTO_BATCH = 256
"""Largest batch the planner picks (more rows per forward stop paying off long before
the memory runs out on a large GPU, and padding grows with the batch)."""
MIN_BATCH = 2
"""Smallest batch a sweep runs (resample ablation needs a donor in the batch)."""
FP32 = 4


class MemoryBudgetError(TlatlasError, MemoryError):
    """Not even the smallest batch fits the memory budget (the message gives both sizes)."""


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """The sizes memory scales with."""

    n_layers: int
    """Transformer blocks."""
    d_model: int
    """Residual stream width."""
    d_mlp: int
    """MLP hidden width (``intermediate_size``)."""
    n_heads: int
    """Query heads."""
    n_key_value_heads: int
    """Key/value heads (fewer than ``n_heads`` under grouped-query attention)."""
    d_head: int
    """Width of one head."""
    d_vocab: int
    """Vocabulary size."""
    dtype_bytes: int
    """Bytes per activation element (4 for fp32, 2 for bf16)."""

    @classmethod
    def from_hf_config(cls, config, dtype: torch.dtype) -> "ModelShape":
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(cfg.num_attention_heads)
        d_head = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // heads
        return cls(n_layers=int(cfg.num_hidden_layers), d_model=int(cfg.hidden_size),
                   d_mlp=int(cfg.intermediate_size), n_heads=heads,
                   n_key_value_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
                   d_head=int(d_head), d_vocab=int(cfg.vocab_size),
                   dtype_bytes=torch.finfo(dtype).bits // 8)

    @classmethod
    def of(cls, model: LoadedModel) -> "ModelShape":
        # a quantized model's activations are in its compute dtype (bf16 on CUDA), never
        # narrower than 2 bytes
        dtype = model.dtype if model.dtype.is_floating_point else torch.bfloat16
        return cls.from_hf_config(model.hf_model.config, dtype)


def _forward_row(shape: ModelShape, width: int) -> int:
    """Transient bytes of one row of a forward, at the widest point of one block
    (eager attention: scores, fp32 softmax and its cast; the MLP's gate, up and product;
    q/k/v/o with their rotated copies; a few residual-width temporaries)."""
    s, t = shape.dtype_bytes, width
    attn = shape.n_heads * t * t * (2 * s + FP32)
    qkvo = (2 * shape.n_heads + 2 * shape.n_key_value_heads) * shape.d_head * t * s * 2
    mlp = 3 * t * shape.d_mlp * s
    return attn + qkvo + mlp + 8 * t * shape.d_model * s


def _metric_row(shape: ModelShape) -> int:
    """One scored row's logits (model dtype, then fp32) and the metrics' fp32 temporaries."""
    return shape.d_vocab * (shape.dtype_bytes + 7 * FP32)


def example_bytes(shape: ModelShape, width: int, *, layers_swept: int, positions: bool,
                  position_chunk: int, method: str = "exact") -> int:
    """Peak bytes one example of ``width`` tokens adds to an atlas sweep's batch."""
    s, act = shape.dtype_bytes, width * shape.d_model * shape.dtype_bytes
    kv = 2 * shape.n_layers * shape.n_key_value_heads * shape.d_head * width * s
    p = int(positions)
    # clean activations cached (values + resid_pre) and the replacement of each value hook
    persistent = ((3 + p) + (2 + p)) * layers_swept * act + kv + shape.d_vocab * FP32
    row, metric = _forward_row(shape, width), _metric_row(shape)
    clean = row + metric
    if method == "naive":  # full forwards: every position's logits
        sweep = row + 2 * width * shape.d_vocab * s + metric
        return persistent + max(clean, sweep)
    # three components stacked: resid and two written values per row, forward, hidden, logits
    layer_map = 3 * (4 * act + row + metric)
    # a chunk of (position, example) rows: residual suffix and its clone, two values,
    # the prefix keys/values copied and the cache they grow into
    pos_map = position_chunk * (4 * act + 2 * kv + row + metric) if positions else 0
    return persistent + max(clean, layer_map, pos_map)


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """The batch a budget allows for examples up to ``width`` tokens."""

    batch_size: int
    """Examples per forward."""
    position_chunk: int
    """Positions stacked into one position-map forward."""
    width: int
    """Longest prompt (tokens, BOS included) the plan was made for."""
    bytes_per_example: int
    """Estimated peak bytes of one example (:func:`example_bytes`)."""
    budget_bytes: int
    """The budget divided."""

    @property
    def estimated_bytes(self) -> int:
        return self.batch_size * self.bytes_per_example

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "position_chunk": self.position_chunk,
                "width": self.width, "bytes_per_example": self.bytes_per_example,
                "budget_bytes": self.budget_bytes, "estimated_bytes": self.estimated_bytes}


def plan_batch(shape: ModelShape, width: int, *, budget: int, layers_swept: int,
               positions: bool, position_chunk: int, method: str = "exact",
               max_batch: int = MAX_AUTO_BATCH) -> BatchPlan:
    """The largest batch (at most ``max_batch``) whose estimate fits ``budget``.

    ``position_chunk`` is kept unless even :data:`MIN_BATCH` examples do not fit with it;
    then the chunk shrinks until they do. Raises :class:`MemoryBudgetError` when one
    position per forward does not fit either.
    """
    chunk = max(1, min(position_chunk, width))

    def per(c: int) -> int:
        return example_bytes(shape, width, layers_swept=layers_swept, positions=positions,
                             position_chunk=c, method=method)

    while per(chunk) * MIN_BATCH > budget and positions and chunk > 1:
        chunk = max(1, chunk // 2)
    need = per(chunk)
    if need * MIN_BATCH > budget:
        raise MemoryBudgetError(
            f"a batch of {MIN_BATCH} examples of {width} tokens needs about "
            f"{need * MIN_BATCH / 2**20:.1f} MiB, over the budget of {budget / 2**20:.1f} MiB; "
            "free memory, sweep fewer layers, or give a larger budget")
    return BatchPlan(batch_size=int(min(max_batch, budget // need)), position_chunk=chunk,
                     width=width, bytes_per_example=need, budget_bytes=budget)


def family_widths(examples: Sequence[Example], tokenizer) -> dict[str, int]:
    """Longest prompt per family, in tokens (BOS included), in first-seen family order."""
    widths: dict[str, int] = {}
    ids = prompt_ids([ex.prompt for ex in examples], tokenizer)
    for ex, row in zip(examples, ids, strict=True):
        widths[ex.family] = max(widths.get(ex.family, 0), len(row))
    return widths


def plan_atlas_batches(model: LoadedModel, examples: Sequence[Example], *, layers_swept: int,
                       positions: bool, position_chunk: int, method: str = "exact",
                       budget: int | None = None) -> dict[str, BatchPlan]:
    """One plan per family (batches never mix families, and widths differ by family).

    ``budget`` defaults to :func:`~tlatlas.models.memory.default_budget` of the model's
    device, read once, so every family is planned against the same figure."""
    if budget is None:
        budget = default_budget(model.device)
    shape = ModelShape.of(model)
    return {fam: plan_batch(shape, width, budget=budget, layers_swept=layers_swept,
                            positions=positions, position_chunk=position_chunk, method=method)
            for fam, width in family_widths(examples, model.tokenizer).items()}


__all__ = ["MAX_AUTO_BATCH", "MIN_BATCH", "BatchPlan", "MemoryBudgetError", "ModelShape",
           "example_bytes", "family_widths", "plan_atlas_batches", "plan_batch"]
