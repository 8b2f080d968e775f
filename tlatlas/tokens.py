"""Turn examples into right-padded token batches with their scored positions and roles.

Right padding keeps every real token at the position index it would have alone, and
with causal attention no real token attends to a pad after it, so logits at real
positions equal the unpadded run's: no attention mask is needed for scoring.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tlatlas.tasks import Example, scored_token_ids

ROLES = ("bos", "body", "last")
"""Position roles of a prompt: the BOS token, the prompt body, the scored last token."""
ROLE_BOS, ROLE_BODY, ROLE_LAST, ROLE_PAD = 0, 1, 2, -1


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenBatch:
    """A batch of prompts, right-padded, with what is scored where."""

    tokens: Int[Tensor, "batch pos"]
    """Token ids; pads use the tokenizer's pad id (or 0)."""
    mask: Bool[Tensor, "batch pos"]
    """True at real tokens."""
    scored_pos: Int[Tensor, " batch"]
    """Index of the last prompt token, whose logits predict the answer's first token."""
    target: Int[Tensor, " batch"]
    """The answer's first token id (the scored target)."""
    roles: Int[Tensor, "batch pos"]
    """ROLE_BOS / ROLE_BODY / ROLE_LAST per position, ROLE_PAD at pads."""
    families: tuple[str, ...]
    """Family of each row."""

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(
            tokens=self.tokens.to(device),
            mask=self.mask.to(device),
            scored_pos=self.scored_pos.to(device),
            target=self.target.to(device),
            roles=self.roles.to(device),
            families=self.families,
        )


def bos_id(tokenizer) -> int | None:
    """The BOS id to prepend, or None for tokenizers without one."""
    return tokenizer.bos_token_id


def encode_batch(
    examples: Sequence[Example], tokenizer, *, prepend_bos: bool = True
) -> TokenBatch:
    """Encode examples into one right-padded :class:`TokenBatch`."""
    if not examples:
        raise ValueError("cannot encode an empty batch")
    # The target is the first answer token of ``prompt + answer`` tokenized together (the
    # token the model must produce); the suite's own check rejects answers that merge with
    # the prompt. A whitespace-only target is the suite's concern (validate_answers), not
    # the encoder's: tokenizers other than the one the suite was checked against may have one.
    targets = scored_token_ids(examples, tokenizer, allow_whitespace=True)
    bos = [bos_id(tokenizer)] if prepend_bos and bos_id(tokenizer) is not None else []
    encoded = [(bos + tokenizer(ex.prompt, add_special_tokens=False)["input_ids"], t)
               for ex, t in zip(examples, targets, strict=True)]
    has_bos = bool(bos)
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(encoded), width), pad, dtype=torch.long)
    roles = torch.full((len(encoded), width), ROLE_PAD, dtype=torch.long)
    for row, (ids, _) in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids)
        roles[row, : len(ids)] = ROLE_BODY
        if has_bos:
            roles[row, 0] = ROLE_BOS
        roles[row, len(ids) - 1] = ROLE_LAST
    lengths = torch.tensor([len(ids) for ids, _ in encoded])
    return TokenBatch(
        tokens=tokens,
        mask=roles != ROLE_PAD,
        scored_pos=lengths - 1,
        target=torch.tensor([t for _, t in encoded]),
        roles=roles,
        families=tuple(ex.family for ex in examples),
    )


def iter_batches(
    examples: Sequence[Example], tokenizer, *, batch_size: int, prepend_bos: bool = True
) -> Iterator[TokenBatch]:
    """Encode lazily, ``batch_size`` examples at a time (memory stays flat over a suite).

    Examples are grouped in their given order; sort by length beforehand to cut padding.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        yield encode_batch(
            examples[start : start + batch_size], tokenizer, prepend_bos=prepend_bos
        )
