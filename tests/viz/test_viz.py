"""Position maps (exact == an independent naive loop), figures (axes and data), the report."""

import html
import json
import re

import numpy as np
import pytest
import torch

from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import hub_summary, seed_spread
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.posmap import atlas_position_maps, position_map
from tlatlas.atlas.store import save_atlas
from tlatlas.atlas.sums import AtlasSums, mean_effect, offset_effect
from tlatlas.metrics import METRICS
from tlatlas.tasks import build_suite

TOL = 1e-4  # fp32, per entry
URL = re.compile(r"https?://[^\s\"'<>)`]+")


@pytest.fixture(scope="module")
def examples():
    return list(build_suite("synthetic", seed=3, per_family=2, families=["ioi", "code"]))


# --------------------------------------------------------------------------- figures


def synthetic_sums(n_layers=5, families=("json", "code", "ioi"), hub=2, max_offset=6):
    """Sums with known structure: layer ``hub`` largest for every family but the last."""
    g = torch.Generator().manual_seed(0)
    sums = AtlasSums.empty(families, range(n_layers), positions=True, max_offset=max_offset)
    t = sums.tensors
    t["count"][:] = torch.tensor([2.0, 3.0, 4.0])
    base = torch.rand(len(METRICS), 3, n_layers, len(families), generator=g, dtype=torch.float64)
    base[:, :, hub, :-1] += 5.0
    base[:, :, 0, -1] += 9.0  # the last family's own argmax is layer 0
    t["layer.sum"] += base * t["count"]
    t["offset.count"][:4] = 2.0  # offsets 4, 5: no prompt reaches that far back
    t["offset.sum"][:, :, :, :4] += torch.rand(len(METRICS), 2, n_layers, 4, len(families),
                                              generator=g, dtype=torch.float64)
    return sums


def test_layer_family_heatmap_marks_the_hub():
    from matplotlib.patches import Rectangle

    from tlatlas.viz.figures import layer_family_heatmap

    sums = synthetic_sums()
    hub = hub_summary(sums)
    fig = layer_family_heatmap(sums)
    ax = fig.axes[0]
    img = ax.images[0]
    np.testing.assert_allclose(np.asarray(img.get_array()), mean_effect(sums).numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == list(sums.families)
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(x) for x in sums.layers]
    lo, hi = img.get_clim()
    assert lo == 0.0 and hi == pytest.approx(float(mean_effect(sums).max()))
    rect = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rect) == 1 and rect[0].get_y() == pytest.approx(hub.hub_layer - 0.5)
    assert hub.hub_layer == 2
    dots = ax.collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(dots)[:, 1], [2, 2, 0])  # each family's argmax
    assert f"hub L{hub.hub_layer}" in ax.get_title()
    assert len(fig.axes) == 2  # the colourbar


def test_offset_heatmap_drops_unreached_offsets_and_ends_at_the_scored_token():
    from tlatlas.viz.figures import offset_heatmap

    sums = synthetic_sums()
    fig = offset_heatmap(sums, component="block")
    ax = fig.axes[0]
    data = np.asarray(ax.images[0].get_array())
    assert data.shape == (5, 4)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["-3", "-2", "-1", "scored"]
    np.testing.assert_allclose(data[:, ::-1], offset_effect(sums, "kl", "block")[:, :4].numpy())


def test_prompt_heatmap_has_one_column_per_token(tiny_models, examples):
    from tlatlas.viz.figures import prompt_heatmap

    pm = position_map(tiny_models["llama"], examples[:1], layers=[0, 2])
    fig = prompt_heatmap(pm, 0)
    ax = fig.axes[0]
    assert len(ax.get_xticklabels()) == len(pm.tokens[0])
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), pm.prompt_effect(0).numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "2"]


