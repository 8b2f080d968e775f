import json

import pytest
import torch

from bridges.adalora import adalora_plan, train_adalora
from bridges.export import plan_for_layers
from bridges.influence import block_influence
from bridges.module_sweep import (
    MODULE_SETS,
    TOLERANCE,
    equal_param_ranks,
    module_sweep,
    rank_costs,
)
from bridges.studies import (
    DEFAULT_DRAWS,
    DEFAULT_SEEDS,
    DEFAULT_TRAIN,
    MIN_ADALORA_STEPS,
    strategy_study,
)
from bridges.train import TrainConfig, answer_loss, lm_batch, split
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import save_atlas
from tlatlas.tasks import build_suite


@pytest.fixture(scope="module")
def atlas_file(tiny_models, tmp_path_factory):
    atlas = build_atlas(tiny_models["llama"], SuiteSpec(per_family=2, families=("ioi", "code")),
                        AtlasConfig(batch_size=2))
    stem = tmp_path_factory.mktemp("study") / "seed42"
    save_atlas(atlas, stem)
    return stem


def test_block_influence_is_in_range_and_not_constant(tiny_models):
    bi = block_influence(tiny_models["llama"], list(build_suite("synthetic", per_family=1)))
    assert bi.shape == (3,) and bool(((bi >= 0) & (bi <= 2)).all())
    assert float(bi.max() - bi.min()) > 1e-4


