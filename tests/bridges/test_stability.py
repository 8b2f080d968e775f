import json

import pytest
import torch

from bridges.export import plan_lora
from bridges.stability import layer_margin, loaded_from_hf, merged_copy, stability_study
from bridges.train import TrainConfig
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import hub_evidence, hub_summary
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import save_atlas

SPEC = SuiteSpec(per_family=2, families=("ioi", "code"))
CONFIG = AtlasConfig(batch_size=2)
TRAIN = TrainConfig(n_train=8, n_heldout=2, lr=5e-2)


@pytest.fixture(scope="module")
def base_atlas(tiny_models):
    # module fixtures run before the autouse one that sets the thread count, and a matmul
    # split over another number of threads rounds differently: pin it to the tests' one
    torch.set_num_threads(1)
    return build_atlas(tiny_models["llama"], SPEC, CONFIG)


def test_untrained_adapter_merged_gives_the_base_atlas_bit_for_bit(tiny_dirs, tiny_models,
                                                                    base_atlas):
    from peft import get_peft_model

    from tlatlas.models import load_hf_model

    model = tiny_models["llama"]
    plan = plan_lora(model, "atlas", atlas=base_atlas.sums, top_k=2, rank=4)
    peft = get_peft_model(load_hf_model(tiny_dirs["llama"], device="cpu", dtype=torch.float32,
                                        attn_implementation="eager"), plan.lora_config())
    adapted = loaded_from_hf(model, merged_copy(peft), label="lora@0")
    assert adapted.fingerprint != model.fingerprint
    assert adapted.fingerprint.weights_sha256.startswith(model.fingerprint.weights_sha256)
    atlas = build_atlas(adapted, SPEC, CONFIG)
    assert atlas.sums.tensors.keys() == base_atlas.sums.tensors.keys()
    for key, value in base_atlas.sums.tensors.items():
        assert torch.equal(atlas.sums.tensors[key], value), key


def test_stability_study_step0_is_the_base_atlas_and_training_moves_it(tiny_dirs, tiny_models,
                                                                       base_atlas):
    out = stability_study(tiny_dirs["llama"], tiny_models["llama"], base_atlas.sums,
                          family="arithmetic", checkpoints=[4, 0, 2], top_k=2, rank=4,
                          train=TRAIN, spec=SPEC, atlas_config=CONFIG)
    rows = out["rows"]
    assert [r["steps"] for r in rows] == out["checkpoints"] == [0, 2, 4]
    base = hub_summary(base_atlas.sums)
    assert rows[0]["layer_effect"] == list(base.layer_effect)
    assert rows[0]["hub_layer"] == base.hub_layer and rows[0]["spearman_vs_step0"] == 1.0
    assert rows[0]["family_agreement"] == base.family_agreement
    assert rows[-1]["layer_effect"] != rows[0]["layer_effect"]  # training changed the model
    assert rows[-1]["heldout_loss"] < rows[0]["heldout_loss"]
    assert all(-1.0 <= r["spearman_vs_step0"] <= 1.0 for r in rows)
    assert out["hubs"] == [r["hub_layer"] for r in rows]
    # the lock-in margin at step 0 is the hub's margin over the runner-up, as hub_evidence
    # (the atlas's own bootstrap) computes it
    evidence = hub_evidence(base_atlas.sums)
    m0 = rows[0]["step0_hub_margin"]
    assert evidence.hub_layer == base.hub_layer and m0["n"] == evidence.hub_margin.n
    assert m0["estimate"] == pytest.approx(evidence.hub_margin.estimate)
    assert m0["ci"] == pytest.approx([evidence.hub_margin.ci_low, evidence.hub_margin.ci_high])
    assert all("step0_hub_margin" in r for r in rows)
    assert out["hub_moved"] == (len(set(out["hubs"])) > 1)
    assert len(out["train"]["losses"]) == 4
    with pytest.raises(ValueError):
        stability_study(tiny_dirs["llama"], tiny_models["llama"], base_atlas.sums,
                        family="arithmetic", checkpoints=[], train=TRAIN)


def test_layer_margin_is_negative_for_a_layer_below_the_hub(base_atlas):
    base = hub_summary(base_atlas.sums)
    other = min(range(3), key=lambda i: base.layer_effect[i])
    m = layer_margin(base_atlas.sums, other)
    assert m.estimate == pytest.approx(base.layer_effect[other] - base.hub_effect)
    assert m.ci_low <= m.estimate <= m.ci_high and m.estimate < 0


def test_stability_cli(tiny_dirs, base_atlas, tmp_path, capsys):
    from tlatlas.cli import main

    stem = tmp_path / "seed42"
    save_atlas(base_atlas, stem)
    out = tmp_path / "stability.json"
    assert main(["study", "stability", "--model", str(tiny_dirs["llama"]), "--atlas", str(stem),
                 "--families", "arithmetic", "--checkpoints", "0", "2", "--top-k", "1",
                 "--rank", "2", "--n-train", "4", "--n-heldout", "1", "--atlas-per-family", "1",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["steps"] for r in data["rows"]] == [0, 2]
    assert data["atlas_suite"]["families"] == list(base_atlas.sums.families)
    assert data["kind"] == "tlatlas.study.stability"
    assert "hub per checkpoint" in capsys.readouterr().out
