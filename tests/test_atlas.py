import json
from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.ablation import RoleStats, resample_donors
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.engine import family_batches
from tlatlas.atlas.hubs import hub_summary, seed_spread
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import atlas_paths, load_atlas, merge_atlases, save_atlas
from tlatlas.atlas.sweep import compute_atlas_sums
from tlatlas.errors import AtlasFileError, FingerprintMismatchError, LayerOutOfRangeError
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


@pytest.fixture(scope="module")
def small_examples():
    return list(build_suite("synthetic", seed=42, per_family=2, families=["ioi", "factual", "code"]))


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


def test_family_batches_keep_families_apart_and_never_leave_one_alone(small_examples):
    batches = family_batches(small_examples * 3, batch_size=4)
    assert all(len({e.family for e in b}) == 1 and len(b) >= 2 for b in batches)
    assert sum(len(b) for b in batches) == len(small_examples) * 3


def test_role_stats_merge_exactly():
    a, b = RoleStats.zeros(4), RoleStats.zeros(4)
    roles = torch.tensor([[0, 1, 1, 2]])
    a.add(torch.ones(1, 4, 4), roles)
    b.add(3 * torch.ones(1, 4, 4), roles)
    m = a.merged(b).means()
    assert torch.allclose(m, torch.full((3, 4), 2.0, dtype=torch.float64))


def test_merge_of_shards_equals_unsharded(tiny_models, tmp_path):
    model = tiny_models["qwen2"]
    config = AtlasConfig(batch_size=2, positions=True)
    base = SuiteSpec(per_family=4, families=("ioi", "sequence"))
    whole = build_atlas(model, base, config)
    shards = [build_atlas(model, replace(base, shard=(i, 2)), config) for i in range(2)]
    for i, s in enumerate(shards):
        save_atlas(s, tmp_path / f"s{i}")
    merged = merge_atlases([load_atlas(tmp_path / f"s{i}") for i in (1, 0)])
    assert merged.meta.shard is None and merged.meta.n_examples == whole.meta.n_examples
    for key, value in whole.sums.tensors.items():
        assert torch.allclose(merged.sums.tensors[key], value, atol=1e-5, rtol=1e-6), key
    with pytest.raises(AtlasFileError, match="exactly once"):
        merge_atlases([shards[0], shards[0]])
    with pytest.raises(AtlasFileError, match="whole-suite"):
        merge_atlases([whole, shards[0]])


def test_same_seed_gives_identical_files_and_seeds_resample(tiny_models, tmp_path):
    model = tiny_models["llama"]
    config = AtlasConfig(batch_size=2)
    for name in ("a", "b"):
        save_atlas(build_atlas(model, SuiteSpec(per_family=2, seed=5), config), tmp_path / name)
    ta, ma = atlas_paths(tmp_path / "a")
    tb, mb = atlas_paths(tmp_path / "b")
    assert ta.read_bytes() == tb.read_bytes()
    meta_a, meta_b = json.loads(ma.read_text()), json.loads(mb.read_text())
    for m in (meta_a, meta_b):
        m["meta"]["timings"] = {}
    assert meta_a == meta_b
    other = build_atlas(model, SuiteSpec(per_family=2, seed=6), config)
    assert other.meta.suite_hash != meta_a["meta"]["suite_hash"]


def test_atlas_load_validates(tiny_models, tmp_path):
    llama, qwen = tiny_models["llama"], tiny_models["qwen2"]
    atlas = build_atlas(llama, SuiteSpec(per_family=2, families=("ioi",)), AtlasConfig(batch_size=2))
    save_atlas(atlas, tmp_path / "x")
    loaded = load_atlas(tmp_path / "x", fingerprint=llama.fingerprint)
    assert torch.equal(loaded.sums.tensors["layer.sum"], atlas.sums.tensors["layer.sum"])
    with pytest.raises(FingerprintMismatchError):
        load_atlas(tmp_path / "x", fingerprint=qwen.fingerprint)
    load_atlas(tmp_path / "x", fingerprint=qwen.fingerprint, force=True)

    tensors, meta = atlas_paths(tmp_path / "x")
    header = json.loads(meta.read_text())
    header["tensors"]["layer.sum"][2] += 1
    meta.write_text(json.dumps(header))
    with pytest.raises(AtlasFileError, match="shape"):
        load_atlas(tmp_path / "x")

    save_atlas(atlas, tmp_path / "y")
    tensors, meta = atlas_paths(tmp_path / "y")
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(AtlasFileError, match="truncated"):
        load_atlas(tmp_path / "y")
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(AtlasFileError, match="JSON"):
        load_atlas(tmp_path / "y")
    with pytest.raises(AtlasFileError, match="missing"):
        load_atlas(tmp_path / "nothing")