def test_strategy_study_matches_budgets(tiny_dirs, atlas_file, tmp_path, capsys):
    from tlatlas.cli import main

    out = tmp_path / "strategies.json"
    assert main(["study", "strategies", "--model", str(tiny_dirs["llama"]), "--atlas",
                 str(atlas_file), "--families", "arithmetic", "--seeds", "0", "--top-k", "2",
                 "--rank", "2", "--steps", str(MIN_ADALORA_STEPS), "--n-train", "8",
                 "--n-heldout", "2", "--random-draws", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in data["rows"]}
    assert data["chooser"]["positions_ablated"] and data["chooser"]["min_per_family"] > 0
    assert {"atlas", "random", "first-k", "last-k", "block-influence", "all-linear",
            "uniform-o"} <= rows.keys()
    budget = rows["atlas"]["trainable_params"]
    for name in ("random", "first-k", "last-k", "block-influence"):
        assert rows[name]["trainable_params"] == budget
    assert rows["uniform-o"]["trainable_params"] <= budget
    assert len(rows["uniform-o"]["layers"]) == 3
    assert rows["all-linear"]["trainable_params"] > budget
    ada = rows["adalora"]
    assert ada["trainable_params"] == ada["peft_final_params"] <= budget
    assert ada["initial_params"] > budget  # AdaLoRA starts above the budget and prunes
    assert sum(ada["final_ranks"].values()) <= ada["target_r"] * 3 and ada["pruned"]
    assert ada["schedule"] == {"tinit": 5, "tfinal": 10, "total_step": MIN_ADALORA_STEPS}
    assert data["skipped"] == {}
    # random layer sets: --random-draws draws, each trained, all at the budget
    draws = [r for r in data["rows"] if r["strategy"] == "random"]
    assert [r["draw"] for r in draws] == [0, 1]
    # every strategy is compared to atlas-guided on the shared (seed, prompt) pairs
    assert set(data["comparisons"]) == set(rows) - {"atlas"}
    for c in data["comparisons"].values():
        assert c["n"] == 2 and c["seeds"] == [0] and set(c["by_family"]) == {"arithmetic"}
        assert c["loss"]["ci"][0] <= c["loss"]["estimate"] <= c["loss"]["ci"][1]
    assert data["chooser"]["examples_per_family"] == {"ioi": 2, "code": 2}
    assert not data["chooser"]["powered"]
    printed = capsys.readouterr().out
    assert "atlas" in printed and "adalora arithmetic seed 0" in printed


def test_strategy_comparison_is_the_paired_difference_over_seeds_and_prompts(tiny_dirs,
                                                                             tiny_models):
    atlas = build_atlas(tiny_models["llama"], SuiteSpec(per_family=2, families=("ioi",)),
                        AtlasConfig(batch_size=2, positions_ablated="all-but-bos"))
    train = TrainConfig(steps=3, n_train=8, n_heldout=3, lr=1e-2)
    out = strategy_study(tiny_dirs["llama"], tiny_models["llama"], atlas,
                         families=("arithmetic", "ioi"), seeds=(0, 1), random_draws=2, top_k=1,
                         rank=2, train=train)
    assert out["skipped"]["adalora"].startswith("not run: 3 steps")
    assert "adalora" not in {r["strategy"] for r in out["rows"]}
    assert out["chooser"]["positions_ablated"] == "all-but-bos"
    assert out["chooser"]["ablation"] == "zero" and out["chooser"]["min_per_family"] == 2
    rows = out["rows"]
    assert all(len(r["heldout_losses"]) == len(r["heldout_hits"]) == 3 for r in rows)
    # by hand: random's per-prompt values averaged over its two draws, minus atlas's
    a = {(r["seed"], r["family"]): r for r in rows if r["strategy"] == "atlas"}
    diffs, hits = [], []
    for (seed, family), ra in sorted(a.items()):
        rs = [r for r in rows if r["strategy"] == "random" and (r["seed"], r["family"]) ==
              (seed, family)]
        assert len(rs) == 2 and rs[0]["heldout_uids"] == ra["heldout_uids"]
        for i in range(3):
            diffs.append(sum(r["heldout_losses"][i] for r in rs) / 2 - ra["heldout_losses"][i])
            hits.append(ra["heldout_hits"][i] - sum(r["heldout_hits"][i] for r in rs) / 2)
    c = out["comparisons"]["random"]
    assert c["n"] == 12 == len(diffs) and c["seeds"] == [0, 1]
    assert c["loss"]["estimate"] == pytest.approx(sum(diffs) / 12)
    assert c["exact_match"]["estimate"] == pytest.approx(sum(hits) / 12)
    assert c["by_family"]["ioi"]["n"] == 6


def test_module_sweep_holds_layers_fixed(tiny_dirs, atlas_file, tmp_path):
    from tlatlas.cli import main

    out = tmp_path / "modules.json"
    assert main(["study", "modules", "--model", str(tiny_dirs["llama"]), "--atlas",
                 str(atlas_file), "--families", "arithmetic", "--seeds", "0", "--top-k", "2",
                 "--rank", "2", "--steps", "2", "--n-train", "8", "--n-heldout", "2",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # rank 2 asks for budgets below the smallest feasible one: one budget remains
    assert [r["module_set"] for r in rows] == ["o", "qkv", "mlp", "all"]
    assert len({tuple(r["layers"]) for r in rows}) == 1 and len(rows[0]["layers"]) == 2
    params = {r["module_set"]: r["trainable_params"] for r in rows}
    assert max(params.values()) / min(params.values()) - 1 <= 0.05
    ranks = {r["module_set"]: r["rank"] for r in rows}
    assert ranks["o"] > ranks["qkv"] > ranks["all"] and ranks["mlp"] > ranks["all"]


def test_equal_param_ranks_within_tolerance():
    costs = {"o": 2, "qkv": 5, "mlp": 9, "all": 16}
    ranks = equal_param_ranks(costs, 64)
    counts = [ranks[s] * c for s, c in costs.items()]
    assert max(counts) / min(counts) - 1 <= TOLERANCE and ranks["all"] == 4
    assert equal_param_ranks(costs, 1) == ranks  # below the smallest feasible: moves up
    assert equal_param_ranks(costs, 16 * 9)["all"] == 9
    with pytest.raises(ValueError, match="no ranks give"):
        equal_param_ranks({"a": 999, "b": 1000}, 10, tolerance=0.0001)


def test_module_sweep_equal_parameters_by_peft_count(tiny_dirs, tiny_models):
    """At every budget the four module sets train counts within 5% of each other, as
    PEFT's own get_nb_trainable_parameters counts them, on the same layers."""
    from peft import get_peft_model

    from tlatlas.models import load_hf_model

    model = tiny_models["llama"]
    costs = rank_costs(model, [0, 2])
    # one rank of o costs less than one of q,k,v, less than all; MLP less than all
    assert costs["o"] < costs["qkv"] < costs["all"] and costs["mlp"] < costs["all"]
    out = module_sweep(tiny_dirs["llama"], model, [2, 0], family="arithmetic", seeds=(0,),
                       budgets=[8192, 16384, 8000],
                       train=TrainConfig(steps=2, n_train=8, n_heldout=2))
    assert [p["requested"] for p in out["budgets"]] == [8192, 16384]  # 8000 -> 8192 again
    assert out["layers"] == [0, 2]
    for point in out["budgets"]:
        at = [r for r in out["rows"] if r["budget"] == point["requested"]]
        assert [r["module_set"] for r in at] == ["o", "qkv", "mlp", "all"]
        assert len({tuple(r["layers"]) for r in at}) == 1
        peft_counts = []
        for name, mods in MODULE_SETS.items():
            plan = plan_for_layers(model, name, [0, 2], modules=mods,
                                   rank=point["ranks"][name])
            peft = get_peft_model(load_hf_model(tiny_dirs["llama"], device="cpu"),
                                  plan.lora_config())
            peft_counts.append(peft.get_nb_trainable_parameters()[0])
        assert peft_counts == [r["trainable_params"] for r in at]
        assert max(peft_counts) / min(peft_counts) - 1 <= 0.05
        assert point["spread"] <= 0.05
        assert set(out["comparisons"][str(point["requested"])]) == {"qkv", "mlp", "all"}


@pytest.mark.parametrize("modules", [("o",), ("q", "k", "v", "gate")])
def test_adalora_plan_matches_the_budget_and_peft_counts(tiny_dirs, tiny_models, modules):
    from peft import get_peft_model

    from tlatlas.models import load_hf_model

    model = tiny_models["llama"]
    plan = adalora_plan(model, 5000, 4, modules=modules, init_r=4)
    assert plan.final_bound <= 5000 and plan.init_r > plan.target_r >= 1
    # one more triplet per module would not fit in the worst placement
    assert (plan.target_r + 1) * len(plan.triplet_costs) * max(plan.triplet_costs) > 5000
    peft = get_peft_model(load_hf_model(tiny_dirs["llama"], device="cpu"), plan.lora_config())
    assert peft.get_nb_trainable_parameters()[0] == plan.initial_params
    assert len(plan.target_modules) == 3 * len(modules)


def test_adalora_trains_to_its_final_budget(tiny_dirs, tiny_models):
    model = tiny_models["llama"]
    config = TrainConfig(family="arithmetic", steps=6, n_train=8, n_heldout=2, lr=5e-3, seed=1)
    plan = adalora_plan(model, 1000, config.steps, init_r=4)
    assert (plan.tinit, plan.tfinal, plan.target_r) == (0, 1, 2)
    a = train_adalora(tiny_dirs["llama"], plan, config, device="cpu")
    b = train_adalora(tiny_dirs["llama"], plan, config, device="cpu")
    assert a == b  # deterministic
    assert a.initial_params == a.train.trainable_params == plan.initial_params
    assert a.final_params == a.peft_final_params <= 1000 < a.initial_params
    assert sum(a.final_ranks.values()) == plan.target_r * 3
    assert all(torch.isfinite(torch.tensor(a.train.losses)))


def reference_orthogonality_penalty(model, weight):
    """AdaLoRA's regulariser as the paper writes it (and bridges.adalora did by hand): mean
    over A and B of ||A A^T - I||_F and ||B^T B - I||_F, times ``weight``."""
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and "default" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape)))
    return weight * torch.stack(terms).mean()


