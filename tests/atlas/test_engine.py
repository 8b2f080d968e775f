"""The batch engine: family batches, encoding and clean runs."""

import pytest
import torch

from tlatlas.atlas.engine import family_batches


def test_family_batches_keep_families_apart_and_never_leave_one_alone(small_examples):
    batches = family_batches(small_examples * 3, batch_size=4)
    assert all(len({e.family for e in b}) == 1 and len(b) >= 2 for b in batches)
    assert sum(len(b) for b in batches) == len(small_examples) * 3


def test_mixed_batches_take_any_family_shortest_first(small_examples):
    batches = family_batches(small_examples, batch_size=4, mixed=True)
    assert [len(b) for b in batches] == [4, 2]  # 6 examples of 3 families
    assert len({e.family for e in batches[0]}) > 1
    flat = [e for b in batches for e in b]
    assert sorted(flat, key=small_examples.index) == small_examples
    assert [len(e.prompt) for e in flat] == sorted(len(e.prompt) for e in small_examples)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_a_sweep_in_mixed_batches_equals_the_family_batched_one(tiny_models, small_examples,
                                                                ablation):
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.sweep import compute_atlas_sums, reference_stats
    from tlatlas.errors import InvalidInputError
    from tlatlas.hooks import hook_name

    model = tiny_models["llama"]
    means = reference_stats(model, small_examples, [
        hook_name(layer, h) for layer in range(model.n_layers)
        for h in ("hook_attn_out", "hook_mlp_out")]) if ablation == "mean" else None
    config = AtlasConfig(ablation=ablation, batch_size=4)
    fams = ("ioi", "factual", "code")
    apart = compute_atlas_sums(model, small_examples, config, families=fams, means=means)
    mixed = compute_atlas_sums(model, small_examples, config, families=fams, means=means,
                               mixed=True)
    for key in ("layer.sum", "count", "clean.correct", "clean.logp"):
        torch.testing.assert_close(mixed.tensors[key], apart.tensors[key], rtol=1e-4, atol=1e-4)
    with pytest.raises(InvalidInputError, match="mixed"):
        compute_atlas_sums(model, small_examples, AtlasConfig(ablation="resample"), mixed=True)


def test_clean_batches_cover_every_example_once_and_match_the_bridge(tiny_models, small_examples):
    from tlatlas.atlas.engine import clean_batches

    model = tiny_models["qwen2"]
    seen = []
    for i, cb in enumerate(clean_batches(model, small_examples, ["blocks.1.hook_resid_post"],
                                         batch_size=2)):
        assert cb.index == i
        assert len({ex.family for ex in cb.examples}) == 1
        assert cb.batch.families == tuple(ex.family for ex in cb.examples)
        assert cb.clean.acts["blocks.1.hook_resid_post"].shape == (*cb.batch.tokens.shape,
                                                                    model.d_model)
        with torch.inference_mode():
            full = model.bridge(cb.batch.tokens)
        rows = torch.arange(len(cb.batch))
        assert torch.allclose(cb.clean.scored_logits, full[rows, cb.batch.scored_pos].float(),
                              atol=1e-4)
        seen.extend(cb.examples)
    assert sorted(seen, key=small_examples.index) == small_examples


def test_batch_size_below_one_is_refused(tiny_models, small_examples):
    from tlatlas.atlas.engine import clean_batches
    from tlatlas.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="batch_size"):
        next(clean_batches(tiny_models["llama"], small_examples, [], batch_size=0))
