import json

import pytest

from bridges.export import STRATEGIES, plan_lora, rank_layers, write_adapter_config
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.models import load_hf_model


@pytest.fixture(scope="module")
def tiny_atlas(tiny_models):
    return build_atlas(tiny_models["qwen2"], SuiteSpec(per_family=2, families=("ioi", "code")),
                       AtlasConfig(batch_size=2))


def peft_trainable(path, adapter_dir):
    from peft import LoraConfig, get_peft_model

    model = load_hf_model(path, device="cpu")
    peft_model = get_peft_model(model, LoraConfig.from_pretrained(str(adapter_dir)))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("modules", [("o",), ("q", "v"), ("gate", "in", "out")])
def test_export_loads_in_stock_peft_with_equal_param_count(tiny_models, tiny_dirs, tiny_atlas,
                                                          tmp_path, strategy, modules):
    model = tiny_models["qwen2"]
    plan = plan_lora(model, strategy, atlas=tiny_atlas.sums, top_k=2, modules=modules, rank=4)
    out = write_adapter_config(plan, tmp_path / strategy)
    assert json.loads(out.read_text())["target_modules"]
    assert peft_trainable(tiny_dirs["qwen2"], tmp_path / strategy) == plan.trainable_params


def test_atlas_plan_takes_top_layers_and_random_matches_its_count(tiny_models, tiny_atlas):
    model = tiny_models["qwen2"]
    ranked = rank_layers(tiny_atlas.sums)
    assert sorted(ranked) == [0, 1, 2]
    atlas_plan = plan_lora(model, "atlas", atlas=tiny_atlas.sums, top_k=1, rank=8)
    assert atlas_plan.layers == (ranked[0],)
    for seed in range(5):
        rnd = plan_lora(model, "random", atlas=tiny_atlas.sums, top_k=1, rank=8, seed=seed)
        assert rnd.trainable_params == atlas_plan.trainable_params and len(rnd.layers) == 1
    assert {plan_lora(model, "random", atlas=tiny_atlas.sums, top_k=1, seed=s).layers
            for s in range(20)} == {(0,), (1,), (2,)}


def test_budget_is_never_exceeded(tiny_models, tiny_atlas):
    model = tiny_models["qwen2"]
    one_layer = plan_lora(model, "atlas", atlas=tiny_atlas.sums, top_k=1, rank=4).trainable_params
    for budget in (one_layer, one_layer + 1, 2 * one_layer - 1, 2 * one_layer, 10 * one_layer):
        for strategy in ("atlas", "random"):
            plan = plan_lora(model, strategy, atlas=tiny_atlas.sums, budget=budget, rank=4)
            assert plan.trainable_params <= budget
        assert len(plan.layers) == min(budget // one_layer, 3)
    with pytest.raises(ValueError, match="below one layer"):
        plan_lora(model, "atlas", atlas=tiny_atlas.sums, budget=one_layer - 1, rank=4)


def test_export_cli_refuses_a_mismatched_atlas(tiny_dirs, tiny_models, tiny_atlas, tmp_path, capsys):
    from tlatlas.atlas.store import save_atlas
    from tlatlas.cli import main

    save_atlas(tiny_atlas, tmp_path / "a")
    assert main(["export-lora", str(tmp_path / "a"), "--strategy", "atlas", "--top-k", "2",
                 "--out", str(tmp_path / "ok")]) == 0
    assert "trainable parameters" in capsys.readouterr().out
    assert main(["export-lora", str(tmp_path / "a"), "--model", str(tiny_dirs["llama"]),
                 "--strategy", "atlas", "--top-k", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "force" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- verify atlases

VERIFY_SPEC = SuiteSpec(per_family=3, families=("ioi", "code"))


@pytest.fixture(scope="module")
def verify_atlases(tiny_models):
    """An estimate-then-verify atlas of the tiny llama that leaves a block layer unverified
    (top 1, patience 1), and the exact atlas of the same suite."""
    model = tiny_models["llama"]
    config = AtlasConfig(batch_size=3)
    verified = build_atlas(model, VERIFY_SPEC, config, method="verify", top_k=1, patience=1)
    exact = build_atlas(model, VERIFY_SPEC, config)
    return verified, exact


def test_rank_layers_of_a_verify_atlas_takes_verified_layers_only(verify_atlases):
    from dataclasses import replace

    from tlatlas.atlas.config import COMPONENTS
    from tlatlas.atlas.hubs import verified_layers

    verified, exact = verify_atlases
    sums = verified.sums
    exact_layers = verified_layers(sums)
    unverified = [layer for layer in sums.layers if layer not in exact_layers]
    assert exact_layers and unverified, "the fixture must leave a block layer unverified"
    ranked = rank_layers(sums)
    assert sorted(ranked) == sorted(exact_layers)
    # the verified layers' order is the exact atlas's order
    assert ranked == [layer for layer in rank_layers(exact.sums) if layer in exact_layers]
    # an unverified entry holds an estimate (NaN KL with bound); even a huge one is not ranked
    t = {k: v.clone() for k, v in sums.tensors.items()}
    i = sums.layers.index(unverified[0])
    t["layer.sum"][:, COMPONENTS.index("block"), i] = 1e9
    assert rank_layers(replace(sums, tensors=t)) == ranked
    # an atlas without a verified mask still ranks every layer
    assert sorted(rank_layers(exact.sums)) == list(exact.sums.layers)


def test_lora_plan_from_a_verify_atlas(tiny_models, verify_atlases):
    from tlatlas.atlas.hubs import verified_layers

    model = tiny_models["llama"]
    sums = verify_atlases[0].sums
    n = len(verified_layers(sums))
    plan = plan_lora(model, "atlas", atlas=sums, top_k=n, rank=4)
    assert set(plan.layers) == set(verified_layers(sums))
    with pytest.raises(ValueError, match=f"verified layers: {n} of {len(sums.layers)}"):
        plan_lora(model, "atlas", atlas=sums, top_k=n + 1, rank=4)
    big = plan_lora(model, "atlas", atlas=sums, budget=10**9, rank=4)
    assert set(big.layers) == set(verified_layers(sums))  # a budget never buys an unverified layer
    # the random control draws as many layers, from all of them
    assert len(plan_lora(model, "random", atlas=sums, top_k=n, rank=4).layers) == n