def test_layer_out_of_range(tiny_models, small_examples):
    with pytest.raises(LayerOutOfRangeError, match="0..2"):
        compute_atlas_sums(tiny_models["llama"], small_examples, AtlasConfig(layers=(0, 3)))


def test_hubs_and_seed_spread(tiny_models):
    model = tiny_models["llama"]
    summaries = [hub_summary(build_atlas(model, SuiteSpec(per_family=2, seed=s),
                                         AtlasConfig(batch_size=2)).sums) for s in (1, 2)]
    for h in summaries:
        assert h.layer_effect[h.hub_layer] == max(h.layer_effect)
        assert 0 <= h.family_agreement <= 1 and len(h.family_argmax) == 12
    spread = seed_spread([1, 2], summaries)
    assert spread.hubs == tuple(h.hub_layer for h in summaries)
    narrow = hub_summary(build_atlas(model, SuiteSpec(per_family=2, seed=1),
                                     AtlasConfig(batch_size=2)).sums,
                         families=["json", "factual", "code", "arithmetic"])
    assert len(narrow.family_argmax) == 4


def test_cli_atlas_shard_merge_show(tiny_dirs, tmp_path, capsys):
    from tlatlas.cli import main

    args = ["atlas", "--model", str(tiny_dirs["llama"]), "--per-family", "2",
            "--families", "ioi", "code", "--batch-size", "2"]
    for i in range(2):
        assert main(args + ["--shard", f"{i}/2", "--out", str(tmp_path / "shards")]) == 0
    assert main(["merge", str(tmp_path / "shards" / "seed42.shard0of2"),
                 str(tmp_path / "shards" / "seed42.shard1of2"),
                 "--out", str(tmp_path / "merged" / "seed42")]) == 0
    assert main(args + ["--seeds", "42", "43", "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    assert main(["show", str(tmp_path / "whole")]) == 0
    shown = capsys.readouterr().out
    assert "hub per seed" in shown and "mode L" in shown
    assert main(["atlas", "--model", "no-such-model", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_smollm2_exact_equals_naive_and_atlas_is_not_flat(smollm2):
    examples = list(build_suite("synthetic", seed=42, per_family=2, families=["factual", "ioi"]))
    config = AtlasConfig(batch_size=2)
    fast = compute_atlas_sums(smollm2, examples, config)
    naive = compute_atlas_sums(smollm2, examples, replace(config, method="naive"))
    assert max_diff(naive, fast) <= TOL
    hub = hub_summary(fast)
    assert hub.hub_effect > 10 * hub.least_effect and hub.hub_effect > 0.5
    # position-resolved, three layers, one example per family
    config = AtlasConfig(batch_size=2, positions=True, layers=(0, 14, 29))
    few = examples[:2]
    fast = compute_atlas_sums(smollm2, few, config)
    naive = compute_atlas_sums(smollm2, few, replace(config, method="naive"))
    assert max_diff(naive, fast) <= TOL


def test_position_chunks_agree(tiny_models, small_examples):
    model = tiny_models["qwen2"]
    base = AtlasConfig(batch_size=2, positions=True, layers=(0, 2))
    ref = compute_atlas_sums(model, small_examples, replace(base, position_chunk=1))
    for chunk in (3, 64):
        other = compute_atlas_sums(model, small_examples, replace(base, position_chunk=chunk))
        assert max_diff(ref, other) <= TOL
