"""Pooling strategy-study runs (bridges.pool, `tlatlas pool`) on hand-built rows."""

import json

import pytest

from bridges.compare import compare_to
from bridges.pool import pooled, seed_differences
from tlatlas.cli import main


def _row(seed: int, strategy: str, losses: list[float], layers=(0, 1)) -> dict:
    return {"seed": seed, "family": "json", "strategy": strategy, "layers": list(layers),
            "heldout_uids": list(range(len(losses))), "heldout_losses": losses,
            "heldout_hits": [loss < 0.5 for loss in losses]}


def _study(seeds: list[int], gap: float) -> list[dict]:
    """``random`` worse than ``atlas`` by ``gap`` on every prompt of every seed (its two
    draws straddle that mean)."""
    rows = []
    for s in seeds:
        base = [0.1 * (i + 1) for i in range(4)]
        rows.append(_row(s, "atlas", base))
        rows.append(_row(s, "random", [b + gap - 0.1 for b in base], layers=(2, 3)))
        rows.append(_row(s, "random", [b + gap + 0.1 for b in base], layers=(4, 5)))
    return rows


def test_pooling_adds_pairs_and_refuses_a_run_twice():
    a, b = _study([1, 2], 0.2), _study([3], 0.5)
    rows = pooled([a, b])
    c = compare_to(rows, "strategy", "atlas", "random")
    assert c["n"] == 12 and c["seeds"] == [1, 2, 3]
    assert c["loss"]["estimate"] == pytest.approx((8 * 0.2 + 4 * 0.5) / 12)
    assert seed_differences(rows, "strategy", "atlas", "random") == pytest.approx(
        {1: 0.2, 2: 0.2, 3: 0.5})
    with pytest.raises(ValueError, match="appears twice"):
        pooled([a, _study([2], 0.3)])


def test_pool_command_pools_files_of_one_design_only(tmp_path, capsys):
    design = {"steps": 60, "lr": 0.002}
    one, two, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    one.write_text(json.dumps({"value": {"rows": _study([1], 0.2),
                                         "design": {**design, "seeds": [1]}}}))
    two.write_text(json.dumps({"rows": _study([2], 0.2), "design": {**design, "seeds": [2]}}))
    other.write_text(json.dumps({"rows": _study([3], 0.2), "design": {"steps": 200}}))
    assert main(["pool", str(one), str(two)]) == 0
    out = capsys.readouterr().out
    assert "n =    8 (2 seeds)  loss +0.200" in out and "per seed: 1: +0.200, 2: +0.200" in out
    assert main(["pool", str(one), str(other)]) != 0
    assert "designs differ" in capsys.readouterr().err
    assert main(["pool", str(one), str(one)]) != 0
    assert "appears twice" in capsys.readouterr().err
    modules = tmp_path / "m.json"
    modules.write_text(json.dumps({"rows": [{"seed": 1, "modules": ["o"]}], "design": design}))
    assert main(["pool", str(one), str(modules)]) != 0
    assert "not a strategy study result" in capsys.readouterr().err
