"""The batch engine: examples -> family batches -> encoded batches -> clean runs.

Every sweep (atlas, reference statistics, position maps, steering vectors and sweeps,
transfer, Block Influence) starts each batch the same way: group examples by family (so
resample ablation finds donors and padding stays short), encode them right-padded, run the
clean model once and keep the activations the sweep will reuse. :func:`clean_batches` is
that prologue, written once.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from tlatlas.errors import InvalidInputError
from tlatlas.models.forward import CleanRun, clean_run
from tlatlas.models.loading import LoadedModel
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


def family_batches(examples: Sequence[Example], batch_size: int) -> list[list[Example]]:
    """Batches of one family each, in suite order; a lone leftover joins the previous batch."""
    by_family: dict[str, list[Example]] = {}
    for ex in examples:
        by_family.setdefault(ex.family, []).append(ex)
    batches: list[list[Example]] = []
    for exs in by_family.values():
        chunks = [exs[i:i + batch_size] for i in range(0, len(exs), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2].extend(chunks.pop())
        batches.extend(chunks)
    return batches



def clean_batches(model: LoadedModel, examples: Sequence[Example], hook_names: Sequence[str],
                  *, batch_size: int) -> Iterator[CleanBatch]:
    """Family batches of ``examples``, each encoded and run clean once, caching the
    activations at ``hook_names``. Memory stays flat: one batch is alive at a time."""
    for index, (exs, batch) in enumerate(encoded_batches(examples, model.tokenizer,
                                                         batch_size=batch_size)):
        yield CleanBatch(index=index, examples=exs, batch=batch,
                         clean=run_clean(model, batch, hook_names))


def encoded_batches(examples: Sequence[Example], tokenizer, *, batch_size: int
                    ) -> Iterator[tuple[tuple[Example, ...], TokenBatch]]:
    """Family batches of ``examples``, encoded (for passes that are not clean runs, such
    as attribution's forward and backward)."""
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    for exs in family_batches(examples, batch_size):
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
