"""Executors: the blocks as Ray tasks (a dead worker retried), and a clear error without Ray."""

import subprocess
import sys

import pytest
from experiment_support import REPO, cli_env, read_marks

from experiments import registry as reg
from experiments import run as cli
from experiments.records import ResultKey, read_record


def test_ray_executor_runs_blocks_and_retries_a_dead_worker_once(tiny_dirs, tmp_path, marks):
    pytest.importorskip("ray", reason="Ray is the optional extra tlatlas[ray]")
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = "hub-replication,suite-breadth,t-fast-a,t-die-once"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--model", model, "--blocks", blocks,
         "--root", str(root), "--executor", "ray"],
        cwd=REPO, env=cli_env(marks, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0"), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = reg.read_lines(root)
    assert sorted(x["block"] for x in lines) == sorted(blocks.split(","))
    assert all(x["status"] == "ok" for x in lines) and reg.check(root).ok
    assert read_marks(marks).count("t-die-once died 42") == 1 and "t-die-once 42" in read_marks(marks)
    died = read_record(root, ResultKey(block="t-die-once", model=model, seed=42, size="smoke"))
    assert died["value"]["survived"]
    local = tmp_path / "local"
    assert cli.main(["--model", model, "--blocks", "hub-replication", "--root", str(local)]) == 0
    key = ResultKey(block="hub-replication", model=model, seed=42, size="smoke")
    assert read_record(local, key)["value"]["kl"] == read_record(root, key)["value"]["kl"]


def test_ray_executor_without_ray_is_a_clear_error(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = cli.main(["--model", str(tiny_dirs["llama"]), "--blocks", "t-fast-a",
                     "--root", str(tmp_path), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'tlatlas[ray]'" in err
    assert not (tmp_path / "registry.jsonl").exists()
