"""Threats from training seeds that disagree with a decisive LoRA comparison."""

from pathlib import Path

from experiments.claims import statements
from experiments.seed_threats import seed_differences, seed_threats


def interval(estimate, lo, hi, n=64):
    return {"estimate": estimate, "ci": [lo, hi], "confidence": 0.95, "n": n}


def module_sweep(losses: dict[str, dict[int, float]], loss_ci, *, size="small"):
    """A module-sweep record at one budget: held-out loss per (module set, training seed),
    and the ``qkv - o`` comparison's interval."""
    rows = [{"budget": 1000, "module_set": name, "seed": seed, "heldout_loss_after": loss}
            for name, by_seed in losses.items() for seed, loss in by_seed.items()]
    params = {name: 1000 for name in losses}
    comparison = {"n": 64, "loss": interval(*loss_ci), "exact_match": interval(0.0, 0.0, 0.0)}
    return {"block": "module-sweep", "model": "m", "size": size, "seed": 42,
            "path": "results/m/module-sweep/small-seed42.json",
            "value": {"layers": [0, 1], "rows": rows,
                      "budgets": [{"requested": 1000, "trainable_params": params, "spread": 0.0}],
                      "comparisons": {"1000": {"qkv": comparison}}}}


def test_per_seed_differences_average_each_seeds_rows_first():
    ref = [{"seed": 1, "heldout_loss_after": 1.0}, {"seed": 2, "heldout_loss_after": 2.0}]
    other = [{"seed": 1, "heldout_loss_after": 1.5}, {"seed": 1, "heldout_loss_after": 2.5},
             {"seed": 2, "heldout_loss_after": 1.0}]
    assert seed_differences(ref, other) == {1: 1.0, 2: -1.0}


def test_a_decisive_comparison_that_one_seed_contradicts_is_a_threat():
    # pooled qkv - o = +0.3 [+0.1, +0.5], but seed 2 has qkv better than o
    r = module_sweep({"o": {1: 0.1, 2: 0.5}, "qkv": {1: 0.9, 2: 0.4}}, (0.3, 0.1, 0.5))
    (threat,) = seed_threats({"module-sweep": [r]})
    assert threat.kind == "threat" and threat.sources == (r["path"],)
    assert "+0.800 with training seed 1, -0.100 with training seed 2" in threat.text
    assert "rests on 1 of 2 training seeds" in threat.text
    assert "held-out loss at 1000 params" in threat.text


def test_agreeing_seeds_inconclusive_intervals_and_smoke_give_no_threat():
    agree = module_sweep({"o": {1: 0.1, 2: 0.2}, "qkv": {1: 0.9, 2: 0.4}}, (0.3, 0.1, 0.5))
    assert seed_threats({"module-sweep": [agree]}) == []
    split_but_open = module_sweep({"o": {1: 0.1, 2: 0.5}, "qkv": {1: 0.9, 2: 0.4}},
                                  (0.3, -0.1, 0.5))
    assert seed_threats({"module-sweep": [split_but_open]}) == []
    smoke = module_sweep({"o": {1: 0.1, 2: 0.5}, "qkv": {1: 0.9, 2: 0.4}}, (0.3, 0.1, 0.5),
                         size="smoke")
    assert seed_threats({"module-sweep": [smoke]}) == []
    # one training seed: no second seed to disagree with, even against the pooled sign
    one_seed = module_sweep({"o": {1: 0.1}, "qkv": {1: 0.9}}, (-0.3, -0.5, -0.1))
    assert seed_threats({"module-sweep": [one_seed]}) == []


def test_claims_carry_the_threat_beside_the_verdict_it_qualifies(tmp_path: Path):
    r = module_sweep({"o": {1: 0.1, 2: 0.5}, "qkv": {1: 0.9, 2: 0.4}}, (0.3, 0.1, 0.5))
    (tmp_path / r["path"]).parent.mkdir(parents=True)
    (tmp_path / r["path"]).write_text("{}")
    found = statements(tmp_path, ({"module-sweep": [r]}, []))
    claim = next(s for s in found if s.kind in ("claim", "gem"))
    assert claim.verdict == "supported"
    threats = [s for s in found if s.kind == "threat"]
    assert len(threats) == 1 and threats[0].sources == claim.sources
