"""CUDA paths, tested where CUDA exists (skipped elsewhere; benchmarks/gpu_run.sh runs them).

- the exact fast path equals the naive loop to 1e-4 in fp32 on CUDA (layer and position
  maps; zero, mean and resample ablation);
- the bf16 path agrees with fp32 within :data:`BF16_KL_TOL` (stated, and tested);
- the steering sweep on CUDA: exact equals naive, and both equal the CPU's;
- NF4 / int8 copies on CUDA when bitsandbytes is installed;
- the torchrun atlas with NCCL on one GPU (one rank) equals the in-process atlas;
- memory-aware batching on CUDA: the measured peak stays under the budget.

TF32 is switched off for the fp32 comparisons (PyTorch's default for matmuls, made explicit).
"""

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tlatlas.atlas.config import AtlasConfig, atlas_hook_names
from tlatlas.atlas.hubs import hub_summary
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.sweep import atlas_batch_plans, compute_atlas_sums, reference_stats
from tlatlas.metrics import METRICS
from tlatlas.models import load_model
from tlatlas.models.memory import PeakTensorMemory
from tlatlas.tasks import build_suite

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOL = 1e-4
"""exact vs naive, fp32, per example (as on the CPU)."""
BF16_KL_TOL = (0.05, 0.10)
"""bf16 vs fp32 per-layer mean effects (block, KL in nats): |bf16 - fp32| <= abs + rel x
|fp32| for every layer and family. Measured on the CPU with these tiny models and
examples: max |d| 0.0050 (llama) and 0.0056 nats (qwen2), at most 1.3% of the fp32 value;
the tolerance leaves ~10x for CUDA's other summation order. On SmolLM2-135M bf16 moves
layer effects by a few percent (docs/gpu.md, docs/results/dtype_cpu.txt)."""
FAMILIES = ["ioi", "factual", "code"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def cuda_models(tiny_dirs):
    """Tiny random checkpoints on CUDA, fp32 and bf16."""
    return {(arch, label): load_model(path, device="cuda", dtype=dtype)
            for arch, path in tiny_dirs.items()
            for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


@pytest.fixture(scope="module")
def examples():
    return list(build_suite("synthetic", seed=42, per_family=2, families=FAMILIES))


def per_example(sums):
    t = sums.tensors
    out = {"layer": t["layer.sum"] / t["count"].clamp(min=1)}
    if "role.sum" in t:
        out["role"] = t["role.sum"] / t["role.count"].clamp(min=1)
        out["offset"] = t["offset.sum"] / t["offset.count"].clamp(min=1)
    return out


def max_diff(a, b):
    pa, pb = per_example(a), per_example(b)
    return max(float((pa[k] - pb[k]).abs().max()) for k in pa)


def _means(model, ablation):
    if ablation != "mean":
        return None
    ref = list(build_suite("synthetic", seed=7, per_family=2, families=FAMILIES))
    return reference_stats(model, ref, atlas_hook_names(range(model.n_layers), True)[0])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_exact_equals_naive_fp32_on_cuda(cuda_models, examples, arch, ablation):
    model = cuda_models[(arch, "fp32")]
    assert model.device.type == "cuda" and model.dtype == torch.float32
    means = _means(model, ablation)
    config = AtlasConfig(ablation=ablation, positions=True, batch_size=2)
    naive = compute_atlas_sums(model, examples, replace(config, method="naive"), means=means)
    fast = compute_atlas_sums(model, examples, config, means=means)
    assert max_diff(naive, fast) <= TOL
    assert float(per_example(fast)["layer"][0].max()) > 1e-2  # not trivially zero


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cuda_fp32_equals_cpu_fp32(tiny_models, cuda_models, examples, arch):
    config = AtlasConfig(positions=True, batch_size=2, layers=(0, 2))
    cpu = compute_atlas_sums(tiny_models[arch], examples, config)
    gpu = compute_atlas_sums(cuda_models[(arch, "fp32")], examples, config)
    assert max_diff(cpu, gpu) <= TOL


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bf16_agrees_with_fp32_within_the_stated_tolerance(cuda_models, examples, arch):
    config = AtlasConfig(batch_size=2)
    f32 = per_example(compute_atlas_sums(cuda_models[(arch, "fp32")], examples, config))["layer"]
    b16_sums = compute_atlas_sums(cuda_models[(arch, "bf16")], examples, config)
    b16 = per_example(b16_sums)["layer"]
    kl = METRICS.index("kl")
    a, b = f32[kl, 2], b16[kl, 2]  # block component, [layer family]
    abs_tol, rel_tol = BF16_KL_TOL
    assert ((a - b).abs() <= abs_tol + rel_tol * a.abs()).all(), (a - b).abs().max()
    assert not torch.equal(a, b)  # it really ran in bf16


def test_atlas_on_cuda_records_its_dtype(cuda_models):
    spec = SuiteSpec(per_family=2, families=("ioi",))
    for label in ("fp32", "bf16"):
        atlas = build_atlas(cuda_models[("llama", label)], spec, AtlasConfig(batch_size=2))
        assert atlas.meta.dtype == label
    default = load_model(cuda_models[("llama", "fp32")].path)  # CUDA's default: bf16
    assert default.dtype == torch.bfloat16


def test_steering_sweep_on_cuda(tiny_models, cuda_models):
    from tlatlas.steering import SteeringConfig, steering_sweep, steering_vectors

    suite = build_suite("synthetic", seed=42, per_family=3, families=["json", "factual"])
    cfg = SteeringConfig(scales=(-2.0, 0.0, 1.0), random_draws=2, max_rows=8)
    results = {}
    for where, model in (("cpu", tiny_models["llama"]), ("cuda", cuda_models[("llama", "fp32")])):
        v = steering_vectors(model, list(suite))
        results[where] = steering_sweep(model, suite, v, cfg)
    naive = steering_sweep(cuda_models[("llama", "fp32")], suite,
                           steering_vectors(cuda_models[("llama", "fp32")], list(suite)),
                           SteeringConfig(**{**cfg.__dict__, "method": "naive"}))
    for key in ("kl.sum", "dlogp.sum", "random.kl.sum", "random.dlogp.sum"):
        assert torch.allclose(results["cuda"].tensors[key], naive.tensors[key], atol=TOL), key
        assert torch.allclose(results["cuda"].tensors[key], results["cpu"].tensors[key],
                              atol=1e-3), key
    assert float(results["cuda"].tensors["kl.sum"].abs().sum()) > 0


@pytest.mark.bitsandbytes
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes is not installed (it is not carried to the GPU "
                           "machine: over 100 MB)")
@pytest.mark.parametrize("precision", ["nf4", "nf4-bf16", "int8"])
def test_quantized_copies_on_cuda(tiny_dirs, cuda_models, examples, precision):
    from tlatlas.models.quant import load_quantized_model, parse_precision

    spec = parse_precision(precision)
    qm = load_quantized_model(tiny_dirs["llama"], spec, device="cuda")
    assert qm.device.type == "cuda" and qm.fingerprint.quantization == spec.label
    config = AtlasConfig(batch_size=2, layers=(0, 2))
    fast = compute_atlas_sums(qm, examples, config)
    naive = compute_atlas_sums(qm, examples, replace(config, method="naive"))
    assert max_diff(naive, fast) <= 5e-2  # bf16/4-bit kernels: same model, other batch shapes
    f32 = compute_atlas_sums(cuda_models[("llama", "fp32")], examples, config)
    kl = METRICS.index("kl")
    q, r = per_example(fast)["layer"][kl, 2], per_example(f32)["layer"][kl, 2]
    assert torch.isfinite(q).all() and float((q - r).abs().max()) < 0.5 * float(r.abs().max())


def test_torchrun_nccl_one_rank(tiny_dirs, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "1", "-m", "tlatlas", "atlas", "--model", str(tiny_dirs["llama"]), "--per-family",
           "2", "--families", *FAMILIES, "--batch-size", "2", "--positions", "--out", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    from tlatlas.atlas.store import load_atlas

    ranked = load_atlas(out / "seed42")
    assert ranked.meta.world_size == 1 and "reduce" in ranked.meta.timings
    model = load_model(tiny_dirs["llama"], device="cuda")  # as the CLI loads it (bf16)
    assert ranked.meta.dtype == "bf16"
    single = build_atlas(model, SuiteSpec(per_family=2, families=tuple(FAMILIES)),
                         AtlasConfig(batch_size=2, positions=True))
    assert max_diff(ranked.sums, single.sums) <= 1e-2  # bf16; another process may pick other kernels
    assert hub_summary(ranked.sums).hub_layer == hub_summary(single.sums).hub_layer


def test_auto_batch_peak_stays_under_the_budget_on_cuda(cuda_models):
    model = cuda_models[("qwen2", "fp32")]
    exs = list(build_suite("synthetic", seed=42, per_family=24, families=["ioi"]))
    budget = 8 * 2**20
    config = AtlasConfig(batch_size=0, memory_budget_bytes=budget, positions=True)
    plan = atlas_batch_plans(model, exs, config)["ioi"]
    assert 2 <= plan.batch_size < len(exs)
    with PeakTensorMemory(model.device) as pk:
        auto = compute_atlas_sums(model, exs, config)
    assert 0 < pk.peak_bytes <= budget
    fixed = compute_atlas_sums(model, exs, replace(config, batch_size=plan.batch_size))
    assert max_diff(auto, fixed) == 0.0
