"""Atlas files: validation, merging shards, byte-identical reruns, the CLI round trip."""

import json
from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import atlas_paths, load_atlas, merge_atlases, save_atlas
from tlatlas.errors import AtlasFileError, FingerprintMismatchError


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
        # shards batch other examples together, and fp32 kernels round by batch shape (on an
        # AVX-512 host role.sum differed by 1.3e-5 at a largest entry of 7): equal up to 1e-5
        # of each tensor's largest entry, far below what a lost or doubled example moves
        scale = float(value.double().abs().nan_to_num(0).max().clamp_min(1))
        assert torch.allclose(merged.sums.tensors[key], value, atol=1e-5 * scale, rtol=1e-6), key
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
