"""The LoRA blocks' statements: every claim carries n, a CI and a verdict by the stated
rule; gems only for supported findings; smoke size is never evidence."""

import pytest

from experiments.blocks import all_blocks


def _iv(est, lo, hi, n=96):
    return {"estimate": est, "ci": [lo, hi], "n": n, "confidence": 0.95}


def _cmp(loss, n=96):
    return {"n": n, "seeds": [0, 1], "loss": loss, "exact_match": _iv(0.0, -0.1, 0.1, n),
            "by_family": {}}


def _strategy_row(strategy, loss, flattening=0.01):
    return {"strategy": strategy, "family": "json", "seed": 0, "trainable_params": 100,
            "heldout_loss_after": loss, "flattening": flattening,
            "layers": [0, 1] if strategy == "first-k" else [3, 4]}


CHOOSER = {"powered": True, "min_per_family": 16, "positions_ablated": "all-but-bos"}


def _records(size):
    strategies = {"rows": [_strategy_row("atlas", 0.5), _strategy_row("random", 0.8),
                           _strategy_row("first-k", 0.5),
                           _strategy_row("all-linear", 0.1, flattening=0.2)],
                  "comparisons": {"random": _cmp(_iv(0.3, 0.1, 0.5)),
                                  "first-k": _cmp(_iv(0.0, -0.1, 0.1)),
                                  "all-linear": _cmp(_iv(-0.4, -0.6, -0.2))},
                  "skipped": {"adalora": "not run: 4 steps cannot hold AdaLoRA's schedule"},
                  "chooser": {**CHOOSER, "powered": False, "min_per_family": 2},
                  "design": {"seeds": [0, 1], "random_draws": 3, "families": ["json"],
                             "n_heldout": 32, "steps": 60}}
    sweep = {"layers": [1, 2], "rows": [
        {"module_set": m, "budget": 800, "heldout_loss_after": x}
        for m, x in (("o", 0.4), ("qkv", 0.5), ("mlp", 0.3), ("all", 0.4))],
        "budgets": [{"requested": 800, "ranks": {}, "spread": 0.02,
                     "trainable_params": {"o": 800, "qkv": 790, "mlp": 810, "all": 800}}],
        "comparisons": {"800": {"qkv": _cmp(_iv(0.1, 0.05, 0.2), 64),
                                "mlp": _cmp(_iv(-0.1, -0.2, -0.05), 64),
                                "all": _cmp(_iv(0.0, -0.1, 0.1), 64)}},
        "chooser": CHOOSER}
    skip_row = {"skip_set": "atlas", "layers_skipped": [3, 4], "objective": "distill",
                "rank": 8, "before": {"kl": 0.5, "top5_overlap": 0.6},
                "after": {"kl": 0.2, "top5_overlap": 0.8}, "recovery": _iv(0.3, 0.2, 0.4, 48)}
    skip = {"k": 2, "n_prompts": 48, "rows": [skip_row, {**skip_row, "skip_set": "random",
                                                         "recovery": _iv(0.1, -0.1, 0.3, 48)}],
            "sets": {"atlas": {"layers": [3, 4], "kl": 0.5, "percentile": _iv(2, 0, 6, 48)},
                     "block-influence": {"layers": [1, 4], "kl": 0.9,
                                         "percentile": _iv(30, 20, 40, 48)}},
            "distribution": {"n_sets": 50, "exhaustive": False, "total_sets": 435},
            "comparisons": {"random_sets_minus_atlas": _iv(2.0, 1.0, 3.0, 48),
                            "block_influence_minus_atlas": _iv(0.4, -0.1, 0.9, 48)},
            "recovery": {"steps": 40}, "chooser": CHOOSER}
    lockin = {"family": "json", "rows": [
        {"steps": 0, "hub_layer": 3, "spearman_vs_step0": 1.0,
         "step0_hub_margin": _iv(0.5, 0.2, 0.8, 96)},
        {"steps": 60, "hub_layer": 5, "spearman_vs_step0": 0.7,
         "step0_hub_margin": _iv(-0.4, -0.7, -0.1, 96)}], "chooser": CHOOSER}
    values = {"lora-strategies": strategies, "module-sweep": sweep, "layer-skip": skip,
              "checkpoint-lockin": lockin}
    return {block: [{"model": "m", "size": size, "seed": 42, "path": f"results/{block}.json",
                     "value": value}] for block, value in values.items()}


@pytest.mark.parametrize("size", ["small", "smoke"])
def test_lora_statements_carry_n_ci_and_a_verdict_by_the_rule(size):
    blocks = all_blocks()
    records = _records(size)
    statements = {bid: blocks[bid].summarize(records) for bid in records}
    claims = [s for ss in statements.values() for s in ss if s.kind in ("claim", "gem")]
    assert claims and all(s.n is not None and s.ci is not None and s.verdict for s in claims)
    if size == "smoke":
        assert all(s.verdict == "smoke: not evidence" and s.kind == "claim" for s in claims)
        return
    verdicts = {bid: [(s.kind, s.verdict) for s in ss if s.verdict]
                for bid, ss in statements.items()}
    # strategies: random CI above 0 -> gem; first-k straddles 0; all-linear below 0
    assert verdicts["lora-strategies"] == [("gem", "supported"), ("claim", "inconclusive"),
                                           ("claim", "contradicted")]
    text = " ".join(s.text for s in statements["lora-strategies"])
    assert "held-out loss after LoRA" in text and "not run" in text
    assert "smallest family" in text and "still fell 20%" in text  # threats
    assert "first-k (100 params, the same layers)" not in text
    assert "random (100 params, the same layers)" in text
    # module sweep: o vs qkv supported; o vs mlp contradicted -> a claim, not a gem
    assert verdicts["module-sweep"] == [("claim", "supported"), ("claim", "contradicted"),
                                        ("claim", "inconclusive")]
    # layer skip: atlas safer than the distribution (gem), vs BI inconclusive, recoveries
    assert verdicts["layer-skip"] == [("gem", "supported"), ("claim", "inconclusive"),
                                      ("claim", "supported"), ("claim", "inconclusive")]
    skip_text = statements["layer-skip"][0].text
    assert "percentile 2 [0, 6]" in skip_text and "50 random (of 435)" in skip_text
    # lock-in: the step-0 hub lost its place (contradicted), and the move is a gem
    assert verdicts["checkpoint-lockin"] == [("claim", "contradicted"), ("gem", "supported")]
    assert statements["checkpoint-lockin"][0].n == 96


def test_the_studies_report_says_which_studies_have_not_run():
    from experiments.studies_report import BLOCKS, render_studies

    text = render_studies({}, "python -m experiments.claims")
    sections = text.split("\n## ")[1:]
    assert len(sections) == len(BLOCKS)
    assert all(f"Not run yet (`{b}`)" in s for b, s in zip(BLOCKS, sections, strict=True))
    assert "python -m experiments.claims" in text
