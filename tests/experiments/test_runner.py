"""The orchestrator: dry run, failures, crash-resume, cache invalidation, and running the
command line from any directory with ``--root``."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from experiment_support import REPO, cli_env, files_under, read_marks, run_cli

from experiments import executors, runner
from experiments import registry as reg
from experiments import run as cli
from experiments.blocks import select_blocks
from experiments.paths import PACKAGE_DIR, default_root
from experiments.records import ResultKey, read_record


def test_dry_run_executes_and_writes_nothing(tiny_dirs, tmp_path, marks, capsys):
    root = tmp_path / "exp"
    code = cli.main(["--model", str(tiny_dirs["llama"]), "--blocks", "all", "--dry-run",
                     "--root", str(root)])
    out = capsys.readouterr().out
    assert code == 0
    assert files_under(root) == [] and read_marks(marks) == []
    for block in ("hub-replication", "lora-strategies", "t-fast-a", "t-fail"):
        assert block in out
    assert re.search(r"hub-compare .* skip \(needs two models", out)
    assert "to run, 0 cached" in out

def test_dry_run_from_outside_the_repository_with_root_writes_nothing(tiny_dirs, tmp_path, marks):
    """The installed package runs from any directory; ``--root`` says where results live."""
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "exp"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--model", str(tiny_dirs["llama"]),
         "--blocks", "all", "--size", "smoke", "--dry-run", "--root", str(root)],
        cwd=elsewhere, env=cli_env(marks, repo_on_path=False), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # "No module named": pip install -e .
    assert "t-fast-a" in proc.stdout and "to run, 0 cached" in proc.stdout
    assert files_under(tmp_path) == [] and read_marks(marks) == []  # not even the cwd


def test_default_root_is_the_repository_experiments_directory_from_any_directory(
        tmp_path, monkeypatch):
    assert PACKAGE_DIR == REPO / "experiments"
    monkeypatch.chdir(REPO)
    assert default_root() == Path("experiments")  # as before: relative to the repository
    monkeypatch.chdir(tmp_path)
    assert default_root() == REPO / "experiments"


def test_the_cli_the_runner_and_the_executors_share_one_task_class():
    assert cli.Task is runner.Task and executors.Task is runner.Task
    assert cli.run_task is executors.run_task is runner.run_task


def test_running_the_cli_as_main_loads_it_once(tiny_dirs, tmp_path, marks):
    """``python -m experiments.run`` runs the CLI as ``__main__``; nothing imports it again
    (a second copy would mean a second ``Task`` class)."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['experiments.run', '--model', {str(tiny_dirs['llama'])!r}, "
        f"'--blocks', 't-fast-a', '--root', {str(tmp_path / 'exp')!r}]\n"
        "try:\n"
        "    runpy.run_module('experiments.run', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "assert 'experiments.run' not in sys.modules, 'the CLI module was imported twice'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(marks),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_marks(marks) == ["t-fast-a 42"]


