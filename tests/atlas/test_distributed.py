"""The atlas under torchrun: 2 CPU ranks (gloo) equal one process and the merged shards.

The subprocess tests start ``python -m torch.distributed.run --standalone
--nproc-per-node 2 -m tlatlas atlas`` on a tiny checkpoint (each costs ~20 s on 2 cores,
almost all of it two Python processes importing torch and transformers). The in-process
tests use a world of one (gloo over a FileStore) for the reductions and the failure
agreement.
"""

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tlatlas.atlas.ablation import RoleStats
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.distributed import (
    FAULT_ENV,
    DistContext,
    RankFailedError,
    all_reduce_role_stats,
    all_reduce_sums,
    collective_step,
    env_context,
    fault_hook,
    max_over_ranks,
)
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import AtlasMeta, load_atlas, merge_atlases
from tlatlas.atlas.sums import AtlasSums

FAMILIES = ("ioi", "code", "sequence")
SPEC = SuiteSpec(per_family=4, families=FAMILIES)
CLI_ARGS = ["--per-family", "4", "--families", *FAMILIES, "--batch-size", "2", "--positions"]


def _torchrun(model_dir: Path, out: Path, *extra: str, fault: str | None = None
              ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    # --standalone: a free local port, so concurrent runs on one machine never collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "tlatlas", "atlas", "--model", str(model_dir), *CLI_ARGS, *extra,
           "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def _comparable(meta: AtlasMeta) -> dict:
    d = meta.to_dict()
    for key in ("world_size", "command", "timings"):
        d.pop(key)
    return d


def _max_diff(a: AtlasSums, b: AtlasSums) -> float:
    assert a.tensors.keys() == b.tensors.keys()
    return max(float((a.tensors[k] - b.tensors[k]).abs().max()) for k in a.tensors)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_torchrun_atlas_equals_single_process_and_merged_shards(ablation, tiny_dirs, tiny_models,
                                                                tmp_path):
    out = tmp_path / "out"
    run = _torchrun(tiny_dirs["llama"], out, "--ablation", ablation)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _files(out) == ["seed42.atlas.json", "seed42.atlas.safetensors"]  # rank 0 only
    assert run.stdout.count("one seed: no spread") == 1  # rank 0 alone prints the hub table
    ranked = load_atlas(out / "seed42")
    assert ranked.meta.world_size == 2 and ranked.meta.shard is None
    assert ranked.meta.n_examples == 4 * len(FAMILIES)

    model = tiny_models["llama"]
    config = AtlasConfig(ablation=ablation, batch_size=2, positions=True)
    single = build_atlas(model, SPEC, config)
    merged = merge_atlases([build_atlas(model, replace(SPEC, shard=(i, 2)), config)
                            for i in range(2)])
    assert single.meta.world_size == 1
    for other in (single, merged):
        assert _max_diff(ranked.sums, other.sums) <= 1e-5
        assert _comparable(ranked.meta) == _comparable(other.meta)
    assert float(ranked.sums.tensors["layer.sum"].abs().sum()) > 0  # the maps are not empty


@pytest.mark.parametrize(("fault", "expected"), [
    ("kill", r"rank\s*:\s*1 \(local_rank: 1\)[\s\S]*SIGKILL"),  # torchrun names the dead rank
    ("raise", r"tlatlas: error: atlas sweep failed on rank 1 of 2 \(rank 1: RuntimeError"),
])
def test_failed_rank_fails_the_run_and_writes_nothing(fault, expected, tiny_dirs, tmp_path):
    out = tmp_path / "out"
    run = _torchrun(tiny_dirs["llama"], out, fault=f"{fault}:1:1")
    assert run.returncode != 0
    assert re.search(expected, run.stderr), run.stderr[-3000:]
    assert _files(out) == []  # no atlas, no temporary file
    if fault == "kill":  # the same command without the fault succeeds
        again = _torchrun(tiny_dirs["llama"], out)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _files(out) == ["seed42.atlas.json", "seed42.atlas.safetensors"]


# --------------------------------------------------------------------------- in process


@pytest.fixture
def world_of_one(tmp_path):
    """A one-rank gloo process group in this process, torn down after the test."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1)
    try:
        yield DistContext(rank=0, world_size=1, local_rank=0, backend="gloo")
    finally:
        dist.destroy_process_group()


def test_reductions_keep_values_layout_and_dtypes(world_of_one):
    sums = AtlasSums.empty(("a", "b"), (0, 2), positions=True, max_offset=4)
    for i, t in enumerate(sums.tensors.values()):
        t.copy_(torch.randn(t.shape, dtype=torch.float64) + i)
    reduced = all_reduce_sums(sums, world_of_one)
    assert reduced.tensors.keys() == sums.tensors.keys()
    for k, v in sums.tensors.items():
        assert reduced.tensors[k].dtype == torch.float64 and torch.equal(reduced.tensors[k], v)
        assert reduced.tensors[k].data_ptr() != v.data_ptr()  # a new tensor, input untouched
    stats = {"blocks.1.hook_mlp_out": RoleStats.zeros(8), "blocks.0.hook_attn_out": RoleStats.zeros(8)}
    stats["blocks.1.hook_mlp_out"].add(torch.randn(2, 5, 8), torch.tensor([[0, 1, 1, 2, -1]] * 2))
    out = all_reduce_role_stats(stats, world_of_one)
    for n, s in stats.items():
        assert torch.equal(out[n].sums, s.sums) and torch.equal(out[n].counts, s.counts)
        assert out[n].counts.dtype == torch.int64
    assert max_over_ranks({"sweep": 1.5, "reference": 0.25}, world_of_one) == {
        "sweep": 1.5, "reference": 0.25}


def test_collective_step_turns_an_error_into_one_naming_the_rank(world_of_one):
    with collective_step(world_of_one, "atlas sweep"):
        pass
    with pytest.raises(RankFailedError, match=r"atlas sweep failed on rank 0 of 1 "
                                              r"\(rank 0: ValueError: boom\)"):
        with collective_step(world_of_one, "atlas sweep"):
            raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):  # no process group: errors pass through
        with collective_step(None, "atlas sweep"):
            raise ValueError("boom")


def test_build_atlas_in_a_world_of_one_records_it_and_refuses_a_shard(world_of_one, tiny_models):
    model = tiny_models["qwen2"]
    config = AtlasConfig(ablation="mean", batch_size=2)
    spec = SuiteSpec(per_family=2, families=("ioi",))
    ranked = build_atlas(model, spec, config, dist=world_of_one)
    plain = build_atlas(model, spec, config)
    assert ranked.meta.world_size == 1 and "reduce" in ranked.meta.timings
    assert _max_diff(ranked.sums, plain.sums) == 0.0
    with pytest.raises(ValueError, match="shards by rank"):
        build_atlas(model, replace(spec, shard=(0, 2)), config, dist=world_of_one)


def test_env_context_and_fault_hook(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", FAULT_ENV):
        monkeypatch.delenv(var, raising=False)
    assert env_context() is None  # a plain run: no process group
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = env_context()
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.shard) == (3, 4, 1, (3, 4))
    assert not ctx.is_primary and ctx.backend == ("nccl" if torch.cuda.is_available() else "gloo")
    with pytest.raises(ValueError, match="outside world"):
        DistContext(rank=4, world_size=4, local_rank=0, backend="gloo")
    monkeypatch.setenv(FAULT_ENV, "raise:3:2")
    hook = fault_hook(ctx)
    hook(2)  # first batch: nothing
    with pytest.raises(RuntimeError, match="after 2 batches"):
        hook(2)
    assert fault_hook(replace(ctx, rank=0)) is None  # only the named rank


def test_old_atlas_meta_without_world_size_loads_as_one(tiny_models):
    meta = build_atlas(tiny_models["llama"], SuiteSpec(per_family=2, families=("ioi",)),
                       AtlasConfig(batch_size=2)).meta
    d = meta.to_dict()
    del d["world_size"]
    assert AtlasMeta.from_dict(d).world_size == 1
