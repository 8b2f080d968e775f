"""Memory-aware batching: the plan fits the budget (measured), out-of-memory halves and
retries with the same sums, and a budget too small is a clear error."""

import warnings
from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.batching import (
    MAX_AUTO_BATCH,
    MemoryBudgetError,
    ModelShape,
    example_bytes,
    family_widths,
    plan_batch,
)
from tlatlas.atlas.config import AtlasConfig, atlas_hook_names
from tlatlas.atlas.engine import run_family_batches
from tlatlas.atlas.sweep import atlas_batch_plans, compute_atlas_sums, reference_stats
from tlatlas.errors import InvalidInputError
from tlatlas.models.memory import (
    MemoryBackoffWarning,
    PeakTensorMemory,
    default_budget,
    free_memory_bytes,
    is_out_of_memory,
)
from tlatlas.tasks import build_suite


@pytest.fixture(scope="module")
def ioi6():
    return list(build_suite("synthetic", seed=42, per_family=6, families=["ioi"]))


def _sums_close(a, b, tol=1e-4):
    """Every sum divided by its count (the tolerance is per example, as in test_sweep)."""
    assert a.tensors.keys() == b.tensors.keys()
    counts = {"layer": "count", "role": "role.count", "offset": "offset.count"}
    for k in a.tensors:
        x, y = a.tensors[k].double(), b.tensors[k].double()
        if k.endswith(".sum"):
            n = a.tensors[counts[k.split(".")[0]]].clamp(min=1)
            x, y = x / n, y / n
        assert float((x - y).abs().nan_to_num().max()) <= tol, k


def test_config_batch_size_zero_means_auto():
    assert AtlasConfig(batch_size=0).auto_batch and not AtlasConfig().auto_batch
    with pytest.raises(InvalidInputError, match="or 0"):
        AtlasConfig(batch_size=1)
    with pytest.raises(InvalidInputError, match="memory_budget_bytes"):
        AtlasConfig(batch_size=0, memory_budget_bytes=0)


def test_free_memory_on_the_cpu_is_ram():
    free = free_memory_bytes("cpu")
    assert 0 < default_budget("cpu") < free
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_peak_tensor_memory_counts_live_allocations_only():
    keep = torch.ones(10)  # made before the block: not counted
    with PeakTensorMemory("cpu") as pk:
        a = torch.empty(1000)  # 4000 bytes
        b = a.view(10, 100) + keep.sum()  # another 4000, a's view adds nothing
        del a, b
        c = torch.empty(500)  # the first two are gone by now
        del c
    assert 8000 <= pk.peak_bytes < 8000 + 64


@pytest.mark.parametrize("positions", [False, True])
def test_auto_batch_respects_a_small_budget_measured(tiny_models, ioi6, positions):
    model = tiny_models["llama"]
    shape = ModelShape.of(model)
    width = family_widths(ioi6, model.tokenizer)["ioi"]
    per = example_bytes(shape, width, layers_swept=model.n_layers, positions=positions,
                        position_chunk=4)
    budget = int(3.5 * per)  # room for 3 examples by the estimate
    config = AtlasConfig(batch_size=0, memory_budget_bytes=budget, positions=positions,
                         position_chunk=4)
    plan = atlas_batch_plans(model, ioi6, config)["ioi"]
    assert (plan.batch_size, plan.position_chunk, plan.width) == (3, 4, width)
    with PeakTensorMemory("cpu") as pk:
        auto = compute_atlas_sums(model, ioi6, config)
    assert 0 < pk.peak_bytes <= budget
    # the estimate is an upper bound, but not a wild one
    assert pk.peak_bytes >= 0.2 * plan.estimated_bytes
    fixed = compute_atlas_sums(model, ioi6, replace(config, batch_size=3))
    _sums_close(auto, fixed, tol=0.0)


