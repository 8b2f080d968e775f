"""`tlatlas atlas` options for estimate-then-verify, memory-aware batching and dtype, and
what `tlatlas show` says about which values are exact. End to end on the tiny llama;
assertions are on the saved atlas and the printed report, never on timing."""

import argparse
import inspect
import json
import re
import warnings

import pytest
import torch

from tlatlas.cli import main
from tlatlas.cli.common import (
    batch_size_or_auto,
    format_bytes,
    memory_size,
    warnings_as_lines,
)

FAMILIES = ["ioi", "code"]


def _atlas(model_dir, out, *extra: str) -> list[str]:
    return ["atlas", "--model", str(model_dir), "--per-family", "3", "--families", *FAMILIES,
            *extra, "--out", str(out)]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("text", "size"), [
    ("2GiB", 2 * 2**30), ("1gib", 2**30), ("1.5GiB", 3 * 2**29), ("500MB", 500 * 10**6),
    ("500 MiB", 500 * 2**20), ("64KiB", 64 * 2**10), ("1kB", 1000), ("1073741824", 2**30),
    ("1024B", 1024), (" 3TB ", 3 * 10**12), (".5GiB", 2**29),
])
def test_memory_size_reads_units(text, size):
    assert memory_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0GiB", "GiB", "-1GiB", "1.5", "2 GiBs", "1e9",
                                  "2GB5", "1XB", "nan", "0.0000001KiB"])
def test_memory_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="wants"):
        memory_size(text)


def test_batch_size_or_auto():
    assert batch_size_or_auto("auto") == 0 == batch_size_or_auto("AUTO")
    assert batch_size_or_auto("8") == 8
    for bad in ("1", "0", "-2", "x", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto or a whole number >= 2"):
            batch_size_or_auto(bad)


def test_format_bytes():
    assert format_bytes(2**30) == "1.0 GiB" and format_bytes(3 * 2**19) == "1.5 MiB"
    assert format_bytes(12) == "12 B"


def test_choices_and_defaults_match_the_library():
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.estimate_spec import ONE_POINT_METHODS
    from tlatlas.atlas.estimators import ESTIMATOR_METHODS, FIRST_ORDER
    from tlatlas.atlas.pipeline import METHODS, build_atlas
    from tlatlas.atlas.verify import VerifyConfig
    from tlatlas.cli.atlas import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_TOP_K,
        DTYPE_CHOICES,
        ESTIMATOR_CHOICES,
        FIRST_ORDER_ESTIMATORS,
        METHOD_CHOICES,
    )
    from tlatlas.models import DTYPES
    from tlatlas.models.memory import SAFETY_FRACTION

    assert tuple(METHOD_CHOICES) == METHODS
    assert set(ESTIMATOR_CHOICES) == {FIRST_ORDER.name, *ESTIMATOR_METHODS}
    assert set(FIRST_ORDER_ESTIMATORS) == {"first_order", *ONE_POINT_METHODS}
    assert tuple(DTYPE_CHOICES) == tuple(DTYPES)
    assert DEFAULT_TOP_K == VerifyConfig().top_k == \
        inspect.signature(build_atlas).parameters["top_k"].default
    assert DEFAULT_BATCH_SIZE == AtlasConfig().batch_size
    assert SAFETY_FRACTION == 0.8  # --memory-budget's help says 80%


def test_warnings_as_lines(capsys):
    from tlatlas.models.memory import MemoryBackoffWarning

    with warnings_as_lines(MemoryBackoffWarning):
        warnings.warn(MemoryBackoffWarning("atlas sweep: out of memory\n on a batch of 8"),
                      stacklevel=1)
        warnings.warn(MemoryBackoffWarning("again"), stacklevel=1)  # every time, not once
    err = capsys.readouterr().err
    assert "tlatlas: warning: atlas sweep: out of memory on a batch of 8\n" in err
    assert "tlatlas: warning: again" in err


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def verify_run(tiny_dirs, tmp_path_factory):
    """`tlatlas atlas --method verify --top-k 2` (and its printed report)."""
    out = tmp_path_factory.mktemp("verify")
    assert main(_atlas(tiny_dirs["llama"], out, "--method", "verify", "--top-k", "2",
                       "--screen", "1", "--batch-size", "3")) == 0
    return out


