"""The one encoder: right padding, position roles, scored positions and targets."""

import pytest
import torch

from tlatlas.errors import InvalidInputError
from tlatlas.tasks import build_suite, scored_token_ids
from tlatlas.tokens import (
    ROLE_BODY,
    ROLE_BOS,
    ROLE_LAST,
    ROLE_PAD,
    encode_batch,
    encode_prompts,
    pad_right,
)


def test_pad_right():
    out = pad_right([[1, 2, 3], [4]], fill=9)
    assert out.tolist() == [[1, 2, 3], [4, 9, 9]]
    with pytest.raises(InvalidInputError):
        pad_right([], fill=0)


def test_prompts_are_right_padded_with_roles(tiny_models):
    tok = tiny_models["llama"].tokenizer
    prompts = ["a", "the capital of France is"]
    batch = encode_prompts(prompts, tok)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for row, seq in enumerate(ids):
        n = len(seq) + 1  # BOS first
        assert batch.tokens[row, 0] == tok.bos_token_id
        assert batch.tokens[row, 1:n].tolist() == seq
        assert batch.roles[row, 0] == ROLE_BOS and batch.roles[row, n - 1] == ROLE_LAST
        assert (batch.roles[row, 1:n - 1] == ROLE_BODY).all()
        assert (batch.roles[row, n:] == ROLE_PAD).all() and not batch.mask[row, n:].any()
        assert batch.scored_pos[row] == n - 1
    assert batch.target is None
    no_bos = encode_prompts(prompts, tok, prepend_bos=False)
    assert no_bos.tokens.shape[1] == batch.tokens.shape[1] - 1
    assert (no_bos.roles[:, 0] != ROLE_BOS).all()


def test_examples_carry_targets_and_families(tiny_models):
    tok = tiny_models["qwen2"].tokenizer
    examples = list(build_suite("synthetic", seed=1, per_family=2, families=["ioi", "code"]))
    batch = encode_batch(examples, tok)
    assert batch.families == tuple(ex.family for ex in examples)
    assert batch.target.tolist() == list(scored_token_ids(examples, tok, allow_whitespace=True))
    plain = encode_prompts([ex.prompt for ex in examples], tok)
    assert torch.equal(plain.tokens, batch.tokens) and torch.equal(plain.roles, batch.roles)
    with pytest.raises(InvalidInputError, match="empty"):
        encode_batch([], tok)