@pytest.mark.parametrize("training", [True, False])
def test_peft_adds_adalora_orthogonal_regularisation_to_the_labels_loss(tiny_dirs, tiny_models,
                                                                       training):
    """PEFT's AdaLoRA adds orth_reg_weight x the penalty to any labels= loss (in eval mode
    too): the training loop relies on it (no penalty of its own, so nothing counted twice)
    and answer_loss, which evaluation reports, leaves it out."""
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from tlatlas.models import load_hf_model

    plan = adalora_plan(tiny_models["llama"], 1000, 6, init_r=4)
    peft = get_peft_model(load_hf_model(tiny_dirs["llama"], device="cpu"), plan.lora_config())
    peft.train(training)
    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["llama"]))
    ids, labels = lm_batch(split(TrainConfig(family="arithmetic", n_train=4, n_heldout=1))[0],
                           tok)
    with torch.no_grad():
        with_labels = peft(input_ids=ids, labels=labels).loss
        plain = answer_loss(peft, ids, labels)
        logits = peft(input_ids=ids).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        penalty = reference_orthogonality_penalty(peft, plan.orth_reg_weight)
    assert float(penalty) > 0.1  # A and B start far from orthonormal
    assert float(plain) == pytest.approx(float(ce), abs=1e-5)
    assert float(with_labels - plain) == pytest.approx(float(penalty), abs=1e-5)


def test_adalora_refuses_what_it_cannot_match(tiny_models):
    with pytest.raises(ValueError, match="below one triplet"):
        adalora_plan(tiny_models["llama"], 100, 10)
    with pytest.raises(ValueError, match="at least 2"):
        adalora_plan(tiny_models["llama"], 10_000, 1)


def test_the_study_clis_defaults_are_the_librarys():
    from bridges.skip_sets import DEFAULT_MAX_SETS
    from tlatlas.cli import build_parser, lora

    assert (lora.STUDY_STEPS, lora.STUDY_HELDOUT, lora.STUDY_DRAWS, lora.STUDY_MAX_SETS) == (
        DEFAULT_TRAIN.steps, DEFAULT_TRAIN.n_heldout, DEFAULT_DRAWS, DEFAULT_MAX_SETS)
    args = build_parser().parse_args(["study", "skip", "--atlas", "a", "--out", "o.json"])
    assert tuple(args.seeds) == DEFAULT_SEEDS and args.steps == DEFAULT_TRAIN.steps
