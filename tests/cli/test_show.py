"""`tlatlas show`: the hub table with its evidence, and the --json contract."""

import json

import pytest

from tlatlas.cli import main


@pytest.fixture(scope="module")
def run_dir(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("show")
    assert main(["atlas", "--model", str(tiny_dirs["llama"]), "--per-family", "3",
                 "--families", "ioi", "code", "sequence", "--batch-size", "3",
                 "--seeds", "1", "2", "--positions-ablated", "all-but-bos",
                 "--out", str(out)]) == 0
    return out


def test_show_json_meets_the_contract(run_dir, capsys):
    capsys.readouterr()
    assert main(["show", str(run_dir), "--json", "--replicates", "200"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["seed"] for s in doc["seeds"]] == [1, 2]
    for s in doc["seeds"]:
        n_layers = len(s["layers"])
        assert s["n_examples"] == 9 and s["ablation"] == "zero"
        assert s["positions_ablated"] == "all-but-bos"
        assert len(s["hub_probability"]) == n_layers
        assert sum(s["hub_probability"]) == pytest.approx(1.0)
        assert s["hub_layer"] in s["layers"]
        lo, hi = s["hub_margin"]["ci"]
        assert lo <= s["hub_margin"]["estimate"] <= hi or lo <= hi
        for key in ("estimate", "ci_low", "ci_high"):
            assert len(s["layer_effect"][key]) == n_layers
        assert all(a <= b for a, b in zip(s["layer_effect"]["ci_low"],
                                          s["layer_effect"]["ci_high"], strict=True))
        a_lo, a_hi = s["family_agreement"]["ci"]
        assert 0 <= a_lo <= a_hi <= 1 and 0 <= s["family_agreement"]["estimate"] <= 1
        assert set(s["clean"]) == {"ioi", "code", "sequence"}


def test_show_table_prints_p_hub_margin_and_no_spread_for_one_seed(run_dir, tmp_path, capsys):
    capsys.readouterr()
    assert main(["show", str(run_dir), "--replicates", "100"]) == 0
    out = capsys.readouterr().out
    assert "P(hub)" in out and "margin over runner-up [95% CI]" in out
    assert "hub per seed [" in out and "std" in out  # two seeds: a spread
    one = tmp_path / "one"
    one.mkdir()
    for f in run_dir.glob("seed1.*"):
        (one / f.name).write_bytes(f.read_bytes())
    assert main(["show", str(one), "--replicates", "100"]) == 0
    out = capsys.readouterr().out
    assert "no spread across seeds" in out and "std" not in out
