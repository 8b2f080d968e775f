"""The one encoder: prompts and examples as right-padded token batches with roles.

Right padding keeps every real token at the position index it would have alone, and
with causal attention no real token attends to a pad after it, so logits at real
positions equal the unpadded run's: no attention mask is needed for scoring.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tlatlas.errors import InvalidInputError
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
    target: Int[Tensor, " batch"] | None
    """The answer's first token id (the scored target); None for plain prompts."""
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
            target=None if self.target is None else self.target.to(device),
            roles=self.roles.to(device),
            families=self.families,
        )


def bos_id(tokenizer) -> int | None:
    """The BOS id to prepend, or None for tokenizers without one."""
    return tokenizer.bos_token_id


def pad_id(tokenizer) -> int:
    """The id right padding uses (the tokenizer's pad id, else 0; pads are never read)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pad_right(rows: Sequence[Sequence[int]], fill: int) -> Int[Tensor, "batch pos"]:
    """Integer rows of different lengths as one right-padded ``[batch pos]`` tensor."""
    if not rows:
        raise InvalidInputError("cannot pad an empty batch")
    out = torch.full((len(rows), max(len(r) for r in rows)), fill, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return out


def prompt_ids(prompts: Sequence[str], tokenizer, *, prepend_bos: bool = True) -> list[list[int]]:
    """Each prompt's token ids, BOS first when the tokenizer has one (and ``prepend_bos``)."""
    bos = [bos_id(tokenizer)] if prepend_bos and bos_id(tokenizer) is not None else []
    return [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def encode_prompts(prompts: Sequence[str], tokenizer, *, prepend_bos: bool = True,
                   groups: Sequence[str] | None = None) -> TokenBatch:
    """Plain prompts (no answers) as one right-padded :class:`TokenBatch` whose ``target``
    is None; ``groups`` fills ``families`` (default: empty names)."""
    if not prompts:
        raise InvalidInputError("cannot encode an empty batch")
    ids = prompt_ids(prompts, tokenizer, prepend_bos=prepend_bos)
    has_bos = prepend_bos and bos_id(tokenizer) is not None
    tokens = pad_right(ids, pad_id(tokenizer))
    lengths = torch.tensor([len(r) for r in ids])
    pos = torch.arange(tokens.shape[1])[None]
    roles = torch.where(pos < lengths[:, None], ROLE_BODY, ROLE_PAD)
    if has_bos:
        roles[:, 0] = ROLE_BOS
    roles[torch.arange(len(ids)), lengths - 1] = ROLE_LAST
    families = tuple(groups) if groups is not None else ("",) * len(ids)
    if len(families) != len(ids):
        raise InvalidInputError(f"{len(families)} groups for {len(ids)} prompts")
    return TokenBatch(tokens=tokens, mask=roles != ROLE_PAD, scored_pos=lengths - 1,
                      target=None, roles=roles, families=families)


def encode_batch(
    examples: Sequence[Example], tokenizer, *, prepend_bos: bool = True
) -> TokenBatch:
    """Encode examples into one right-padded :class:`TokenBatch` with their targets."""
    if not examples:
        raise InvalidInputError("cannot encode an empty batch")
    # The target is the first answer token of ``prompt + answer`` tokenized together (the
    # token the model must produce); the suite's own check rejects answers that merge with
    # the prompt. A whitespace-only target is the suite's concern (validate_answers), not
    # the encoder's: tokenizers other than the one the suite was checked against may have one.
    targets = scored_token_ids(examples, tokenizer, allow_whitespace=True)
    batch = encode_prompts([ex.prompt for ex in examples], tokenizer, prepend_bos=prepend_bos,
                           groups=[ex.family for ex in examples])
    return replace(batch, target=torch.tensor(list(targets), dtype=torch.long))


def iter_batches(
    examples: Sequence[Example], tokenizer, *, batch_size: int, prepend_bos: bool = True
) -> Iterator[TokenBatch]:
    """Encode lazily, ``batch_size`` examples at a time (memory stays flat over a suite).

    Examples are grouped in their given order; sort by length beforehand to cut padding.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        yield encode_batch(
            examples[start : start + batch_size], tokenizer, prepend_bos=prepend_bos
        )
