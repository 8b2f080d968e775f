"""The registry's guarantees: concurrent writers, a torn last line, and the registry and
claims command lines run from any directory with ``--root``."""

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest
from experiment_support import REPO, files_under

from experiments import registry as reg


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


def test_registry_and_claims_clis_take_root_from_any_directory(tmp_path):
    root, elsewhere = tmp_path / "exp", tmp_path / "elsewhere"
    elsewhere.mkdir()
    reg.append_line(root, {"path": "results/a.json", "sha256": "a"})
    check = subprocess.run([sys.executable, "-m", "experiments.registry", "check", "--root",
                            str(root)], cwd=elsewhere, capture_output=True, text=True)
    assert check.returncode == 0 and "1 complete lines" in check.stdout, check.stderr
    claims = subprocess.run([sys.executable, "-m", "experiments.claims", "--root", str(root)],
                            cwd=elsewhere, capture_output=True, text=True)
    assert claims.returncode == 0, claims.stderr
    assert sorted(p.name for p in root.iterdir()) == [
        "claims.md", "findings.md", "gems.md", "registry.jsonl", "registry.jsonl.lock",
        "studies-results.md", "threats.md"]
    assert f"python -m experiments.claims --root {root}" in (root / "claims.md").read_text()
    assert files_under(elsewhere) == []


def test_a_blocks_code_version_hashes_what_it_imports_and_nothing_else():
    from pathlib import Path

    import experiments
    from experiments.provenance import closure
    from experiments.records import CONTEXT_MODULES, code_version

    repo = Path(experiments.__file__).resolve().parents[1]

    def files(module):
        return {p.resolve().relative_to(repo).as_posix()
                for p in closure((module, *CONTEXT_MODULES))}

    atlas = files("experiments.blocks.atlas_blocks")
    assert "tlatlas/atlas/hubs.py" in atlas and "tlatlas/atlas/sweep.py" in atlas
    assert "tlatlas/models/forward.py" in atlas  # through the lazy imports of the sweep
    assert not any(p.startswith(("tlatlas/cli/", "tlatlas/viz/", "tlatlas/steering/"))
                   for p in atlas)
    assert "experiments/blocks/lora_blocks.py" not in atlas  # a sibling block
    steering = files("experiments.blocks.steering_blocks")
    assert "tlatlas/steering/sweep.py" in steering
    assert code_version("experiments.blocks.atlas_blocks") != code_version(
        "experiments.blocks.steering_blocks")
