"""The atlas sweep: the exact fast path equals the naive loop; ablation kinds; layers."""

from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.ablation import RoleStats, resample_donors
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import hub_summary
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.sweep import compute_atlas_sums
from tlatlas.errors import LayerOutOfRangeError
from tlatlas.tasks import build_suite

TOL = 1e-4  # fp32, per example


def per_example(sums):
    """Every tensor divided by its count, so the tolerance is per example."""
    t = sums.tensors
    out = {"layer": t["layer.sum"] / t["count"].clamp(min=1)}
    if "role.sum" in t:
        out["role"] = t["role.sum"] / t["role.count"].clamp(min=1)
        out["offset"] = t["offset.sum"] / t["offset.count"].clamp(min=1)
    return out


def max_diff(a, b):
    pa, pb = per_example(a), per_example(b)
    assert pa.keys() == pb.keys()
    return max(float((pa[k] - pb[k]).abs().max()) for k in pa)


def max_excess(a, b, rtol: float):
    """The largest ``|a - b| - rtol |b|`` over every per-example value: at most ``TOL``
    means the two agree to ``TOL`` plus ``rtol`` of the value."""
    pa, pb = per_example(a), per_example(b)
    assert pa.keys() == pb.keys()
    return max(float(((pa[k] - pb[k]).abs() - rtol * pb[k].abs()).nan_to_num(0.0).max())
               for k in pa)


RTOL_REAL = 2e-5
"""A real model's effects reach tens of nats; fp32 over 30 layers then differs between the
two paths by a few parts in 10^5 of the value, more with one thread than two (the
reduction order changes)."""


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_fast_exact_equals_naive(tiny_models, small_examples, arch, ablation):
    model = tiny_models[arch]
    means = None
    if ablation == "mean":
        from tlatlas.atlas.config import atlas_hook_names
        from tlatlas.atlas.sweep import reference_stats

        ref = list(build_suite("synthetic", seed=7, per_family=2, families=["ioi", "factual", "code"]))
        means = reference_stats(model, ref, atlas_hook_names(range(model.n_layers), True)[0])
    config = AtlasConfig(ablation=ablation, positions=True, batch_size=2)
    naive = compute_atlas_sums(model, small_examples, replace(config, method="naive"), means=means)
    fast = compute_atlas_sums(model, small_examples, config, means=means)
    assert max_diff(naive, fast) <= TOL
    # and the maps are not trivially zero
    assert float(per_example(fast)["layer"][0].max()) > 1e-2
    assert float(per_example(fast)["role"][0].max()) > 1e-2


def test_mean_ablation_uses_a_reference_set_not_the_scored_batch(tiny_models):
    model = tiny_models["llama"]
    atlas = build_atlas(model, SuiteSpec(per_family=2, families=("ioi", "code")),
                        AtlasConfig(ablation="mean", batch_size=2))
    assert atlas.meta.reference_hash is not None
    assert atlas.meta.reference_hash != atlas.meta.suite_hash
    scored = {e.prompt for e in build_suite("synthetic", seed=42, per_family=2, families=["ioi", "code"])}
    ref = build_suite("synthetic", seed=42 + 1_000_003, per_family=16, families=["ioi", "code"])
    assert not scored & {e.prompt for e in ref}
    # Means over the scored batch would give a different (and wrong) atlas.
    from tlatlas.atlas.config import atlas_hook_names
    from tlatlas.atlas.sweep import reference_stats

    names = atlas_hook_names(range(model.n_layers), False)[0]
    own = reference_stats(model, list(build_suite("synthetic", seed=42, per_family=2,
                                                  families=["ioi", "code"])), names)
    wrong = compute_atlas_sums(model, list(build_suite("synthetic", seed=42, per_family=2,
                                                       families=["ioi", "code"])),
                               AtlasConfig(ablation="mean", batch_size=2), means=own)
    assert float((wrong.tensors["layer.sum"] - atlas.sums.tensors["layer.sum"]).abs().max()) > 1e-3


def test_mean_ablation_without_reference_is_an_error(tiny_models, small_examples):
    with pytest.raises(ValueError, match="reference"):
        compute_atlas_sums(tiny_models["llama"], small_examples, AtlasConfig(ablation="mean"))


