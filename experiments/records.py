"""Result records (DESIGN §6): one JSON file per block × model × seed, written atomically.

A record is valid for a rerun when the block, model weights, seed, size, parameters,
suite hash and code version all match; ``--force`` recomputes regardless. The code version
of a block hashes the source it depends on: its module's import closure and the runner's
context (:mod:`experiments.provenance`), so a change to the code that computed a number
invalidates it, and a change elsewhere does not.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tlatlas
from tlatlas.io import atomic_write

RESULT_KIND = "tlatlas.experiment_result"
RESULT_FORMAT_VERSION = 1
RESULTS_DIR = "results"
STATUSES = ("ok", "failed")


CONTEXT_MODULES = ("experiments.context", "experiments.records")
"""Modules every block's result also depends on (how atlases are built and cached)."""


@lru_cache(maxsize=None)
def code_version(module: str | None = None) -> str:
    """``<package version>+<sha256 of the source the block in ``module`` depends on>``.

    Without ``module``: the hash of every source file of ``tlatlas``, ``bridges`` and
    ``experiments`` (what any block could depend on)."""
    from experiments.provenance import source_hash

    if module is None:
        import bridges
        import experiments

        digest = hashlib.sha256()
        for pkg in (tlatlas, bridges, experiments):
            root = Path(pkg.__file__).parent
            for path in sorted(root.rglob("*.py")):
                digest.update(str(path.relative_to(root.parent)).encode())
                digest.update(path.read_bytes())
        return f"{tlatlas.__version__}+{digest.hexdigest()[:12]}"
    return f"{tlatlas.__version__}+{source_hash((module, *CONTEXT_MODULES))}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "model"


@dataclass(frozen=True, kw_only=True)
class ResultKey:
    """Which result a record is."""

    block: str
    """Block id."""
    model: str
    """Model name as given (``A+B`` for two-model blocks)."""
    seed: int
    """Suite seed."""
    size: str
    """``smoke``, ``small`` or ``full``."""

    @property
    def relpath(self) -> str:
        """Path under the experiments root."""
        return f"{RESULTS_DIR}/{_slug(self.model)}/{self.block}/{self.size}-seed{self.seed}.json"

    def label(self) -> str:
        return f"{self.block} · {self.model} · seed {self.seed} · {self.size}"


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """What a cached result must match to be reused."""

    weights_sha256: tuple[str, ...]
    """sha256 of each model's weights, in model order."""
    suite_hash: str
    """Content hash of the suite(s) the block scores."""
    code_version: str
    """:func:`code_version` when the result was computed."""
    params: dict[str, Any]
    """The block's parameters at this size."""

    def to_dict(self) -> dict[str, Any]:
        return {"weights_sha256": list(self.weights_sha256), "suite_hash": self.suite_hash,
                "code_version": self.code_version, "params": self.params}


def make_record(key: ResultKey, prov: Provenance, *, status: str, value: dict | None,
                error: str | None, started: float, finished: float, command: str,
                fingerprints: list[dict] | None) -> dict[str, Any]:
    """The JSON record of one finished (or failed) block run."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    return {
        "kind": RESULT_KIND, "format_version": RESULT_FORMAT_VERSION,
        "block": key.block, "model": key.model, "seed": key.seed, "size": key.size,
        "status": status, **prov.to_dict(), "fingerprints": fingerprints,
        "started": started, "finished": finished, "wall_s": round(finished - started, 3),
        "command": command, "value": value, "error": error,
    }


def write_record(root: Path, key: ResultKey, record: dict) -> Path:
    """Write ``record`` atomically to its path under ``root``; returns the path."""
    path = Path(root) / key.relpath
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True)
    atomic_write(path, lambda p: Path(p).write_text(text))
    return path


def read_record(root: Path, key: ResultKey) -> dict | None:
    """The record at ``key``'s path, or None when absent or unreadable (then it is redone)."""
    path = Path(root) / key.relpath
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("kind") == RESULT_KIND else None


def reusable(record: dict | None, prov: Provenance) -> bool:
    """True when ``record`` finished successfully under the same provenance."""
    return (record is not None and record.get("status") == "ok"
            and record.get("format_version") == RESULT_FORMAT_VERSION
            and {k: record.get(k) for k in prov.to_dict()} == json.loads(json.dumps(prov.to_dict())))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
