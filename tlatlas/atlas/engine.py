"""The batch engine: examples -> family batches -> encoded batches -> clean runs.

Every sweep (atlas, reference statistics, position maps, steering vectors and sweeps,
transfer, Block Influence) starts each batch the same way: group examples by family (so
resample ablation finds donors and padding stays short), encode them right-padded, run the
clean model once and keep the activations the sweep will reuse. :func:`clean_batches` is
that prologue, written once.
"""

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from tlatlas.errors import InvalidInputError
from tlatlas.models.forward import CleanRun, clean_run
from tlatlas.models.loading import LoadedModel
from tlatlas.models.memory import MemoryBackoffWarning, is_out_of_memory, release_cached_memory
from tlatlas.tasks import Example
from tlatlas.tokens import TokenBatch, encode_batch


@dataclass(frozen=True, kw_only=True, eq=False)
class CleanBatch:
    """One encoded batch and its clean run."""

    index: int
    """Position of the batch in the sweep (seeds per-batch draws such as resample donors)."""
    examples: tuple[Example, ...]
    """The batch's examples, in row order (empty for plain prompt batches)."""
    batch: TokenBatch
    """Tokens, roles, scored positions and targets (on the CPU)."""
    clean: CleanRun
    """Scored logits, cached activations and keys/values of the clean forward."""


def by_family(examples: Sequence[Example]) -> dict[str, list[Example]]:
    """Examples grouped by family, families in first-seen order."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.family, []).append(ex)
    return groups


def batch_groups(examples: Sequence[Example], mixed: bool = False) -> dict[str, list[Example]]:
    """What batches are cut from: :func:`by_family`, or with ``mixed`` one group of every
    example, shortest prompt first (for passes that need no donor of the same family and
    would otherwise run batches of one or two examples, such as a screen of one example
    per family)."""
    if not mixed:
        return by_family(examples)
    return {"mixed": sorted(examples, key=lambda ex: len(ex.prompt))}


def family_batches(examples: Sequence[Example], batch_size: int, *, mixed: bool = False
                   ) -> list[list[Example]]:
    """Batches of one family each (with ``mixed``: of any families, :func:`batch_groups`),
    in suite order; a lone leftover joins the previous batch."""
    batches: list[list[Example]] = []
    for exs in batch_groups(examples, mixed).values():
        chunks = [exs[i:i + batch_size] for i in range(0, len(exs), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2].extend(chunks.pop())
        batches.extend(chunks)
    return batches


def _take(rest: list[Example], size: int) -> int:
    # as family_batches: a lone leftover joins the batch before it
    return len(rest) if len(rest) - size <= 1 else size


def run_family_batches(examples: Sequence[Example], batch_sizes: Mapping[str, int] | int,
                       step: Callable[[tuple[Example, ...], int], None], *,
                       device: torch.device | str, min_batch: int = 2,
                       what: str = "sweep", mixed: bool = False) -> int:
    """Call ``step(batch_examples, batch_index)`` on the family batches of ``examples``
    (the batches :func:`family_batches` makes, with a size per family), halving a batch
    that runs out of memory and retrying it.

    ``step`` must change nothing the caller keeps until its last statement (an
    out-of-memory error part-way leaves no trace). After a halving every later batch is
    scaled down by the same factor; each halving issues a :class:`MemoryBackoffWarning`.
    Batch indices count the batches that ran, so without a halving they are those of
    :func:`clean_batches`. Returns the number of halvings; re-raises the error when a
    batch of ``min_batch`` examples does not fit. ``mixed``: batches of any families
    (:func:`batch_groups`; one batch size for all).
    """
    if mixed and not isinstance(batch_sizes, int):
        raise InvalidInputError("mixed-family batches take one batch size, not one per family")
    groups = batch_groups(examples, mixed)
    planned = {f: batch_sizes if isinstance(batch_sizes, int) else batch_sizes[f] for f in groups}
    if any(s < 1 for s in planned.values()):
        raise InvalidInputError(f"batch sizes must be >= 1, got {planned}")
    scale, halvings, index = Fraction(1), 0, 0
    for fam, rest in groups.items():
        while rest:
            size = max(min(min_batch, planned[fam]), int(planned[fam] * scale))
            n = _take(rest, size)
            exs = tuple(rest[:n])
            try:
                step(exs, index)
                failed = None
            except Exception as err:  # re-raised unless it is an allocation failure
                if not is_out_of_memory(err) or len(exs) <= min_batch:
                    raise
                failed = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            if failed is None:
                del rest[:n]
                index += 1
                continue
            # out of the except block: the traceback no longer pins the batch's tensors
            release_cached_memory(device)
            half = max(min_batch, len(exs) // 2)
            scale = min(scale, Fraction(half, planned[fam]))
            halvings += 1
            warnings.warn(MemoryBackoffWarning(
                f"{what}: out of memory on a batch of {len(exs)} {fam!r} examples "
                f"({failed}); retrying with batches of {half}"), stacklevel=2)
    return halvings



def clean_batches(model: LoadedModel, examples: Sequence[Example], hook_names: Sequence[str],
                  *, batch_size: int, mixed: bool = False) -> Iterator[CleanBatch]:
    """Family batches of ``examples`` (``mixed``: :func:`batch_groups`), each encoded and run
    clean once, caching the activations at ``hook_names``. Memory stays flat: one batch is
    alive at a time."""
    for index, (exs, batch) in enumerate(encoded_batches(examples, model.tokenizer,
                                                         batch_size=batch_size, mixed=mixed)):
        yield CleanBatch(index=index, examples=exs, batch=batch,
                         clean=run_clean(model, batch, hook_names))


def encoded_batches(examples: Sequence[Example], tokenizer, *, batch_size: int,
                    mixed: bool = False) -> Iterator[tuple[tuple[Example, ...], TokenBatch]]:
    """Family batches of ``examples`` (``mixed``: :func:`batch_groups`), encoded (for passes
    that are not clean runs, such as attribution's forward and backward)."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    for exs in family_batches(examples, batch_size, mixed=mixed):
        yield tuple(exs), encode_batch(exs, tokenizer)


def clean_token_batches(model: LoadedModel, batches: Iterable[TokenBatch],
                        hook_names: Sequence[str]) -> Iterator[CleanBatch]:
    """The same engine over batches already encoded (plain prompts without answers)."""
    for index, batch in enumerate(batches):
        yield CleanBatch(index=index, examples=(), batch=batch,
                         clean=run_clean(model, batch, hook_names))


def run_clean(model: LoadedModel, batch: TokenBatch, hook_names: Sequence[str]) -> CleanRun:
    """The clean run of one encoded batch on the model's device."""
    return clean_run(model, batch.tokens.to(model.device), batch.scored_pos, list(hook_names))
