"""The prepared GPU run cannot rot: its --cpu-smoke form runs every step on the CPU (tiny
models, few examples) and writes the JSON files the GPU run writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ("env", "tests", "atlas_speed", "cost", "full_suite")


def test_gpu_run_cpu_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_run.py"), "--out",
                          str(out), "--cpu-smoke", "--deadline-s", "900", "--speed-timeout-s", "420"],
                         env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "gpu_run summary" in run.stdout
    files = {p.name for p in out.iterdir()}
    assert {f"{s}.json" for s in STEPS} | {"summary.json"} <= files
    assert len(files) <= 8  # a device call brings back at most 8 files
    data = {s: json.loads((out / f"{s}.json").read_text()) for s in (*STEPS, "summary")}
    for step in STEPS:
        assert data[step].get("status", "ok") == "ok", (step, data[step].get("error"))
    assert data["env"]["mode"] == "cpu-smoke" and data["env"]["packages"]["transformer-lens"]
    # the gpu tests are collected and skip cleanly without CUDA
    assert data["tests"]["exit_code"] == 0 and data["tests"]["counts"]["skipped"] >= 10
    assert data["tests"]["counts"]["failed"] == data["tests"]["counts"]["error"] == 0
    speed = data["atlas_speed"]["result"]["maps"]  # atlas_speed.py's own JSON
    assert data["atlas_speed"]["exit_code"] == 0 and speed
    diff = speed.get("layer", {}).get("max_abs_diff_exact_vs_naive")
    assert diff is None or diff <= 1e-4  # fp32 on the CPU
    for shape in ("tiny-llama", "tiny-qwen2"):
        for key in ("layer_map", "position_map"):
            row = data["cost"]["shapes"][shape][key]
            assert row["examples_per_s"] > 0 and row["within_budget"]
            assert 2 <= row["batch_used"] <= row["plan"]["batch_size"]
            assert 0 < row["peak_bytes"] <= row["estimate_bytes"]
    full = data["full_suite"]["models"]["tiny-llama"]
    assert full["examples"] == full["n_scored"] == 24 and full["within_budget"]
    assert data["summary"]["steps"] == {s: "ok" for s in STEPS}
