"""The built-in blocks on tiny models, and the claims they support citing existing results."""

import json
import re

import pytest

from experiments import registry as reg
from experiments import run as cli
from experiments.claims import write_claims
from experiments.records import ResultKey, read_record


def test_real_blocks_on_a_tiny_model_and_claims_cite_existing_results(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    code = cli.main(["--model", model, "--blocks",
                     "hub-replication,suite-breadth,ablation-kinds,t-fast-a",
                     "--seeds", "42", "137", "--root", str(root)])
    assert code == 0
    kinds = read_record(root, ResultKey(block="ablation-kinds", model=model, seed=42,
                                        size="smoke"))["value"]
    assert set(kinds["hubs"]) == {"zero", "mean", "resample"}
    assert all(x > 0 for x in kinds["max_effect"].values())
    hub = read_record(root, ResultKey(block="hub-replication", model=model, seed=42, size="smoke"))
    v = hub["value"]
    assert v["n_layers"] == 3 and v["n_examples"] == 24
    effect = v["kl"]["layer_effect"]["estimate"]
    assert 0 <= v["kl"]["hub_layer"] < 3 and effect[v["kl"]["hub_layer"]] == max(effect)
    assert sum(v["kl"]["hub_probability"]) == pytest.approx(1.0)
    assert v["kl"]["hub_margin"]["ci"][0] <= v["kl"]["hub_margin"]["ci"][1]
    assert hub["fingerprints"][0]["n_layers"] == 3 and hub["value"]["artifacts"]
    other = read_record(root, ResultKey(block="hub-replication", model=model, seed=137,
                                        size="smoke"))
    assert other["suite_hash"] != hub["suite_hash"]  # seeds resample the suite

    paths = write_claims(root)
    cited = []
    for path in paths.values():
        text = path.read_text()
        cited += re.findall(r"`(results/[^`]+\.json)`", text)
    assert cited and all((root / c).is_file() for c in cited)
    claims = paths["claim"].read_text()
    assert f"the zero-ablation hub is L{v['kl']['hub_layer']} of 3" in claims
    assert "t-fast-a doubled seed 137 to 274" in claims
    assert "zero ablation is more destructive than mean ablation" in claims
    # every claim carries its n, interval and verdict; at smoke size it is never evidence
    lines = [x for x in claims.splitlines() if x.startswith("- ")]
    assert lines and all("n = " in x and "smoke: not evidence" in x for x in lines)
    assert "No result supports" in paths["gem"].read_text()  # no gem from a smoke run
    # a result that is removed takes its statements with it
    (root / ResultKey(block="t-fast-a", model=model, seed=137, size="smoke").relpath).unlink()
    assert "seed 137 to 274" not in write_claims(root)["claim"].read_text()
    assert json.loads((root / hub["value"]["artifacts"][0]).read_text())["meta"]["seed"] == 42


@pytest.mark.bitsandbytes
def test_steering_quant_and_two_model_blocks_on_tiny_models(tiny_dirs, tmp_path, marks):
    pytest.importorskip("bitsandbytes")
    root = tmp_path / "exp"
    a, b = str(tiny_dirs["llama"]), str(tiny_dirs["qwen2"])
    blocks = "hub-compare,quant-speed,steer-controls,steer-quant,steer-transfer"
    assert cli.main(["--models", a, b, "--blocks", blocks, "--root", str(root)]) == 0
    lines = reg.read_lines(root)
    # per-model blocks once per model, two-model blocks once for the pair
    assert sorted(x["block"] for x in lines) == sorted(
        ["hub-compare", "steer-transfer"] + 2 * ["quant-speed", "steer-controls", "steer-quant"])
    speed = read_record(root, ResultKey(block="quant-speed", model=a, seed=42, size="smoke"))
    rows = {r["precision"]: r for r in speed["value"]["precisions"]}
    assert list(rows) == ["fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8"]
    assert rows["fp32"]["kl_vs_first"] == 0 and rows["fp32"]["slowdown"] == 1
    assert rows["nf4-fp32"]["kl_vs_first"] > rows["int8"]["kl_vs_first"] > 0
    steer = read_record(root, ResultKey(block="steer-controls", model=a, seed=42, size="smoke"))
    v = steer["value"]
    zero = v["scales"].index(0)
    assert all(row[zero] == 0 for row in v["mean_kl"][0])  # s = 0 changes nothing
    assert v["layers"] == [0]  # smoke steers every 3rd layer of 3
    quant = read_record(root, ResultKey(block="steer-quant", model=b, seed=42, size="smoke"))
    assert quant["value"]["precisions"][0] == "fp32"
    assert all(x == pytest.approx(1.0) for x in quant["value"]["amplification"][0][0]
               if x == x)  # fp32 / fp32
    pair = read_record(root, ResultKey(block="hub-compare", model=f"{a}+{b}", seed=42,
                                       size="smoke"))
    assert set(pair["value"]["hubs"]) == {a, b} and len(pair["fingerprints"]) == 2
    paths = write_claims(root)
    claims = paths["claim"].read_text()
    assert "steering transfer" in claims and "amplification" in claims
    assert "hub comparison" in claims


def test_lora_skip_and_lockin_blocks_on_a_tiny_model(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = "lora-strategies,module-sweep,layer-skip,checkpoint-lockin"
    assert cli.main(["--model", model, "--blocks", blocks, "--root", str(root)]) == 0

    def value(block):
        return read_record(root, ResultKey(block=block, model=model, seed=42, size="smoke"))["value"]

    strategies = value("lora-strategies")
    params = {r["strategy"]: r["trainable_params"] for r in strategies["rows"]}
    assert params["atlas"] == params["random"] and params["first-k"] <= params["atlas"]
    assert params["all-linear"] > params["atlas"]
    sweep = value("module-sweep")
    assert len({tuple(r["layers"]) for r in sweep["rows"]}) == 1  # layers held fixed
    skip = value("layer-skip")
    assert {r["skip_set"] for r in skip["rows"]} == {"atlas", "random"}
    assert all(0 <= r["before"]["top5_overlap"] <= 1 and r["before"]["kl"] > 0
               for r in skip["rows"])
    lockin = value("checkpoint-lockin")
    assert [r["steps"] for r in lockin["rows"]] == [0, 2, 4]
    assert lockin["rows"][0]["spearman_vs_step0"] == 1.0
    text = write_claims(root)["claim"].read_text()
    for phrase in ("held-out loss after LoRA", "with the layers fixed", "skipping 2 blocks",
                   "during LoRA on json"):
        assert phrase in text