def test_layer_profile_draws_the_band_and_p_hub():
    from tlatlas.atlas.hubs import hub_evidence
    from tlatlas.viz.figures import layer_profile

    sums = synthetic_sums(hub=3)
    n = int(sums.tensors["count"].sum())
    m, c, n_l, _ = sums.tensors["layer.sum"].shape
    fam = torch.arange(len(sums.families)).repeat_interleave(
        sums.tensors["count"].long())
    rows = (sums.tensors["layer.sum"] / sums.tensors["count"])[..., fam].float()
    sums.tensors.update({"example.layer": rows + 0.01 * torch.randn(m, c, n_l, n),
                         "example.family": fam, "example.id": torch.arange(n)})
    ev = hub_evidence(sums, replicates=50)
    fig = layer_profile(ev)
    top, bottom = fig.axes
    assert len(top.collections) == 1  # the CI band
    bars = [p.get_height() for p in bottom.patches]
    assert bars == pytest.approx(list(ev.hub_probability)) and bars[3] == max(bars)
    assert "hub L3" in top.get_title()


def test_hub_per_seed_plots_every_seed():
    from tlatlas.viz.figures import hub_per_seed

    spread = seed_spread([1, 2, 3], [hub_summary(synthetic_sums(hub=h)) for h in (2, 2, 3)])
    fig = hub_per_seed(spread, n_layers=5)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [2, 2, 3])
    assert ax.lines[1].get_ydata()[0] == spread.mode == 2
    assert ax.get_ylim() == (-0.5, 4.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]


def study_rows():
    rows = []
    for strategy, params, loss in (("atlas", 1000, 1.0), ("random", 1000, 1.4),
                                   ("all-linear", 50000, 0.9), ("first-k", 1000, 1.2)):
        for seed, noise in ((0, -0.1), (1, 0.1)):
            rows.append({"strategy": strategy, "family": "json", "seed": seed,
                         "trainable_params": params, "heldout_loss_before": 2.0,
                         "heldout_loss_after": loss + noise, "exact_match_after": 0.5})
    return rows


def test_lora_pareto_one_marker_per_strategy_and_the_front():
    from tlatlas.viz.figures import _pareto_front, lora_pareto

    fig = lora_pareto(study_rows())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert [lb.split(" (")[0] for lb in labels if "(n=" in lb] == ["atlas", "random", "all-linear",
                                                                     "first-k"]
    means = [c.lines[0].get_xydata()[0] for c in ax.containers]  # the errorbar markers
    np.testing.assert_allclose(means, [[1000, 1.0], [1000, 1.4], [50000, 0.9], [1000, 1.2]])
    front = [line for line in ax.lines if line.get_label() == "Pareto front"][0]
    np.testing.assert_allclose(front.get_xydata(), [[1000, 1.0], [50000, 0.9]])
    assert _pareto_front([(1.0, 3.0), (2.0, 1.0), (3.0, 2.0)]) == [0, 1]
    lo, hi = ax.get_ylim()
    assert lo < 0.8 and 2.0 < hi  # runs and the "no adapter" line are in view


def skip_rows():
    return [{"skip_set": s, "seed": seed, "k": 2, "layers_skipped": [1, 2],
             "before": {"top5_overlap": b, "kl": 2 * (1 - b)},
             "after": {"top5_overlap": b + 0.2, "kl": 1 - b}, "trainable_params": 100}
            for s, seed, b in (("atlas", 0, 0.6), ("atlas", 1, 0.4), ("random", 0, 0.2))]


def test_layer_skip_figure_bars_are_the_means():
    from tlatlas.viz.figures import layer_skip_figure

    fig = layer_skip_figure(skip_rows())
    left, right = fig.axes
    heights = [p.get_height() for p in left.patches]
    np.testing.assert_allclose(heights, [0.5, 0.2, 0.7, 0.4])  # before (atlas, random), after
    np.testing.assert_allclose([p.get_height() for p in right.patches], [1.0, 1.6, 0.5, 0.8])
    assert left.get_ylim() == (0, 1.05)
    assert [t.get_text() for t in left.get_xticklabels()] == ["atlas k=2", "random k=2"]


# --------------------------------------------------------------------------- report


