import json

import pytest
import torch

from bridges.adalora import adalora_plan, train_adalora
from bridges.influence import block_influence
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
                 "--rank", "2", "--steps", "2", "--n-train", "8", "--n-heldout", "2",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["strategy"]: r for r in data["rows"]}
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
    assert sum(ada["final_ranks"].values()) <= ada["target_r"] * 3
    assert data["skipped"] == {}
    printed = capsys.readouterr().out
    assert "atlas" in printed and "adalora arithmetic seed 0" in printed


def test_module_sweep_holds_layers_fixed(tiny_dirs, atlas_file, tmp_path):
    from tlatlas.cli import main

    out = tmp_path / "modules.json"
    assert main(["study", "modules", "--model", str(tiny_dirs["llama"]), "--atlas",
                 str(atlas_file), "--families", "arithmetic", "--seeds", "0", "--top-k", "2",
                 "--rank", "2", "--steps", "2", "--n-train", "8", "--n-heldout", "2",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["module_set"] for r in rows] == ["o", "qkv", "mlp", "all"]
    assert len({tuple(r["layers"]) for r in rows}) == 1 and len(rows[0]["layers"]) == 2
    params = {r["module_set"]: r["trainable_params"] for r in rows}
    assert params["o"] < params["qkv"] < params["all"] and params["mlp"] < params["all"]


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