def test_verify_run_records_what_was_verified(verify_run):
    from tlatlas.atlas.config import COMPONENTS
    from tlatlas.atlas.hubs import verified_layer_mask
    from tlatlas.atlas.store import load_atlas

    atlas = load_atlas(verify_run / "seed42")
    m, sums = atlas.meta, atlas.sums
    assert m.method == "verify" and m.n_examples == 6
    assert "--method verify --top-k 2" in m.command
    est = m.estimate
    assert est["top_k"] == 2 and est["patience"] == 4  # patience defaults to 2 * top_k
    assert est["estimator"]["name"] == "bound"
    assert est["screen"] == 1 and est["screened"] == len(sums.families)  # one per family
    assert sums.has_verified
    exact = sum(int(verified_layer_mask(sums, c).sum()) for c in COMPONENTS)
    assert est["layer_verified"] == exact and est["layer_entries"] == 3 * len(sums.layers)
    assert 2 <= exact <= est["layer_entries"]


def test_show_says_which_values_are_exact(verify_run, capsys):
    from tlatlas.atlas.hubs import verified_layers
    from tlatlas.atlas.store import load_atlas

    atlas = load_atlas(verify_run / "seed42")
    capsys.readouterr()
    assert main(["show", str(verify_run), "--json", "--replicates", "50"]) == 0
    seed = json.loads(capsys.readouterr().out)["seeds"][0]
    v = seed["values"]
    assert v["exact"] == "verified" and v["method"] == "verify"
    assert v["entries_verified"] == atlas.meta.estimate["layer_verified"]
    assert v["entries"] == 3 * len(atlas.sums.layers)
    assert v["top_k"] == 2 and v["patience"] == 4 and v["estimator"]["name"] == "bound"
    # without positions the one-example screen fills the unverified entries, not bound
    assert v["filled_by"] == "screen" and v["screen"] == 1 and "screen" in v["estimated"]
    assert v["hub_layers"] == list(verified_layers(atlas.sums)) == v["exact_layers"]["block"]
    # the hub and its evidence come from verified layers only, and the arrays follow them
    assert seed["hub_layer"] in v["hub_layers"]
    assert seed["layers"] == v["hub_layers"]
    assert seed["swept_layers"] == list(atlas.sums.layers)
    assert len(seed["hub_probability"]) == len(seed["layers"]) == \
        len(seed["layer_effect"]["estimate"])
    assert main(["show", str(verify_run), "--replicates", "50"]) == 0
    out = capsys.readouterr().out
    assert f"values: {v['entries_verified']}/{v['entries']} layer entries exact" in out
    assert "hub over the exact block layers only" in out
    assert "patience rule, patience 4, ordered by a screen of 1 per family" in out


def test_show_of_an_exact_atlas_says_all_exact(tiny_dirs, tmp_path, capsys):
    assert main(_atlas(tiny_dirs["llama"], tmp_path, "--batch-size", "3", "--dtype",
                       "fp32")) == 0
    capsys.readouterr()
    assert main(["show", str(tmp_path), "--json", "--replicates", "20"]) == 0
    seed = json.loads(capsys.readouterr().out)["seeds"][0]
    assert seed["values"] == {"exact": "all", "method": "exact"}
    assert seed["swept_layers"] == seed["layers"] == [0, 1, 2]