def external_urls(page: str) -> list[str]:
    """Every reference the page would load, and every URL outside the inlined bundle.

    The circuitsvis bundle holds URL *strings* (XML namespaces, React's error-decoder
    link) that it never loads; it must not import or fetch anything from the network.
    """
    from tlatlas.viz.maps import circuitsvis_script

    bundle = circuitsvis_script()
    assert page.count(bundle) <= 1
    rest = page.replace(bundle, "")
    loads = re.findall(r"""\b(?:src|href|action|poster)\s*=\s*["']?([^"'\s>]+)""", rest)
    loads += re.findall(r"""url\(\s*["']?([^"')]+)""", rest)
    loads += re.findall(r"""@import\s+["']([^"']+)""", rest)
    loads += re.findall(r"""\bimport\s*(?:[\w{}\s,*]+from\s*)?["']([^"']+)["']""", rest)
    loads += re.findall(r"""(?:import\s*\(|fetch\s*\(|\bfrom\s*)\s*["'](https?:[^"']+)""",
                        bundle)
    loads += re.findall(r"sourceMappingURL=(\S+)", page)
    bad = [u for u in loads if not u.startswith(("data:", "#"))]
    return bad + URL.findall(rest)


@pytest.fixture(scope="module")
def run_dir(tiny_dirs, tmp_path_factory):
    """An atlas directory (two seeds, positions) of the tiny Llama, plus study results."""
    from tlatlas.models import load_model

    root = tmp_path_factory.mktemp("run")
    model = load_model(tiny_dirs["llama"], device="cpu")
    config = AtlasConfig(positions=True, batch_size=2, max_offset=40)
    for seed in (1, 2):
        atlas = build_atlas(model, SuiteSpec(seed=seed, per_family=2,
                                             families=("json", "ioi", "code")), config,
                            command=f"tlatlas atlas --seeds {seed} (test)")
        save_atlas(atlas, root / "atlas" / f"seed{seed}")
    study = {"kind": "tlatlas.study.strategies", "rows": study_rows(), "command": "tlatlas study x",
             "fingerprint": model.fingerprint.to_dict(), "skipped": {"adalora": "not yet"}}
    (root / "study.json").write_text(json.dumps(study))
    skip = {"kind": "tlatlas.study.skip", "rows": skip_rows(), "command": "tlatlas study skip x"}
    (root / "skip.json").write_text(json.dumps(skip))
    from tlatlas.cli import main

    assert main(["steer", "--model", str(tiny_dirs["llama"]), "--per-family", "4", "--families",
                 "json", "ioi", "--scales", "-1,1", "--random-draws", "2", "--partition-draws",
                 "2", "--layers", "0", "2", "--device", "cpu", "--out", str(root / "steer")]) == 0
    return root


def test_report_is_self_contained(run_dir, tiny_models, tmp_path):
    from tlatlas.viz.report import build_report, write_report

    model = tiny_models["llama"]
    page = build_report(run_dir, command="tlatlas report (test)",
                        position_maps_for=lambda a: atlas_position_maps(model, a, n_prompts=2,
                                                                        layers=[0, 1]))
    assert external_urls(page) == []
    from tlatlas.viz.maps import circuitsvis_script

    assert page.count(circuitsvis_script()) == 1
    assert page.replace(circuitsvis_script(), "").count("<script>") == 2  # the bundle, one mount
    assert "CircuitsVis.TextNeuronActivations" in page
    from tlatlas.atlas.store import load_atlas

    meta = load_atlas(run_dir / "atlas" / "seed1").meta
    from tlatlas.steering.result import load_steering

    steer = load_steering(run_dir / "steer" / "steering").meta
    for text in (meta.fingerprint.short, meta.suite_hash, meta.command, "tlatlas study x",
                 "tlatlas report (test)", "not yet", "Pareto", "layer skip", steer.command,
                 steer.suite_hash, "KL against scale"):
        assert html.escape(text) in page
    # atlas (3: layer profile with CI and P(hub), layer x family, hub per seed), offsets (2),
    # prompts (2), steering, study, skip
    assert page.count("data:image/png;base64,") == 3 + 2 + 2 + 1 + 1 + 1
    assert "P(hub)" in page and "margin [95% CI]" in page
    path = write_report(tmp_path / "r.html", page)
    assert path.read_text(encoding="utf-8") == page


