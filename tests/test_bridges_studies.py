import json

import pytest

from bridges.influence import block_influence
from tlatlas.atlas import AtlasConfig
from tlatlas.pipeline import SuiteSpec, build_atlas
from tlatlas.store import save_atlas
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
    assert "adalora" in data["skipped"]
    assert "atlas" in capsys.readouterr().out


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
