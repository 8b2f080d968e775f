"""Fixtures of the orchestrator's tests: the ``t-*`` test blocks and the marks file.

pytest puts ``tests/`` on ``sys.path`` (``tests/conftest.py`` is not in a package), where
this directory, ``tests/experiments/``, would be found as a namespace package named
``experiments`` before the installed (editable) package, whose finder comes after the
path search. So the real package is imported here first, without ``tests/`` on the path.
"""

import importlib
import sys
from pathlib import Path

import pytest
from experiment_support import PLUGINS, TEST_BLOCKS

TESTS = Path(__file__).resolve().parents[1]


def _import_installed_experiments() -> None:
    loaded = sys.modules.get("experiments")
    if loaded is not None and getattr(loaded, "__file__", None):
        return  # the real package (a namespace package has no __file__)
    sys.modules.pop("experiments", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS]
    try:
        importlib.import_module("experiments")
    except ImportError as err:  # pragma: no cover - a broken install
        raise ImportError("the experiments package is not installed: pip install -e .") from err
    finally:
        sys.path[:] = saved


_import_installed_experiments()


@pytest.fixture(autouse=True)
def _test_blocks(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    importlib.import_module(TEST_BLOCKS)  # registers the t-* blocks once per process


@pytest.fixture
def marks(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "marks.txt"
    monkeypatch.setenv("TLATLAS_TEST_MARKS", str(path))
    return path
