"""Helpers shared by the orchestrator's tests (the marks file, the CLI in a subprocess)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "tests" / "plugins"
TEST_BLOCKS = "experiment_test_blocks"


def read_marks(path: Path) -> list[str]:
    """The lines the test blocks appended to the marks file (one per execution)."""
    return path.read_text().splitlines() if path.exists() else []


def files_under(root: Path) -> list[Path]:
    """Every file under ``root`` (none when it does not exist)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def cli_env(marks: Path, *, repo_on_path: bool = True, **extra) -> dict:
    """The environment of a CLI subprocess with the test blocks loaded as plugins.

    ``repo_on_path=False`` leaves the repository off ``PYTHONPATH``: ``experiments`` must
    then come from the installed package.
    """
    paths = ([str(REPO)] if repo_on_path else []) + [str(PLUGINS)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths),
           "TLATLAS_EXPERIMENT_PLUGINS": TEST_BLOCKS, "TLATLAS_TEST_MARKS": str(marks),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def run_cli(model, root, blocks, marks, **env) -> subprocess.Popen:
    """``python -m experiments.run`` in the repository, in the background."""
    cmd = [sys.executable, "-m", "experiments.run", "--model", str(model), "--blocks", blocks,
           "--root", str(root)]
    return subprocess.Popen(cmd, cwd=REPO, env=cli_env(marks, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