def test_auto_batch_with_a_memory_budget(tiny_dirs, tiny_models, tmp_path, capsys):
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.store import load_atlas
    from tlatlas.atlas.sweep import atlas_batch_plans
    from tlatlas.tasks import build_suite

    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    capsys.readouterr()
    assert main(_atlas(tiny_dirs["llama"], auto, "--batch-size", "auto", "--memory-budget",
                       "1GiB")) == 0
    err = capsys.readouterr().err
    atlas = load_atlas(auto / "seed42")
    assert "--batch-size auto --memory-budget 1GiB" in atlas.meta.command
    assert atlas.meta.n_examples == 6
    # the batch printed is the planner's for that budget (capped at each family's size)
    examples = list(build_suite("synthetic", seed=42, per_family=3, families=FAMILIES))
    plans = atlas_batch_plans(tiny_models["llama"], examples,
                              AtlasConfig(batch_size=0, memory_budget_bytes=2**30))
    line = next(x for x in err.splitlines() if "batch size per family" in x)
    assert "from a 1.0 GiB budget" in line
    for f, plan in plans.items():
        assert f"{f} {min(plan.batch_size, 3)} (up to {plan.batch_size})" in line
    assert all(p.budget_bytes == 2**30 for p in plans.values())
    # a family's whole 3 examples fit, so the sums are the fixed batch of 3's
    assert main(_atlas(tiny_dirs["llama"], fixed, "--batch-size", "3")) == 0
    exact = load_atlas(fixed / "seed42")
    for key in ("layer.sum", "count"):
        torch.testing.assert_close(atlas.sums.tensors[key], exact.sums.tensors[key])


def test_dtype_is_loaded_and_recorded(tiny_dirs, tmp_path, capsys):
    from tlatlas.atlas.store import load_atlas

    assert main(_atlas(tiny_dirs["llama"], tmp_path, "--batch-size", "3", "--dtype",
                       "bf16")) == 0
    assert load_atlas(tmp_path / "seed42").meta.dtype == "bf16"
    assert re.search(r"method exact\s+dtype bf16", capsys.readouterr().out)


def test_attribution_with_a_path_estimator(tiny_dirs, tmp_path, capsys):
    from tlatlas.atlas.store import load_atlas

    capsys.readouterr()
    assert main(_atlas(tiny_dirs["llama"], tmp_path, "--batch-size", "3", "--method",
                       "attribution", "--estimator", "ig_joint", "--steps", "2")) == 0
    out = capsys.readouterr().out
    meta = load_atlas(tmp_path / "seed42").meta
    assert meta.estimate["estimator"] == {"method": "ig_joint", "steps": 2, "name": "ig_joint"}
    assert "values: all estimated, none exact" in out
    assert "metric kl" in out  # a path of two points estimates KL too


def test_attribution_with_the_fisher_estimate_shows_kl(tiny_dirs, tmp_path, capsys):
    """``fisher`` estimates KL alone: the file says so, Delta-logp stays NaN, and the maps
    (show, the report, position maps) show KL, where other attribution atlases show dlogp."""
    from tlatlas.atlas.estimate_spec import shown_metric
    from tlatlas.atlas.store import load_atlas
    from tlatlas.metrics import METRICS

    capsys.readouterr()
    assert main(_atlas(tiny_dirs["llama"], tmp_path, "--batch-size", "3", "--method",
                       "attribution", "--estimator", "fisher")) == 0
    out = capsys.readouterr().out
    atlas = load_atlas(tmp_path / "seed42")
    assert atlas.meta.estimate["estimator"] == {"method": "fisher", "steps": 1,
                                                "name": "fisher", "outcomes": 8}
    layer = atlas.sums.tensors["layer.sum"]
    assert torch.isfinite(layer[METRICS.index("kl")]).all()
    assert (layer[METRICS.index("kl")] >= 0).all()
    assert torch.isnan(layer[METRICS.index("dlogp")]).all()
    assert "metric kl" in out and "second-order estimate of kl" in out
    assert shown_metric("attribution", atlas.meta.estimate) == "kl"
    assert shown_metric("attribution", {"estimator": {"method": "bound"}}) == "dlogp"
    assert shown_metric("verify", atlas.meta.estimate) == "kl"
    capsys.readouterr()
    assert main(_atlas(tiny_dirs["llama"], tmp_path / "x", "--method", "attribution",
                       "--estimator", "fisher", "--steps", "2")) != 0
    assert "takes one point" in capsys.readouterr().err