def test_failing_block_is_recorded_and_the_rest_complete(tiny_dirs, tmp_path, marks, capsys):
    root = tmp_path / "exp"
    model = str(tiny_dirs["llama"])
    code = cli.main(["--model", model, "--blocks", "t-fast-a,t-fail,t-fast-c",
                     "--root", str(root)])
    assert code == 1  # a block failed
    assert read_marks(marks) == ["t-fast-a 42", "t-fail 42", "t-fast-c 42"]
    failed = read_record(root, ResultKey(block="t-fail", model=model, seed=42, size="smoke"))
    assert failed["status"] == "failed" and "boom" in failed["error"] and failed["value"] is None
    for block in ("t-fast-a", "t-fast-c"):
        r = read_record(root, ResultKey(block=block, model=model, seed=42, size="smoke"))
        assert r["status"] == "ok" and r["value"]["double_seed"] == 84
        assert r["value"]["n_examples"] == 1
        host = r["host"]  # where it ran: timings and kernel-dependent numbers belong to it
        assert host["versions"]["torch"] == torch.__version__ and host["cpus"] >= 1
        assert host["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert failed["host"]["cpu"]  # a failed run records it too
    lines = reg.read_lines(root)
    assert sorted((x["block"], x["status"]) for x in lines) == [
        ("t-fail", "failed"), ("t-fast-a", "ok"), ("t-fast-c", "ok")]
    # a rerun reuses the two good results and retries only the failed block
    code = cli.main(["--model", model, "--blocks", "t-fast-a,t-fail,t-fast-c",
                     "--root", str(root)])
    assert code == 1 and read_marks(marks)[3:] == ["t-fail 42"]
    assert "cached" in capsys.readouterr().err


def test_a_block_that_loads_code_outside_its_hashed_closure_fails(tiny_dirs, tmp_path, marks):
    # build_atlas imports the estimating methods by name (tlatlas.atlas.methods), which the
    # static closure does not follow; a block that runs one without importing it must not
    # record a result its code version does not cover
    root = tmp_path / "exp"
    model = str(tiny_dirs["llama"])
    assert cli.main(["--model", model, "--blocks", "t-lazy-verify,t-fast-a",
                     "--root", str(root)]) == 1
    r = read_record(root, ResultKey(block="t-lazy-verify", model=model, seed=42, size="smoke"))
    assert r["status"] == "failed" and r["value"] is None
    assert "tlatlas.atlas.verify" in r["error"] and "outside the import closure" in r["error"]
    ok = read_record(root, ResultKey(block="t-fast-a", model=model, seed=42, size="smoke"))
    assert ok["status"] == "ok"  # what the failed block loaded is not blamed on the next


def test_sigkill_mid_block_then_rerun_finishes_without_duplicates(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = "t-fast-a,t-slow,t-fast-c"
    proc = run_cli(model, root, blocks, marks, TLATLAS_TEST_SLEEP="120")
    deadline = time.time() + 120
    while "t-slow started 42" not in read_marks(marks):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "runner never reached the slow block"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [x["block"] for x in reg.read_lines(root)] == ["t-fast-a"]
    assert not (root / ResultKey(block="t-slow", model=model, seed=42, size="smoke").relpath).exists()

    proc = run_cli(model, root, blocks, marks, TLATLAS_TEST_SLEEP="0")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    lines = reg.read_lines(root)
    assert sorted(x["block"] for x in lines) == ["t-fast-a", "t-fast-c", "t-slow"]
    assert len({x["path"] for x in lines}) == 3 and reg.check(root).ok
    assert read_marks(marks).count("t-fast-a 42") == 1  # not recomputed


def test_rerun_restores_a_registry_line_lost_between_the_two_writes(tiny_dirs, tmp_path, marks):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    assert cli.main(["--model", model, "--blocks", "t-fast-a,t-fast-c", "--root", str(root)]) == 0
    path = reg.registry_path(root)
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n")  # as if killed after writing the result, before its line
    assert cli.main(["--model", model, "--blocks", "t-fast-a,t-fast-c", "--root", str(root)]) == 0
    assert sorted(path.read_text().splitlines()) == sorted([first, second])
    assert len(read_marks(marks)) == 2  # nothing recomputed


def test_changed_suite_hash_or_code_version_invalidates_a_cached_result(
        tiny_dirs, tmp_path, marks, monkeypatch):
    root, model = tmp_path / "exp", str(tiny_dirs["llama"])
    blocks = [b for b in select_blocks("t-fast-a")]

    def actions():
        return [(t.action, t.reason) for t in runner.plan(blocks, [model], [42], "smoke", root)]

    assert cli.main(["--model", model, "--blocks", "t-fast-a", "--root", str(root)]) == 0
    assert actions() == [("cached", "")]
    assert runner.plan(blocks, [model], [42], "smoke", root, force=True)[0].action == "run"
    assert runner.plan(blocks, [model], [137], "smoke", root)[0].action == "run"  # other seed
    with monkeypatch.context() as m:
        m.setattr(runner, "suite_hash", lambda params, seed: "another-suite")
        assert actions() == [("run", "provenance changed (weights, suite, params or code)")]
    with monkeypatch.context() as m:
        m.setattr(runner, "code_version", lambda module=None: "0.1.0+changed")
        assert actions()[0][0] == "run"
    assert actions() == [("cached", "")]


def test_a_block_may_name_its_own_suite_seeds_and_seeds_on_the_command_line_win(
        tiny_dirs, tmp_path):
    from experiments.blocks import all_blocks

    blocks = all_blocks()
    assert runner.block_seeds(blocks["hub-replication"], "small") == runner.DEFAULT_SEEDS["small"]
    for bid in ("lora-strategies", "layer-skip", "steer-controls", "steer-transfer"):
        assert runner.block_seeds(blocks[bid], "small") == (42,)
        assert runner.block_seeds(blocks[bid], "full") == runner.DEFAULT_SEEDS["full"]
    assert runner.block_seeds(blocks["quant-speed"], "full") == (42,)  # not seeded: first only
    model = str(tiny_dirs["llama"])
    chosen = [blocks["hub-replication"], blocks["layer-skip"]]
    planned = runner.plan(chosen, [model], None, "small", tmp_path)
    assert [(t.block.id, t.key.seed) for t in planned] == [
        ("hub-replication", 42), ("hub-replication", 137), ("hub-replication", 256),
        ("layer-skip", 42)]
    forced = runner.plan(chosen, [model], [7, 8], "small", tmp_path)
    assert [t.key.seed for t in forced] == [7, 8, 7, 8]
