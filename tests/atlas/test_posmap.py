"""Per-prompt position maps: equal to the naive loop and to the atlas's offset map."""

import json
from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.posmap import PositionMap, atlas_position_maps, position_map, position_maps
from tlatlas.atlas.sums import offset_effect
from tlatlas.atlas.sweep import compute_atlas_sums
from tlatlas.tasks import build_suite
from tlatlas.tokens import encode_batch

TOL = 1e-4  # fp32, per entry


@pytest.fixture(scope="module")
def examples():
    # interleaved families: the map must keep the caller's order
    exs = list(build_suite("synthetic", seed=3, per_family=2, families=["ioi", "code"]))
    return [exs[0], exs[2], exs[1], exs[3]]


def naive_position_map(model, examples, layers, component):
    """One prompt at a time, unpadded, one full bridge forward per (layer, position)."""
    hooks = {"resid": ("hook_resid_post",), "block": ("hook_attn_out", "hook_mlp_out")}[component]
    out = []
    for ex in examples:
        batch = encode_batch([ex], model.tokenizer)
        tokens = batch.tokens[:, : int(batch.scored_pos[0]) + 1]
        with torch.inference_mode():
            clean = model.bridge(tokens)[0, -1].float()
        rows = []
        for layer in layers:
            row = []
            for p in range(tokens.shape[1]):
                def zero(act, hook, p=p):
                    act[:, p] = 0.0
                    return act

                fwd = [(f"blocks.{layer}.{h}", zero) for h in hooks]
                with torch.inference_mode():
                    logits = model.bridge.run_with_hooks(tokens, fwd_hooks=fwd)[0, -1].float()
                lp_c, lp_a = clean.log_softmax(-1), logits.log_softmax(-1)
                row.append(float((lp_c.exp() * (lp_c - lp_a)).sum()))
            rows.append(row)
        out.append(torch.tensor(rows))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_position_map_equals_naive_loop(tiny_models, examples, arch):
    model = tiny_models[arch]
    layers = (0, model.n_layers - 1)
    maps = position_maps(model, examples, layers=layers, position_chunk=5)
    assert [m.component for m in maps] == ["resid", "block"]
    for pm in maps:
        naive = naive_position_map(model, examples, layers, pm.component)
        assert pm.families == tuple(ex.family for ex in examples)
        assert pm.prompts == tuple(ex.prompt for ex in examples)
        for i, ref in enumerate(naive):
            assert len(pm.tokens[i]) == ref.shape[1]
            got = pm.prompt_effect(i)
            assert got.shape == ref.shape
            assert float((got - ref).abs().max()) <= TOL
            assert torch.isnan(pm.effect[i, :, len(pm.tokens[i]):]).all()
        assert float(pm.effect.nan_to_num().max()) > 1e-2  # not trivially zero
    # the single-map entry point is the same sweep
    one = position_map(model, examples, layers=layers, component="block", position_chunk=5)
    assert torch.equal(one.effect.nan_to_num(-1), maps[1].effect.nan_to_num(-1))


def test_position_map_matches_the_atlas_offset_map(tiny_models):
    model = tiny_models["llama"]
    exs = list(build_suite("synthetic", seed=5, per_family=2, families=["json", "induction"]))
    sums = compute_atlas_sums(model, exs, AtlasConfig(positions=True, max_offset=64, batch_size=2))
    pm = position_map(model, exs, component="resid")
    width = pm.effect.shape[-1]
    by_offset = torch.zeros(model.n_layers, width)
    count = torch.zeros(width)
    for i in range(len(exs)):
        e = pm.prompt_effect(i).flip(-1)  # offset 0 = the scored token
        by_offset[:, : e.shape[1]] += e
        count[: e.shape[1]] += 1
    expect = offset_effect(sums, "kl", "resid")[:, :width].float()
    assert torch.allclose(by_offset / count, expect, atol=TOL)


def test_position_map_resample_and_mean_run(tiny_models):
    model = tiny_models["qwen2"]
    atlas = build_atlas(model, SuiteSpec(per_family=2, families=("ioi", "code")),
                        AtlasConfig(ablation="resample", batch_size=2, layers=(1,)))
    maps = atlas_position_maps(model, atlas, n_prompts=2)
    assert maps[0].ablation == "resample" and len(maps[0].tokens) == 4  # two per family
    assert maps[0].layers == (1,)
    mean_atlas = build_atlas(model, SuiteSpec(per_family=1, families=("ioi",),
                                              reference_per_family=2),
                             AtlasConfig(ablation="mean", layers=(0,)))
    mean_maps = atlas_position_maps(model, mean_atlas, n_prompts=1, reference_per_family=2)
    assert mean_maps[0].ablation == "mean"
    assert float(mean_maps[0].effect.nan_to_num().abs().max()) > 0


def test_position_map_round_trip_and_validation(tiny_models, examples):
    pm = position_map(tiny_models["llama"], examples[:2], layers=[1])
    back = PositionMap.from_dict(json.loads(json.dumps(pm.to_dict())))
    assert back.tokens == pm.tokens and back.layers == pm.layers
    assert torch.equal(back.effect.nan_to_num(-1), pm.effect.nan_to_num(-1))
    with pytest.raises(ValueError, match="component"):
        position_map(tiny_models["llama"], examples, component="mlp")
    with pytest.raises(ValueError, match="reference"):
        position_map(tiny_models["llama"], examples, ablation="mean")
    with pytest.raises(ValueError, match="layers"):
        replace(pm, layers=(0, 1))