def test_plan_grows_with_the_budget_caps_and_shrinks_the_chunk():
    shape = ModelShape(n_layers=30, d_model=576, d_mlp=1536, n_heads=9, n_key_value_heads=3,
                       d_head=64, d_vocab=49152, dtype_bytes=2)
    kw = dict(layers_swept=30, positions=True, position_chunk=16)
    small = plan_batch(shape, 40, budget=2**30, **kw)
    large = plan_batch(shape, 40, budget=2**36, **kw)
    assert 2 <= small.batch_size < large.batch_size == MAX_AUTO_BATCH
    assert small.estimated_bytes <= 2**30
    per_1 = example_bytes(shape, 40, position_chunk=1, **{k: v for k, v in kw.items()
                                                          if k != "position_chunk"})
    tight = plan_batch(shape, 40, budget=3 * per_1, **kw)
    assert tight.batch_size >= 2 and tight.position_chunk < 16
    with pytest.raises(MemoryBudgetError, match="over the budget"):
        plan_batch(shape, 40, budget=per_1, **kw)


def test_simulated_oom_halves_and_retries_with_the_same_sums(tiny_models, ioi6, monkeypatch):
    import tlatlas.atlas.sweep as sweep

    model = tiny_models["qwen2"]
    config = AtlasConfig(batch_size=6, positions=True, layers=(0, 2))
    reference = compute_atlas_sums(model, ioi6, replace(config, batch_size=8))  # one batch

    real, calls = sweep.layer_effects, []

    def flaky(ctx, *args):
        calls.append(len(ctx.batch))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(ctx, *args)

    monkeypatch.setattr(sweep, "layer_effects", flaky)
    seen = []
    with pytest.warns(MemoryBackoffWarning, match="batch of 6 'ioi' examples.*batches of 3"):
        halved = compute_atlas_sums(model, ioi6, config, on_batch=seen.append)
    assert calls == [6, 3, 3] and seen == [3, 3]  # the failed batch left no trace
    _sums_close(halved, reference)


def test_oom_at_the_smallest_batch_and_other_errors_pass_through():
    exs = list(build_suite("synthetic", seed=42, per_family=4, families=["ioi"]))

    def oom(batch, index):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(torch.cuda.OutOfMemoryError):
            run_family_batches(exs, 4, oom, device="cpu")
    assert len(caught) == 1  # 4 -> 2, then the batch of 2 fails for good

    def broken(batch, index):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        run_family_batches(exs, 4, broken, device="cpu")


def test_family_batches_and_indices_match_the_fixed_engine():
    from tlatlas.atlas.engine import family_batches

    exs = list(build_suite("synthetic", seed=42, per_family=5, families=["ioi", "code"]))
    got = []
    run_family_batches(exs, 2, lambda b, i: got.append((i, [e.uid for e in b])), device="cpu")
    want = [(i, [e.uid for e in b]) for i, b in enumerate(family_batches(exs, 2))]
    assert got == want  # a lone leftover joins the batch before it, as before


def test_reference_stats_with_auto_batch_equal_fixed(tiny_models, ioi6):
    model = tiny_models["llama"]
    names = atlas_hook_names(range(model.n_layers), True)[0]
    auto = reference_stats(model, ioi6, names, batch_size=0, memory_budget_bytes=2**24)
    fixed = reference_stats(model, ioi6, names, batch_size=2)
    for n in names:
        assert torch.allclose(auto[n].sums, fixed[n].sums, atol=1e-4)
        assert torch.equal(auto[n].counts, fixed[n].counts)


def test_build_atlas_with_auto_batch_and_mean_ablation(tiny_models):
    from tlatlas.atlas.pipeline import SuiteSpec, build_atlas

    model = tiny_models["llama"]
    spec = SuiteSpec(per_family=3, families=("ioi", "code"), reference_per_family=4)
    auto = build_atlas(model, spec, AtlasConfig(batch_size=0, ablation="mean"))
    fixed = build_atlas(model, spec, AtlasConfig(batch_size=4, ablation="mean"))
    _sums_close(auto.sums, fixed.sums)
    assert auto.meta.dtype == "fp32"
