"""Clean-model accuracy on the scored token, per task family."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas.models import LoadedModel
from tlatlas.tasks import Example
from tlatlas.tokens import TokenBatch, iter_batches


@dataclass(frozen=True, kw_only=True)
class FamilyAccuracy:
    """Top-1 accuracy of the clean model on one family's scored tokens."""

    family: str
    """Task family."""
    correct: int
    """Examples whose argmax at the scored position is the answer's first token."""
    total: int
    """Examples scored."""
    mean_logp: float
    """Mean log-probability of the target token, in nats."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def scored_logits(
    model: LoadedModel, batch: TokenBatch
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each row's scored position from one clean forward pass (fp32)."""
    with torch.inference_mode():
        logits = model.bridge(batch.tokens.to(model.device))
    rows = torch.arange(len(batch), device=logits.device)
    return logits[rows, batch.scored_pos.to(logits.device)].float()


def target_logprobs(
    logits: Float[Tensor, "batch d_vocab"], target: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """log p(target) under softmax(logits)."""
    return logits.log_softmax(-1).gather(-1, target.to(logits.device)[:, None])[:, 0]


def family_accuracy(
    model: LoadedModel,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, FamilyAccuracy]:
    """Per-family top-1 accuracy and mean target log-prob of the clean model.

    ``on_batch(n)`` is called after each batch with its size (for progress bars).
    """
    # Grouping similar lengths cuts padding; results do not depend on the order.
    ordered = sorted(examples, key=lambda ex: len(ex.prompt))
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    logp_sum: dict[str, float] = {}
    for batch in iter_batches(ordered, model.tokenizer, batch_size=batch_size):
        logits = scored_logits(model, batch)
        target = batch.target.to(logits.device)
        hits = (logits.argmax(-1) == target).tolist()
        logps = target_logprobs(logits, target).tolist()
        for family, hit, logp in zip(batch.families, hits, logps, strict=True):
            correct[family] = correct.get(family, 0) + int(hit)
            total[family] = total.get(family, 0) + 1
            logp_sum[family] = logp_sum.get(family, 0.0) + logp
        if on_batch is not None:
            on_batch(len(batch))
    families = dict.fromkeys(ex.family for ex in examples)  # first-seen order
    return {
        f: FamilyAccuracy(
            family=f, correct=correct[f], total=total[f], mean_logp=logp_sum[f] / total[f]
        )
        for f in families
    }
