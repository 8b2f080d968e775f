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
    # findings: the origin report's claims, with the seeds' statements and smoke verdicts
    findings = paths["findings"].read_text()
    assert paths["findings"] == root / "findings.md"
    hub_row = next(x for x in findings.splitlines() if x.startswith("| Each model has one hub"))
    assert f"seed 42: L{v['kl']['hub_layer']} of 3" in hub_row and "smoke: not evidence" in hub_row
    assert "| The hub replicates across seeds" in findings and "n = 2," in findings
    assert "not testable here" in findings
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
    n_batches = len(rows["fp32"]["batch_s"])
    assert n_batches >= 2 and all(len(r["batch_s"]) == n_batches and min(r["batch_s"]) > 0
                                  for r in rows.values())
    steer = read_record(root, ResultKey(block="steer-controls", model=a, seed=42, size="smoke"))
    v = steer["value"]
    zero = v["scales"].index(0)
    assert all(row[zero] == 0 for row in v["mean_kl"][0])  # s = 0 changes nothing
    assert v["layers"] == [0]  # smoke steers every 3rd layer of 3
    # held out: 4 per family, 2 estimate the vectors (and the partition halves), 2 are scored
    assert v["heldout"] and v["n_examples"] == v["n_train"] == 2 * len(v["families"])
    assert (v["random_draws"], v["partition_draws"]) == (2, 2)
    assert v["config"]["regime"] == "linear" and v["config"]["heldout_fraction"] == 0.5
    neg = v["per_sign"]["negative"]
    assert (neg["extreme"], neg["small"]) == (-1.0, -0.25)
    assert len(neg["extreme_kl_over_random"][0]) == len(v["layers"])
    best = v["best_layer"]["fp32"]
    for key in ("slope", "over_random", "over_partition", "wrong_way"):
        iv = best[key]
        assert iv["n"] == v["n_examples"] and iv["ci"][0] <= iv["estimate"] <= iv["ci"][1]
    assert best["layer"] == 0 and set(v["most_steerable"]["fp32"]) == set(v["families"])
    assert v["amplification"] == {} and v["drift"] == {}  # one precision row
    quant = read_record(root, ResultKey(block="steer-quant", model=b, seed=42, size="smoke"))
    q = quant["value"]
    assert q["precisions"][0] == "fp32" and q["reference"] == "fp32" and q["heldout"]
    assert set(q["amplification"]) == {"bf16", "nf4-fp32", "nf4-bf16", "int8"}
    grid = q["amplification"]["bf16"]["vector"][0]  # layer 0, every scale
    assert grid[q["scales"].index(0)] is None  # s = 0: both KLs are 0
    assert all(c["n"] == q["n_examples"] and c["ci"][0] <= c["ci"][1] for c in grid if c)
    assert q["drift"]["nf4-fp32"]["kl"]["estimate"] > q["drift"]["bf16"]["kl"]["estimate"] >= 0
    transfer = read_record(root, ResultKey(block="steer-transfer", model=f"{a}+{b}", seed=42,
                                           size="smoke"))["value"]["directions"]
    assert [(d["meta"]["model_a"], d["meta"]["model_b"]) for d in transfer] == [(a, b), (b, a)]
    assert all(sl["transferred_over_random"]["n"] > 0 for d in transfer for sl in d["slopes"])
    pair = read_record(root, ResultKey(block="hub-compare", model=f"{a}+{b}", seed=42,
                                       size="smoke"))
    assert set(pair["value"]["hubs"]) == {a, b} and len(pair["fingerprints"]) == 2
    paths = write_claims(root)
    claims = paths["claim"].read_text()
    assert "steering transfer" in claims and "amplifies steering over fp32" in claims
    assert "raises the answer more than a norm-matched random direction" in claims
    assert "hub comparison" in claims
    steering = [x for x in claims.splitlines() if "steer" in x and x.startswith("- ")]
    assert steering and all("smoke: not evidence" in x and "n = " in x for x in steering)
    assert "95% CI [" in claims.split("amplifies steering over fp32")[1].splitlines()[0]
    speed_line = next(x for x in claims.splitlines() if "faster quantized copy" in x)
    assert "prompt batches" in speed_line and "95% CI [" in speed_line
    # the findings row's value is on its interval's scale (ratio - 1), not the per-pass ratio
    row = next(x for x in paths["findings"].read_text().splitlines() if "int8 is 52%" in x)
    assert "int8 time / NF4 time - 1 = " in row and "95% CI [" in row


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
    paths = write_claims(root)
    text = paths["claim"].read_text()
    studies = paths["studies"].read_text()
    sections = studies.split("\n## ")[1:]
    assert [s.split("\n")[0][:3] for s in sections] == ["(a)", "(b)", "(c)", "(d)"]
    assert all("smoke: not evidence" in s and "Not run yet" not in s for s in sections)
    atlas_row = next(x for x in sections[0].splitlines() if x.startswith("| atlas |"))
    assert f"| {params['atlas']:,} |" in atlas_row and "reference" in atlas_row
    lockin_rows = [x for x in sections[3].splitlines() if x[:2] == "| " and x[2].isdigit()]
    assert [int(x.split("|")[1]) for x in lockin_rows] == [0, 2, 4]
    skip_rows = [x for x in sections[2].splitlines() if x.startswith(("| atlas", "| random"))]
    assert len(skip_rows) == 2 and all("→" in x for x in skip_rows)  # both were recovered
    for phrase in ("held-out loss after LoRA", "with the layers fixed", "skipping 2 blocks",
                   "during LoRA on json", "keeps part of the full model's top 5"):
        assert phrase in text
    findings = (root / "findings.md").read_text()
    for origin in ("Atlas-guided LoRA beats random-matched", "o_proj is the most efficient",
                   "All layers are necessary", "G3", "G4"):
        row = next(x for x in findings.splitlines() if origin in x)
        assert "smoke: not evidence" in row and "results/" in row


def test_slowdown_interval_pairs_batches():
    from experiments.blocks.steering_blocks import slowdown_interval

    fast = [0.1, 0.2, 0.3, 0.4]
    iv = slowdown_interval([2 * t for t in fast], fast)  # every batch exactly twice as slow
    assert iv.n == 4 and iv.estimate == pytest.approx(1.0)
    assert iv.ci_low == pytest.approx(1.0) and iv.ci_high == pytest.approx(1.0)
    mixed = slowdown_interval([0.2, 0.2, 0.6, 0.4], fast)  # slower on some batches, not all
    assert mixed.ci_low < mixed.estimate < mixed.ci_high and mixed.ci_low < 0.5 < mixed.ci_high
    with pytest.raises(ValueError, match="paired"):
        slowdown_interval([0.1, 0.2], fast)
