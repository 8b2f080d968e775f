"""The one prepared GPU run (issue 17; docs/gpu.md): versions, the tests marked ``gpu``, the
atlas speed benchmark, cost on config-true random models, and the full synthetic suite.

    bash benchmarks/gpu_run.sh OUT_DIR                    # on the GPU machine (wheels first)
    python benchmarks/gpu_run.py --out OUT_DIR            # wheels already importable
    python benchmarks/gpu_run.py --out OUT --cpu-smoke    # the same steps, tiny, on a CPU

Steps, in order, each writing one JSON file under ``--out`` (a step that fails records its
error and the run goes on; a step that would pass ``--deadline-s`` is skipped and says so):

1. ``env.json``: Python, torch, CUDA, GPU, library versions, the wheels installed.
2. ``tests.json``: ``pytest -m gpu tests/gpu`` (exact == naive on CUDA, bf16 vs fp32,
   steering, NF4/int8 when bitsandbytes is there, torchrun with NCCL, batching).
3. ``atlas_speed.json``: ``benchmarks/atlas_speed.py --json`` on a SmolLM2-135M-shaped
   random checkpoint (naive, TransformerLens patching, exact, attribution, same prompts).
4. ``cost.json``: per config-true random model (SmolLM2-135M, Qwen2.5-0.5B/1.5B/3B shapes,
   built from configs on the device, no weights), the exact layer map's and the position
   map's examples/s and peak memory, at the batch the memory-aware batching picks.
5. ``full_suite.json``: the 4,300-example synthetic suite, exact block layer map, on the
   SmolLM2-135M-shaped model (and the Qwen2.5-0.5B-shaped one when the time left allows).
6. ``summary.json`` and a table printed last.

Random weights give speed and memory figures, not science. The models run in the
device's default dtype (bf16 on CUDA, fp32 on the CPU) unless ``--dtype`` says otherwise.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tlatlas from this tree (it is not installed on the GPU machine)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

SHAPES = {
    # published configs (HF config.json of each model); vocab is the embedding size
    "smollm2-135m": dict(arch="llama", n_layers=30, d_model=576, n_heads=9, n_kv_heads=3,
                         d_mlp=1536, vocab=49152),
    "qwen2.5-0.5b": dict(arch="qwen2", n_layers=24, d_model=896, n_heads=14, n_kv_heads=2,
                         d_mlp=4864, vocab=151936),
    "qwen2.5-1.5b": dict(arch="qwen2", n_layers=28, d_model=1536, n_heads=12, n_kv_heads=2,
                         d_mlp=8960, vocab=151936),
    "qwen2.5-3b": dict(arch="qwen2", n_layers=36, d_model=2048, n_heads=16, n_kv_heads=2,
                       d_mlp=11008, vocab=151936),
}
SMOKE_SHAPES = {
    "tiny-llama": dict(arch="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                       d_mlp=128, vocab=None),
    "tiny-qwen2": dict(arch="qwen2", n_layers=3, d_model=64, n_heads=4, n_kv_heads=2,
                       d_mlp=96, vocab=None),
}
COST_FAMILY = "ioi"
FILES = ("env.json", "tests.json", "atlas_speed.json", "cost.json", "full_suite.json",
         "summary.json")


class Clock:
    """Seconds since the start, and what is left before the deadline."""

    def __init__(self, deadline_s: float) -> None:
        self.t0, self.deadline_s = time.perf_counter(), deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()


def log(msg: str) -> None:
    print(f"[gpu_run] {msg}", flush=True)


def error_row(err: Exception, what: str, *, keep: int = 3000) -> dict:
    """A step that raised: its error and the end of its traceback, logged; the run goes on."""
    log(f"{what}: {type(err).__name__}: {err}")
    return {"status": "error", "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc()[-keep:]}


def write_json(out: Path, name: str, data: dict) -> None:
    (out / name).write_text(json.dumps(data, indent=2, default=str) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- models


def offline_tokenizer(directory: Path, vocab_size: int = 1024):
    """A byte-level BPE trained on the task suites' own text (no network), saved and
    reloaded from ``directory`` (TransformerLens wants a tokenizer with a source path)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from tlatlas.tasks import build_suite

    texts = [ex.prompt + ex.answer for kind in ("synthetic", "nl") for ex in build_suite(kind)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|bos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>",
                            eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                            ).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(str(directory))