def test_fisher_outcomes_are_chosen_recorded_and_coarser_is_lower(tiny_dirs, tmp_path, capsys):
    """``--outcomes K`` sets fisher's partition (recorded); top-2 and the rest is a
    coarsening of top-8 and the rest, so its Fisher information, and every KL estimate,
    is no larger; ``--outcomes`` with any other estimator is an error."""
    from tlatlas.atlas.store import load_atlas
    from tlatlas.metrics import METRICS

    kl = {}
    for k in (2, 8):
        assert main(_atlas(tiny_dirs["llama"], tmp_path / str(k), "--batch-size", "3",
                           "--method", "attribution", "--estimator", "fisher",
                           "--outcomes", str(k))) == 0
        atlas = load_atlas(tmp_path / str(k) / "seed42")
        assert atlas.meta.estimate["estimator"]["outcomes"] == k
        kl[k] = atlas.sums.tensors["layer.sum"][METRICS.index("kl")]
    assert (kl[2] <= kl[8] * (1 + 1e-5) + 1e-9).all() and (kl[2] < kl[8]).any()
    capsys.readouterr()
    assert main(_atlas(tiny_dirs["llama"], tmp_path / "x", "--method", "attribution",
                       "--estimator", "bound", "--outcomes", "4")) != 0
    assert "--outcomes applies to --estimator fisher and fisher_bound" in capsys.readouterr().err
    assert main(_atlas(tiny_dirs["llama"], tmp_path / "y", "--outcomes", "4")) != 0
    assert "--outcomes applies to --method attribution or verify" in capsys.readouterr().err


def test_components_block_computes_the_block_only(tiny_dirs, tmp_path, capsys):
    from tlatlas.atlas.store import find_atlases, load_atlas

    assert main(_atlas(tiny_dirs["llama"], tmp_path, "--batch-size", "3", "--components",
                       "block")) == 0
    atlas = load_atlas(find_atlases(tmp_path)[0])
    assert atlas.meta.components == ("block",)
    layer = atlas.sums.tensors["layer.sum"]
    assert layer[:, :2].isnan().all() and layer[:, 2].isfinite().all()
    capsys.readouterr()
    assert main(["show", str(tmp_path), "--replicates", "20"]) == 0  # the hub reads block
    assert "hub" in capsys.readouterr().out


def test_an_atlas_is_named_by_stem_file_or_its_only_directory(tiny_models, tmp_path):
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
    from tlatlas.atlas.store import load_atlas, save_atlas
    from tlatlas.cli.common import atlas_stem, atlas_stems
    from tlatlas.errors import InvalidInputError

    atlas = build_atlas(tiny_models["llama"], SuiteSpec(per_family=2, families=("ioi",)),
                        AtlasConfig(batch_size=2))
    one, two = tmp_path / "one", tmp_path / "two"
    save_atlas(atlas, one / "seed42")
    save_atlas(atlas, two / "seed42")
    save_atlas(atlas, two / "seed137")
    for given in (one / "seed42", one / "seed42.atlas.json", one / "seed42.atlas.safetensors"):
        assert atlas_stems(str(given)) == [one / "seed42"]
    assert atlas_stems(str(two)) == [two / "seed137", two / "seed42"]
    assert load_atlas(atlas_stem(str(one))).meta == atlas.meta  # a directory of one names it
    with pytest.raises(InvalidInputError, match=r"holds 2 atlases \(seed137, seed42\); name one"):
        atlas_stem(str(two))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="with no atlas"):
        atlas_stem(str(tmp_path / "empty"))
    with pytest.raises(InvalidInputError, match="is not a directory, nor an atlas"):
        atlas_stems(str(tmp_path / "nosuch"))
