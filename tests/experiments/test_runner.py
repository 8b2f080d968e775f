"""The orchestrator: dry run, failures, crash-resume, the registry's guarantees, claims."""

import importlib
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import registry as reg
from experiments import run as runner
from experiments.claims import write_claims
from experiments.records import ResultKey, read_record

REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).parent / "plugins"
TEST_BLOCKS = "experiment_test_blocks"


@pytest.fixture(autouse=True)
def _test_blocks(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    importlib.import_module(TEST_BLOCKS)  # registers the t-* blocks once per process


@pytest.fixture
def marks(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "marks.txt"
    monkeypatch.setenv("TLATLAS_TEST_MARKS", str(path))
    return path


def _marks(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _env(marks: Path, **extra) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{PLUGINS}",
           "TLATLAS_EXPERIMENT_PLUGINS": TEST_BLOCKS, "TLATLAS_TEST_MARKS": str(marks),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def _run_cli(model, root, blocks, marks, **env):
    cmd = [sys.executable, "-m", "experiments.run", "--model", str(model), "--blocks", blocks,
           "--root", str(root)]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(marks, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_dry_run_executes_and_writes_nothing(tiny_dirs, tmp_path, marks, capsys):
    root = tmp_path / "exp"
    code = runner.main(["--model", str(tiny_dirs["llama"]), "--blocks", "all", "--dry-run",
                        "--root", str(root)])
    out = capsys.readouterr().out
    assert code == 0
    assert _files(root) == [] and _marks(marks) == []
    for block in ("hub-replication", "lora-strategies", "t-fast-a", "t-fail"):
        assert block in out
    assert re.search(r"hub-compare .* skip \(needs two models", out)
    assert "to run, 0 cached" in out


def test_failing_block_is_recorded_and_the_rest_complete(tiny_dirs, tmp_path, marks, capsys):
    root = tmp_path / "exp"
    model = str(tiny_dirs["llama"])
    code = runner.main(["--model", model, "--blocks", "t-fast-a,t-fail,t-fast-c",
                        "--root", str(root)])
    assert code == 1  # a block failed
    assert _marks(marks) == ["t-fast-a 42", "t-fail 42", "t-fast-c 42"]
    failed = read_record(root, ResultKey(block="t-fail", model=model, seed=42, size="smoke"))
    assert failed["status"] == "failed" and "boom" in failed["error"] and failed["value"] is None
    for block in ("t-fast-a", "t-fast-c"):
        r = read_record(root, ResultKey(block=block, model=model, seed=42, size="smoke"))
        assert r["status"] == "ok" and r["value"]["double_seed"] == 84
        assert r["value"]["n_examples"] == 1
    lines = reg.read_lines(root)
    assert sorted((x["block"], x["status"]) for x in lines) == [
        ("t-fail", "failed"), ("t-fast-a", "ok"), ("t-fast-c", "ok")]
    # a rerun reuses the two good results and retries only the failed block
    code = runner.main(["--model", model, "--blocks", "t-fast-a,t-fail,t-fast-c",
                        "--root", str(root)])
    assert code == 1 and _marks(marks)[3:] == ["t-fail 42"]
    assert "cached" in capsys.readouterr().err


def test_sigkill_mid_block_then_rerun_finishes_without_duplicates(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = "t-fast-a,t-slow,t-fast-c"
    proc = _run_cli(model, root, blocks, marks, TLATLAS_TEST_SLEEP="120")
    deadline = time.time() + 120
    while "t-slow started 42" not in _marks(marks):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "runner never reached the slow block"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [x["block"] for x in reg.read_lines(root)] == ["t-fast-a"]
    assert not (root / ResultKey(block="t-slow", model=model, seed=42, size="smoke").relpath).exists()

    proc = _run_cli(model, root, blocks, marks, TLATLAS_TEST_SLEEP="0")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    lines = reg.read_lines(root)
    assert sorted(x["block"] for x in lines) == ["t-fast-a", "t-fast-c", "t-slow"]
    assert len({x["path"] for x in lines}) == 3 and reg.check(root).ok
    assert _marks(marks).count("t-fast-a 42") == 1  # not recomputed


def test_rerun_restores_a_registry_line_lost_between_the_two_writes(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    assert runner.main(["--model", model, "--blocks", "t-fast-a,t-fast-c", "--root", str(root)]) == 0
    path = reg.registry_path(root)
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n")  # as if killed after writing the result, before its line
    assert runner.main(["--model", model, "--blocks", "t-fast-a,t-fast-c", "--root", str(root)]) == 0
    assert sorted(path.read_text().splitlines()) == sorted([first, second])
    assert len(_marks(marks)) == 2  # nothing recomputed


def _append_many(root: str, writer: int, n: int) -> None:
    for i in range(n):
        reg.append_line(Path(root), {"path": f"results/w{writer}/{i}.json", "sha256": "x" * 64,
                                     "payload": "y" * 2000})


def test_two_writers_at_once_leave_every_line_intact(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = reg.read_lines(tmp_path)
    assert len(lines) == 80 and len({x["path"] for x in lines}) == 80
    assert reg.check(tmp_path).ok


def test_torn_last_line_is_detected_reported_and_repaired_only_on_request(tmp_path):
    reg.append_line(tmp_path, {"path": "results/a.json", "sha256": "a"})
    path = reg.registry_path(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b'{"path": "results/b.json", "sha')  # a crash mid-write
    c = reg.check(tmp_path)
    assert c.torn_last_line and c.n_lines == 1 and not c.ok
    with pytest.raises(reg.TornRegistryError, match="torn"):
        reg.append_line(tmp_path, {"path": "results/c.json", "sha256": "c"})
    out = subprocess.run([sys.executable, "-m", "experiments.registry", "check", "--root",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1 and "TORN" in out.stdout
    assert path.read_bytes().endswith(b'"sha')  # check changed nothing
    backup = reg.repair(tmp_path)
    assert backup.read_bytes().endswith(b'"sha') and reg.check(tmp_path).ok
    assert reg.append_line(tmp_path, {"path": "results/c.json", "sha256": "c"})
    assert [x["path"] for x in reg.read_lines(tmp_path)] == ["results/a.json", "results/c.json"]


def test_changed_suite_hash_or_code_version_invalidates_a_cached_result(
        tiny_dirs, tmp_path, marks, monkeypatch):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = [b for b in runner.select_blocks("t-fast-a")]

    def actions():
        return [(t.action, t.reason) for t in runner.plan(blocks, [model], [42], "smoke", root)]

    assert runner.main(["--model", model, "--blocks", "t-fast-a", "--root", str(root)]) == 0
    assert actions() == [("cached", "")]
    assert runner.plan(blocks, [model], [42], "smoke", root, force=True)[0].action == "run"
    assert runner.plan(blocks, [model], [137], "smoke", root)[0].action == "run"  # other seed
    with monkeypatch.context() as m:
        m.setattr(runner, "suite_hash", lambda params, seed: "another-suite")
        assert actions() == [("run", "provenance changed (weights, suite, params or code)")]
    with monkeypatch.context() as m:
        m.setattr(runner, "code_version", lambda: "0.1.0+changed")
        assert actions()[0][0] == "run"
    assert actions() == [("cached", "")]


def test_real_blocks_on_a_tiny_model_and_claims_cite_existing_results(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    code = runner.main(["--model", model, "--blocks",
                        "hub-replication,suite-breadth,ablation-kinds,t-fast-a",
                        "--seeds", "42", "137", "--root", str(root)])
    assert code == 0
    kinds = read_record(root, ResultKey(block="ablation-kinds", model=model, seed=42,
                                        size="smoke"))["value"]
    assert set(kinds["hubs"]) == {"zero", "mean", "resample"}
    assert all(x > 0 for x in kinds["max_effect"].values())
    hub = read_record(root, ResultKey(block="hub-replication", model=model, seed=42, size="smoke"))
    v = hub["value"]
    assert v["n_layers"] == 3 and v["n_examples"] == 12
    assert 0 <= v["kl"]["hub_layer"] < 3 and v["kl"]["hub_effect"] >= v["kl"]["least_effect"]
    assert hub["fingerprints"][0]["n_layers"] == 3 and hub["value"]["artifacts"]
    other = read_record(root, ResultKey(block="hub-replication", model=model, seed=137,
                                        size="smoke"))
    assert other["suite_hash"] != hub["suite_hash"]  # seeds resample the suite

    paths = write_claims(root)
    cited = []
    for path in paths.values():
        text = path.read_text()
        cited += re.findall(r"`(results/[^`]+\.json)`", text)
    assert cited and all((root / c).is_file() for c in cited)
    claims = paths["claim"].read_text()
    assert f"is L{v['kl']['hub_layer']} of 3" in claims
    assert "t-fast-a doubled seed 137 to 274" in claims
    assert "hub by ablation kind zero L" in claims
    # a result that is removed takes its statements with it
    (root / ResultKey(block="t-fast-a", model=model, seed=137, size="smoke").relpath).unlink()
    assert "seed 137 to 274" not in write_claims(root)["claim"].read_text()
    assert json.loads((root / hub["value"]["artifacts"][0]).read_text())["meta"]["seed"] == 42


def test_ray_executor_runs_blocks_and_retries_a_dead_worker_once(tiny_dirs, tmp_path, marks):
    pytest.importorskip("ray", reason="Ray is the optional extra tlatlas[ray]")
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = "hub-replication,suite-breadth,t-fast-a,t-die-once"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--model", model, "--blocks", blocks,
         "--root", str(root), "--executor", "ray"],
        cwd=REPO, env=_env(marks, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0"), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = reg.read_lines(root)
    assert sorted(x["block"] for x in lines) == sorted(blocks.split(","))
    assert all(x["status"] == "ok" for x in lines) and reg.check(root).ok
    assert _marks(marks).count("t-die-once died 42") == 1 and "t-die-once 42" in _marks(marks)
    died = read_record(root, ResultKey(block="t-die-once", model=model, seed=42, size="smoke"))
    assert died["value"]["survived"]
    local = tmp_path / "local"
    assert runner.main(["--model", model, "--blocks", "hub-replication", "--root", str(local)]) == 0
    key = ResultKey(block="hub-replication", model=model, seed=42, size="smoke")
    assert read_record(local, key)["value"]["kl"] == read_record(root, key)["value"]["kl"]


def test_ray_executor_without_ray_is_a_clear_error(tiny_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = runner.main(["--model", str(tiny_dirs["llama"]), "--blocks", "t-fast-a",
                        "--root", str(tmp_path), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'tlatlas[ray]'" in err
    assert not (tmp_path / "registry.jsonl").exists()


@pytest.mark.bitsandbytes
def test_steering_quant_and_two_model_blocks_on_tiny_models(tiny_dirs, tmp_path, marks):
    pytest.importorskip("bitsandbytes")
    root = tmp_path / "exp"
    a, b = str(tiny_dirs["llama"]), str(tiny_dirs["qwen2"])
    blocks = "hub-compare,quant-speed,steer-controls,steer-quant,steer-transfer"
    assert runner.main(["--models", a, b, "--blocks", blocks, "--root", str(root)]) == 0
    lines = reg.read_lines(root)
    # per-model blocks once per model, two-model blocks once for the pair
    assert sorted(x["block"] for x in lines) == sorted(
        ["hub-compare", "steer-transfer"] + 2 * ["quant-speed", "steer-controls", "steer-quant"])
    speed = read_record(root, ResultKey(block="quant-speed", model=a, seed=42, size="smoke"))
    rows = {r["precision"]: r for r in speed["value"]["precisions"]}
    assert list(rows) == ["fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8"]
    assert rows["fp32"]["kl_vs_first"] == 0 and rows["fp32"]["slowdown"] == 1
    assert rows["nf4-fp32"]["kl_vs_first"] > rows["int8"]["kl_vs_first"] > 0
    steer = read_record(root, ResultKey(block="steer-controls", model=a, seed=42, size="smoke"))
    v = steer["value"]
    zero = v["scales"].index(0)
    assert all(row[zero] == 0 for row in v["mean_kl"][0])  # s = 0 changes nothing
    assert v["layers"] == [0]  # smoke steers every 3rd layer of 3
    quant = read_record(root, ResultKey(block="steer-quant", model=b, seed=42, size="smoke"))
    assert quant["value"]["precisions"][0] == "fp32"
    assert all(x == pytest.approx(1.0) for x in quant["value"]["amplification"][0][0]
               if x == x)  # fp32 / fp32
    pair = read_record(root, ResultKey(block="hub-compare", model=f"{a}+{b}", seed=42,
                                       size="smoke"))
    assert set(pair["value"]["hubs"]) == {a, b} and len(pair["fingerprints"]) == 2
    paths = write_claims(root)
    claims = paths["claim"].read_text()
    assert "steering transfer" in claims and "amplification" in claims
    assert "hub comparison" in claims


def test_lora_skip_and_lockin_blocks_on_a_tiny_model(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = "lora-strategies,module-sweep,layer-skip,checkpoint-lockin"
    assert runner.main(["--model", model, "--blocks", blocks, "--root", str(root)]) == 0

    def value(block):
        return read_record(root, ResultKey(block=block, model=model, seed=42, size="smoke"))["value"]

    strategies = value("lora-strategies")
    params = {r["strategy"]: r["trainable_params"] for r in strategies["rows"]}
    assert params["atlas"] == params["random"] and params["first-k"] <= params["atlas"]
    assert params["all-linear"] > params["atlas"]
    sweep = value("module-sweep")
    assert len({tuple(r["layers"]) for r in sweep["rows"]}) == 1  # layers held fixed
    skip = value("layer-skip")
    assert {r["skip_set"] for r in skip["rows"]} == {"atlas", "random"}
    assert all(0 <= r["before"]["top5_overlap"] <= 1 and r["before"]["kl"] > 0
               for r in skip["rows"])
    lockin = value("checkpoint-lockin")
    assert [r["steps"] for r in lockin["rows"]] == [0, 2, 4]
    assert lockin["rows"][0]["spearman_vs_step0"] == 1.0
    text = write_claims(root)["claim"].read_text()
    for phrase in ("held-out loss after LoRA", "with the layers fixed", "skipping 2 blocks",
                   "during LoRA on json"):
        assert phrase in text