def find_tokenizer(args, work: Path):
    """(tokenizer, where it came from): ``--tokenizer``, else the SmolLM2 tokenizer when
    installed here, else one trained offline. The smoke run always trains its own."""
    from transformers import AutoTokenizer

    if args.tokenizer and not args.cpu_smoke:
        return AutoTokenizer.from_pretrained(args.tokenizer), str(args.tokenizer)
    if not args.cpu_smoke:
        try:
            from tlatlas.models import weights_dir

            path = weights_dir("smollm2-135m")
            return AutoTokenizer.from_pretrained(str(path)), "smollm2-135m"
        except Exception:  # not installed here: train one
            pass
    return offline_tokenizer(work / "tokenizer"), "offline BPE (1024) on the task suites"


def hf_config(shape: dict, tokenizer):
    from transformers import LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[shape["arch"]]
    vocab = max(shape["vocab"] or 0, len(tokenizer))
    return cls(vocab_size=vocab, hidden_size=shape["d_model"], intermediate_size=shape["d_mlp"],
               num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
               num_key_value_heads=shape["n_kv_heads"], max_position_embeddings=4096,
               tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _random_hf(name: str, shape: dict, tokenizer, work: Path, device: torch.device,
               dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    path = work / name
    path.mkdir(parents=True, exist_ok=True)
    config = hf_config(shape, tokenizer)
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the device: seconds, even for 3B
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    return hf.eval(), path


def random_checkpoint(name: str, shape: dict, tokenizer, work: Path, device: torch.device
                      ) -> Path:
    """A random fp32 checkpoint of ``shape`` written to disk (for tools that take a path)."""
    hf, path = _random_hf(name, shape, tokenizer, work, device, torch.float32)
    hf.save_pretrained(path, safe_serialization=True)
    return path


def random_model(name: str, shape: dict, tokenizer, work: Path, device: torch.device,
                 dtype: torch.dtype):
    """A :class:`~tlatlas.models.LoadedModel` with random weights from ``shape``'s config,
    initialised on ``device``. Only the config and tokenizer are written (writing and
    reading 3B weights would cost more GPU time than the measurement); the bridge is
    booted over the model in memory, as ``load_model`` boots it over a loaded one."""
    from transformers import AutoTokenizer

    from tlatlas.models import LoadedModel, boot_bridge, fingerprint_of

    hf, path = _random_hf(name, shape, tokenizer, work, device, dtype)
    tok = AutoTokenizer.from_pretrained(str(path))
    bridge = boot_bridge(path, hf, tok, device)
    return LoadedModel(name=f"random:{name}", bridge=bridge, hf_model=hf, tokenizer=tok,
                       fingerprint=fingerprint_of(hf, f"random-init-{name}"), path=path), path


def free_model(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- steps


def step_env(args, out: Path) -> dict:
    import importlib.metadata as md

    env: dict = {"python": sys.version.split()[0], "platform": platform.platform(),
                 "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                 "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
                 "torch_threads": torch.get_num_threads(), "mode": mode(args),
                 "installed_wheels": [w for w in os.environ.get("GPU_RUN_INSTALLED", "").split()
                                      if w],
                 "datasets_stub": os.environ.get("GPU_RUN_DATASETS_STUB") == "1",
                 "packages": {}}
    for pkg in ("transformers", "transformer-lens", "datasets", "accelerate", "peft",
                "jaxtyping", "beartype", "safetensors", "tokenizers", "huggingface-hub",
                "pyarrow", "fsspec", "numpy", "bitsandbytes", "pytest"):
        try:
            env["packages"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env["packages"][pkg] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        env.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(total / 2**30, 2), gpu_free_gib=round(free / 2**30, 2),
                   capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    try:
        env["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    import transformer_lens  # the import the wheels exist for: fail here, loudly

    env["transformer_lens_file"] = transformer_lens.__file__
    log(f"python {env['python']}, torch {env['torch']} (CUDA {env['torch_cuda']}), "
        f"GPU {env.get('gpu', 'none')} {env.get('gpu_memory_gib', '')} GiB, "
        f"driver {env.get('driver')}")
    log("packages: " + ", ".join(f"{k} {v}" for k, v in env["packages"].items()))
    log("installed from wheels: " + (", ".join(env["installed_wheels"]) or "nothing"))
    return env


def step_tests(args, out: Path, clock: Clock) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu",
               "-p", "no:cacheprovider", f"--junitxml={xml}", "-rs"]
        timeout = max(30.0, min(args.tests_timeout_s, clock.left() - 120))
        t0 = time.perf_counter()
        try:
            run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            rc, tail = run.returncode, (run.stdout + run.stderr)[-4000:]
        except subprocess.TimeoutExpired as err:
            rc, tail = None, f"timed out after {timeout:.0f} s\n{(err.stdout or b'')[-3000:]!r}"
        seconds = time.perf_counter() - t0
        cases = []
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                outcome, detail = "passed", ""
                for tag in ("failure", "error", "skipped"):
                    el = case.find(tag)
                    if el is not None:
                        outcome = {"failure": "failed"}.get(tag, tag)
                        detail = (el.get("message") or "")[:500]
                cases.append({"test": f"{case.get('classname')}::{case.get('name')}",
                              "outcome": outcome, "seconds": float(case.get("time", 0)),
                              "detail": detail})
    counts = {k: sum(c["outcome"] == k for c in cases)
              for k in ("passed", "failed", "error", "skipped")}
    log(f"gpu tests: {counts} in {seconds:.0f} s (exit {rc})")
    for c in cases:
        if c["outcome"] in ("failed", "error"):
            log(f"  {c['outcome']}: {c['test']}: {c['detail'][:200]}")
    return {"command": " ".join(cmd), "exit_code": rc, "seconds": seconds, "counts": counts,
            "cases": cases, "output_tail": tail}


def speed_flags(help_text: str, args) -> list[str]:
    """Optional atlas_speed flags, passed only when its CLI has them (it is being extended)."""
    extra = []
    if "--dtype" in help_text and args.speed_dtype:
        extra += ["--dtype", args.speed_dtype]
    if "--device" in help_text and torch.cuda.is_available() and not args.cpu_smoke:
        extra += ["--device", "cuda"]
    return extra


def step_speed(args, out: Path, clock: Clock, tokenizer, work: Path) -> dict:
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = "tiny-llama" if args.cpu_smoke else "smollm2-135m"
    shapes = SMOKE_SHAPES if args.cpu_smoke else SHAPES
    path = random_checkpoint(f"speed-{name}", shapes[name], tokenizer, work, device)
    free_model(device)
    script = REPO / "benchmarks" / "atlas_speed.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    if args.cpu_smoke:
        cli = ["--per-family", "1", "--families", "factual", "ioi", "--pos-families", "factual",
               "--batch-size", "2", "--threads", "1"]
    else:
        cli = ["--per-family", str(args.speed_per_family), "--families", "factual", "ioi",
               "code", "--pos-families", "factual", "--batch-size", str(args.speed_batch_size)]
    cmd = [sys.executable, str(script), "--model", str(path), *cli, *speed_flags(help_text, args),
           "--json"]
    timeout = max(30.0, min(args.speed_timeout_s, clock.left() - 90))
    t0 = time.perf_counter()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout, "command": " ".join(cmd)}
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    result = {"command": " ".join(cmd), "exit_code": run.returncode, "model": name,
              "seconds": time.perf_counter() - t0, "stderr_tail": run.stderr[-3000:],
              "note": "random weights, config-true shape; the model loads in the device's "
                      "default dtype unless atlas_speed has --dtype"}
    if lines:
        result["result"] = json.loads(lines[-1])
    if run.returncode != 0 or not lines:
        result.update(status="error", error=(run.stderr.strip().splitlines() or ["no output"])[-1])
    for line in run.stderr.splitlines():
        if line.startswith(("==", "  ")):
            log(f"speed | {line}")
    return result


def time_sweep(model, examples, config):
    """(sums, seconds, peak bytes above start, halvings) of one compute_atlas_sums."""
    from tlatlas.atlas.sweep import compute_atlas_sums
    from tlatlas.models.memory import MemoryBackoffWarning, PeakTensorMemory

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MemoryBackoffWarning)
        sync(model.device)
        with PeakTensorMemory(model.device) as peak:
            t0 = time.perf_counter()
            sums = compute_atlas_sums(model, examples, config)
            sync(model.device)
            seconds = time.perf_counter() - t0
    halvings = [str(w.message) for w in caught if issubclass(w.category, MemoryBackoffWarning)]
    return sums, seconds, peak.peak_bytes, halvings


def measure_map(model, pool, positions: bool, target_s: float, clock: Clock, args) -> dict:
    """Examples/s and peak memory of one map at the batch the planner picks.

    Starts with 2 examples, then times one batch of as many examples as the last rate
    says fit ``target_s`` (at most the planned batch), up to three times: the figure is
    the last run's, at the planned batch unless time said fewer."""
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.sweep import atlas_batch_plans

    config = AtlasConfig(batch_size=0, positions=positions,
                         memory_budget_bytes=args.budget_bytes)
    plan = atlas_batch_plans(model, pool, config)[COST_FAMILY]
    # warm-up: kernels, allocator, the bridge's first-call work
    time_sweep(model, pool[:2], replace(config, batch_size=2, layers=(0,)))
    n = 2
    _, seconds, peak, halvings = time_sweep(model, pool[:n], config)
    runs = [{"examples": n, "seconds": seconds}]
    for _ in range(3):
        room = min(target_s, clock.left() - 60)
        want = int(min(plan.batch_size, len(pool), n / seconds * room))
        if want <= n or (want < 2 * n and seconds > target_s / 4):
            break
        n = want
        _, seconds, peak, halvings = time_sweep(model, pool[:n], config)
        runs.append({"examples": n, "seconds": seconds})
    used = min(n, plan.batch_size)
    estimate = used * plan.bytes_per_example
    return {"plan": plan.to_dict(), "runs": runs, "examples": n, "batch_used": used,
            "seconds": seconds, "examples_per_s": n / seconds, "peak_bytes": peak,
            "peak_gib": peak / 2**30, "budget_bytes": plan.budget_bytes,
            "within_budget": peak <= plan.budget_bytes, "estimate_bytes": estimate,
            "peak_over_estimate": peak / max(1, estimate), "halvings": halvings}


def step_cost(args, out: Path, clock: Clock, tokenizer, work: Path, dtype) -> dict:
    from tlatlas.tasks import build_suite

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    shapes = SMOKE_SHAPES if args.cpu_smoke else SHAPES
    pool = list(build_suite("synthetic", seed=42, families=[COST_FAMILY],
                            per_family=8 if args.cpu_smoke else None))
    rows: dict = {}
    for name in args.shapes or list(shapes):
        if clock.left() < args.min_step_s:
            rows[name] = {"status": "skipped: deadline"}
            log(f"cost {name}: skipped (deadline)")
            continue
        t0 = time.perf_counter()
        try:
            model, _ = random_model(name, shapes[name], tokenizer, work, device, dtype)
            row: dict = {"shape": shapes[name], "dtype": str(dtype).removeprefix("torch."),
                         "build_s": time.perf_counter() - t0,
                         "params": sum(p.numel() for p in model.hf_model.parameters()),
                         "weights_bytes": sum(p.numel() * p.element_size()
                                              for p in model.hf_model.parameters())}
            for key, positions, target in (("layer_map", False, args.target_s),
                                           ("position_map", True, args.target_s)):
                if clock.left() < args.min_step_s / 2:
                    row[key] = {"status": "skipped: deadline"}
                    continue
                row[key] = measure_map(model, pool, positions, target, clock, args)
                r = row[key]
                log(f"cost {name} {key}: {r['examples_per_s']:.2f} ex/s at batch "
                    f"{r['batch_used']} (planned {r['plan']['batch_size']}, chunk "
                    f"{r['plan']['position_chunk']}), peak {r['peak_gib']:.2f} GiB "
                    f"(budget {r['budget_bytes'] / 2**30:.1f} GiB, estimate "
                    f"x{r['peak_over_estimate']:.2f})")
            rows[name] = row
        except Exception as err:  # record and go on to the next shape
            rows[name] = error_row(err, f"cost {name}")
        finally:
            model = None
            free_model(device)
    return {"family": COST_FAMILY, "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "shapes": rows,
            "note": "random weights from each model's published config; examples/s of one "
                    "batch of one family; the position map's run includes the layer map"}


def step_full_suite(args, out: Path, clock: Clock, tokenizer, work: Path, dtype,
                    cost: dict) -> dict:
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.sweep import atlas_batch_plans
    from tlatlas.tasks import build_suite

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    shapes = SMOKE_SHAPES if args.cpu_smoke else SHAPES
    suite = build_suite("synthetic", seed=42, per_family=2 if args.cpu_smoke else None)
    examples = list(suite)
    config = AtlasConfig(batch_size=0, memory_budget_bytes=args.budget_bytes)
    rows: dict = {}
    names = ["tiny-llama"] if args.cpu_smoke else args.full_suite_shapes
    for name in names:
        rate = (cost.get("shapes", {}).get(name, {}).get("layer_map", {}) or {}).get(
            "examples_per_s")
        predicted = len(examples) / rate if rate else None
        if clock.left() < args.min_step_s or (
                predicted is not None and name != names[0] and predicted * 1.3 + 30 > clock.left()):
            rows[name] = {"status": "skipped: deadline", "predicted_s": predicted}
            log(f"full suite {name}: skipped (predicted {predicted} s, {clock.left():.0f} s left)")
            continue
        try:
            model, _ = random_model(name, shapes[name], tokenizer, work, device, dtype)
            plans = atlas_batch_plans(model, examples, config)
            time_sweep(model, examples[:2], replace(config, batch_size=2, layers=(0,)))
            sums, seconds, peak, halvings = time_sweep(model, examples, config)
            budget = next(iter(plans.values())).budget_bytes
            rows[name] = {
                "examples": len(examples), "suite_hash": suite.content_hash,
                "dtype": str(dtype).removeprefix("torch."), "seconds": seconds,
                "examples_per_s": len(examples) / seconds, "predicted_s": predicted,
                "batch_sizes": {f: p.batch_size for f, p in plans.items()},
                "widths": {f: p.width for f, p in plans.items()},
                "peak_bytes": peak, "peak_gib": peak / 2**30, "budget_bytes": budget,
                "within_budget": peak <= budget, "halvings": halvings,
                "n_scored": sums.n_examples}
            log(f"full suite {name}: {len(examples)} examples in {seconds:.1f} s "
                f"({len(examples) / seconds:.1f} ex/s), batches "
                f"{min(rows[name]['batch_sizes'].values())}..{max(rows[name]['batch_sizes'].values())}, "
                f"peak {peak / 2**30:.2f} GiB")
        except Exception as err:
            rows[name] = error_row(err, f"full suite {name}")
        finally:
            model = None
            free_model(device)
    return {"map": "layer map (attn/mlp/block), exact, zero ablation, auto batch",
            "device": str(device), "models": rows}


# --------------------------------------------------------------------------- summary


def summary_table(results: dict) -> list[str]:
    lines = []
    env = results.get("env", {})
    lines.append(f"device: {env.get('gpu', 'cpu')}  torch {env.get('torch')}  "
                 f"CUDA {env.get('torch_cuda')}  mode {env.get('mode')}")
    tests = results.get("tests", {})
    if "counts" in tests:
        lines.append(f"gpu tests: {tests['counts']}  ({tests.get('seconds', 0):.0f} s)")
    speed = results.get("atlas_speed", {}).get("result", {})
    for name, row in speed.get("maps", {}).items():
        try:  # atlas_speed.py's format belongs to that script; summarise what is there
            parts = [f"{m} {row[m]['seconds']:.2f}s" for m in
                     ("naive", "tl_patching_resid_pre", "exact", "attribution") if m in row]
            diff = row.get("max_abs_diff_exact_vs_naive")
            lines.append(f"speed {name}: " + ", ".join(parts)
                         + (f"; exact {row['speedup_exact']:.1f}x naive"
                            if "speedup_exact" in row else "")
                         + (f"; max|exact-naive| {diff:.1e}" if diff is not None else ""))
        except (KeyError, TypeError, ValueError):
            lines.append(f"speed {name}: see atlas_speed.json")
    lines.append(f"{'model shape':16} {'map':13} {'ex/s':>9} {'batch':>6} {'planned':>7} "
                 f"{'chunk':>5} {'peak GiB':>9} {'budget GiB':>10} {'ok':>3}")
    for name, row in results.get("cost", {}).get("shapes", {}).items():
        for key in ("layer_map", "position_map"):
            r = row.get(key)
            if not r or "examples_per_s" not in r:
                lines.append(f"{name:16} {key:13} {row.get('status', (r or {}).get('status', '-'))}")
                continue
            lines.append(f"{name:16} {key:13} {r['examples_per_s']:9.2f} {r['batch_used']:6d} "
                         f"{r['plan']['batch_size']:7d} {r['plan']['position_chunk']:5d} "
                         f"{r['peak_gib']:9.3f} {r['budget_bytes'] / 2**30:10.1f} "
                         f"{'yes' if r['within_budget'] else 'NO':>3}")
    for name, r in results.get("full_suite", {}).get("models", {}).items():
        if "seconds" in r:
            lines.append(f"full suite {name}: {r['examples']} examples in {r['seconds']:.1f} s "
                         f"({r['examples_per_s']:.1f} ex/s), peak {r['peak_gib']:.2f} GiB, "
                         f"within budget: {r['within_budget']}")
        else:
            lines.append(f"full suite {name}: {r.get('status')}")
    for step, r in results.items():
        if isinstance(r, dict) and r.get("status") in ("error", "timeout"):
            lines.append(f"step {step}: {r['status']}: {r.get('error', '')[:200]}")
    return lines


def mode(args) -> str:
    return "cpu-smoke" if args.cpu_smoke else "cuda"


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MiB, 8GiB)")
    unit = (m.group(2) or "b").rstrip("b").rstrip("i")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(unit or " "))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON files")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="the same steps on the CPU with tiny models and few examples (~2 min)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip steps that would end after this many seconds (default 450 on "
                        "CUDA, 240 for the smoke run)")
    p.add_argument("--steps", nargs="+", default=["env", "tests", "speed", "cost", "full_suite"],
                   choices=["env", "tests", "speed", "cost", "full_suite"])
    p.add_argument("--shapes", nargs="+", default=None,
                   help=f"cost step's shapes (default all: {', '.join(SHAPES)})")
    p.add_argument("--full-suite-shapes", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"],
                   help="shapes to map the whole suite on (after the first, only when the "
                        "cost step's rate says it fits the time left)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                   help="cost and full-suite dtype (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--speed-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="atlas_speed's dtype, passed when its CLI has --dtype")
    p.add_argument("--speed-per-family", type=int, default=2)
    p.add_argument("--speed-batch-size", type=int, default=8)
    p.add_argument("--budget-bytes", type=parse_bytes, default=None,
                   help="memory budget of the sweeps (default: the free memory x 0.8)")
    p.add_argument("--target-s", type=float, default=None,
                   help="seconds per timed cost run (default 12 on CUDA, 1 for the smoke run)")
    p.add_argument("--tests-timeout-s", type=float, default=180)
    p.add_argument("--speed-timeout-s", type=float, default=150)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory for the random models (gpu_run.sh passes the "
                        "carried SmolLM2 tokenizer)")
    args = p.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        p.error("no CUDA device here; use --cpu-smoke for the CPU run")
    args.deadline_s = args.deadline_s or (240.0 if args.cpu_smoke else 450.0)
    args.target_s = args.target_s or (1.0 if args.cpu_smoke else 12.0)
    args.min_step_s = 20.0 if args.cpu_smoke else 45.0
    if args.cpu_smoke:
        torch.set_num_threads(1)
    from tlatlas.models import DTYPES, default_dtype

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
    args.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.deadline_s)
    results: dict = {}
    log(f"mode {mode(args)}, out {args.out}, deadline {args.deadline_s:.0f} s")
    with tempfile.TemporaryDirectory(prefix="gpu_run_") as tmp:
        work = Path(tmp)
        tokenizer = tok_source = None

        def tok():
            nonlocal tokenizer, tok_source
            if tokenizer is None:
                tokenizer, tok_source = find_tokenizer(args, work)
                log(f"tokenizer: {tok_source} ({len(tokenizer)} tokens)")
            return tokenizer

        steps = {
            "env": lambda: step_env(args, args.out),
            "tests": lambda: step_tests(args, args.out, clock),
            "atlas_speed": lambda: step_speed(args, args.out, clock, tok(), work),
            "cost": lambda: step_cost(args, args.out, clock, tok(), work, dtype),
            "full_suite": lambda: step_full_suite(args, args.out, clock, tok(), work, dtype,
                                                  results.get("cost", {})),
        }
        wanted = {"speed": "atlas_speed"}
        chosen = [wanted.get(s, s) for s in args.steps]
        for name, run in steps.items():
            if name not in chosen:
                continue
            t0 = clock.elapsed()
            if name != "env" and clock.left() < args.min_step_s:
                results[name] = {"status": "skipped: deadline"}
            else:
                log(f"--- {name} ({clock.left():.0f} s left)")
                try:
                    results[name] = run()
                except Exception as err:
                    results[name] = error_row(err, name, keep=4000)
            results[name]["step_seconds"] = clock.elapsed() - t0
            if tok_source is not None:
                results[name].setdefault("tokenizer", tok_source)
            write_json(args.out, f"{name}.json", results[name])
    lines = summary_table(results)
    summary = {"mode": mode(args), "seconds": clock.elapsed(), "deadline_s": args.deadline_s,
               "dtype": str(dtype).removeprefix("torch."), "table": lines,
               "steps": {k: v.get("status", "ok") for k, v in results.items()},
               "date": time.strftime("%Y-%m-%d"), "device": results.get("env", {}).get("gpu", "cpu")}
    write_json(args.out, "summary.json", summary)
    print("\n== gpu_run summary " + "=" * 60)
    for line in lines:
        print(line)
    print(f"total {clock.elapsed():.0f} s; JSON in {args.out}")
    failed = any(v.get("status") == "error" for v in results.values()) or \
        results.get("tests", {}).get("exit_code") not in (None, 0, 5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