def test_steering_table_by_specificity_and_format_1_fallback(run_dir):
    from dataclasses import replace

    from tlatlas.steering.result import load_steering
    from tlatlas.steering.steerability import most_steerable
    from tlatlas.viz.report import build_report, steering_layer_table

    result = load_steering(run_dir / "steer" / "steering")
    rows, cols, caption = steering_layer_table(result)
    best = most_steerable(result)
    assert [r["family"] for r in rows] == list(result.families)
    assert all(r["most steerable layer"] == best[r["family"]].layer and
               r["specificity"] == best[r["family"]].specificity for r in rows)
    assert "over partition [95% CI]" in cols and "held-out prompts" in caption
    page = build_report(run_dir)
    assert "most steerable layer" in page and "specificity" in page
    # a format-1 result (family sums only) falls back to the most disruptive layer
    old = replace(result, format_version=1, tensors={
        k: v for k, v in result.tensors.items() if not k.startswith(("example.", "partition."))})
    rows, cols, caption = steering_layer_table(old)
    disruptive = old.most_disruptive()
    assert cols[1] == "most disruptive layer" and "format 1" in caption
    assert all(r["most disruptive layer"] == disruptive[r["family"]][0] for r in rows)


def test_report_without_model_has_no_circuitsvis(run_dir):
    from tlatlas.viz.report import build_report

    page = build_report(run_dir)
    assert "CircuitsVis" not in page and external_urls(page) == []


def test_external_url_check_catches_links():
    page = '<html><img src="https://example.org/x.png"><a href="#ok">x</a></html>'
    assert external_urls(page) == ["https://example.org/x.png", "https://example.org/x.png"]
    assert external_urls('<p>see http://a.b/c</p>') == ["http://a.b/c"]


def test_report_errors_on_an_empty_dir(tmp_path):
    from tlatlas.viz.report import ReportError, build_report

    with pytest.raises(ReportError, match="nothing to report"):
        build_report(tmp_path)


def test_cli_report(run_dir, tmp_path, capsys):
    from tlatlas.cli import main

    out = tmp_path / "cli.html"
    assert main(["report", str(run_dir), "--out", str(out), "--prompts", "1",
                 "--map-layers", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "CircuitsVis.TextNeuronActivations" in page and external_urls(page) == []
    assert f"tlatlas report {run_dir}" in page  # the command line is recorded
    assert str(out.resolve()) in capsys.readouterr().out


def test_default_map_layers():
    from tlatlas.atlas.posmap import default_map_layers

    assert default_map_layers(synthetic_sums(n_layers=5)) == (0, 1, 2, 3, 4)
    sums = AtlasSums.empty(("json",), range(30), positions=False, max_offset=4)
    sums.tensors["count"][:] = 1
    sums.tensors["layer.sum"][0, 2, 7, 0] = 5.0  # hub L7 (block KL)
    assert default_map_layers(sums) == (0, 3, 6, 7, 10, 13, 16, 19, 23, 26, 29)


def test_report_provenance_says_which_values_are_exact(tiny_models):
    from tlatlas.viz.report import atlas_provenance

    model, spec = tiny_models["llama"], SuiteSpec(per_family=2, families=("ioi", "code"))
    exact = build_atlas(model, spec, AtlasConfig(batch_size=2))
    assert atlas_provenance(exact)["values"] == "values: all exact (exact)"
    verified = build_atlas(model, spec, AtlasConfig(batch_size=2), method="verify", top_k=1,
                           patience=1)
    line = atlas_provenance(verified)["values"]
    n_exact = int(re.match(r"values: (\d)/9 layer entries exact", line).group(1))
    assert 1 <= n_exact < 9 and "hub over the exact block layers only" in line