def test_resample_never_uses_the_example_itself():
    families = tuple("abcab" * 4 + "cc")
    for seed in range(50):
        donors = resample_donors(families, torch.Generator().manual_seed(seed))
        for row, donor in enumerate(donors.tolist()):
            assert donor != row and families[donor] == families[row]
    with pytest.raises(ValueError, match=">= 2 examples"):
        resample_donors(("a", "b", "b"), torch.Generator().manual_seed(0))


def test_role_stats_merge_exactly():
    a, b = RoleStats.zeros(4), RoleStats.zeros(4)
    roles = torch.tensor([[0, 1, 1, 2]])
    a.add(torch.ones(1, 4, 4), roles)
    b.add(3 * torch.ones(1, 4, 4), roles)
    m = a.merged(b).means()
    assert torch.allclose(m, torch.full((3, 4), 2.0, dtype=torch.float64))


def test_layer_out_of_range(tiny_models, small_examples):
    with pytest.raises(LayerOutOfRangeError, match="0..2"):
        compute_atlas_sums(tiny_models["llama"], small_examples, AtlasConfig(layers=(0, 3)))


@pytest.mark.slow
def test_smollm2_exact_equals_naive_and_atlas_is_not_flat(smollm2):
    examples = list(build_suite("synthetic", seed=42, per_family=2, families=["factual", "ioi"]))
    config = AtlasConfig(batch_size=2)
    fast = compute_atlas_sums(smollm2, examples, config)
    naive = compute_atlas_sums(smollm2, examples, replace(config, method="naive"))
    assert max_excess(naive, fast, RTOL_REAL) <= TOL
    hub = hub_summary(fast)
    assert hub.hub_effect > 10 * hub.least_effect and hub.hub_effect > 0.5
    # position-resolved, three layers, one example per family
    config = AtlasConfig(batch_size=2, positions=True, layers=(0, 14, 29))
    few = examples[:2]
    fast = compute_atlas_sums(smollm2, few, config)
    naive = compute_atlas_sums(smollm2, few, replace(config, method="naive"))
    assert max_excess(naive, fast, RTOL_REAL) <= TOL


def test_position_chunks_agree(tiny_models, small_examples):
    model = tiny_models["qwen2"]
    base = AtlasConfig(batch_size=2, positions=True, layers=(0, 2))
    ref = compute_atlas_sums(model, small_examples, replace(base, position_chunk=1))
    for chunk in (3, 64):
        other = compute_atlas_sums(model, small_examples, replace(base, position_chunk=chunk))
        assert max_diff(ref, other) <= TOL


@pytest.mark.parametrize("method", ["exact", "naive"])
def test_only_the_chosen_components_are_computed(tiny_models, small_examples, tmp_path, method):
    from tlatlas.atlas.store import load_atlas, save_atlas
    from tlatlas.errors import InvalidInputError

    model = tiny_models["llama"]
    full = compute_atlas_sums(model, small_examples, AtlasConfig(batch_size=2, method=method))
    config = AtlasConfig(batch_size=2, method=method, components=("block", "attn"))
    assert config.components == ("attn", "block")  # canonical order
    part = compute_atlas_sums(model, small_examples, config)
    layer, ex = part.tensors["layer.sum"], part.tensors["example.layer"]
    assert layer[:, 1].isnan().all() and ex[:, 1].isnan().all()  # mlp: not computed
    for c in (0, 2):  # attn and block: the full atlas's values
        assert torch.allclose(layer[:, c], full.tensors["layer.sum"][:, c], atol=1e-4)
    assert hub_summary(part).hub_layer == hub_summary(full).hub_layer
    with pytest.raises(InvalidInputError, match="component mlp was not computed"):
        hub_summary(part, component="mlp")
    atlas = build_atlas(model, SuiteSpec(per_family=2, families=("ioi",)),
                        AtlasConfig(batch_size=2, components=("block",)))
    save_atlas(atlas, tmp_path / "s")
    assert load_atlas(tmp_path / "s").meta.components == ("block",)
    with pytest.raises(InvalidInputError, match="components must be"):
        AtlasConfig(components=("resid",))
    with pytest.raises(InvalidInputError, match="estimates every component"):
        build_atlas(model, SuiteSpec(per_family=2, families=("ioi",)),
                    AtlasConfig(components=("block",)), method="attribution")
