"""The atlas methods that estimate (``attribution``, ``verify``), imported when a build
asks for one.

The exact path (:mod:`tlatlas.atlas.sweep`) is what almost every caller runs; the
estimators and the verification are imported from here by module *name*, only when a
build uses them. An experiment block's recorded code version is the hash of its static
import closure (``experiments/provenance.py``), which does not follow a name in a string,
so a change to an estimator or to the stopping rule no longer recomputes every exact
atlas. To keep that check honest, every module loaded here is recorded, and a caller that
hashes a static closure asks :func:`take_loaded` afterwards whether anything it ran lay
outside it (the experiment runner fails such a block).
"""

import importlib
from collections.abc import Callable
from typing import Any

ESTIMATING: dict[str, tuple[str, str]] = {
    "attribution": ("tlatlas.atlas.attribution", "attribution_sums"),
    "verify": ("tlatlas.atlas.verify", "verify_sums"),
}
"""Method -> (module, function) computing its sums."""

_loaded: set[str] = set()


def sums_function(method: str) -> Callable[..., Any]:
    """The function computing ``method``'s sums (its module is imported now and recorded)."""
    module, name = ESTIMATING[method]
    _loaded.add(module)
    return getattr(importlib.import_module(module), name)


def estimate_settings(method: str, estimator: Any, steps: int | None, top_k: int,
                      patience: int | None, screen: int | None = None,
                      rule: str = "patience") -> tuple[Any, Any]:
    """:func:`tlatlas.atlas.verify_spec.estimate_settings`, imported now (and recorded)."""
    _loaded.add("tlatlas.atlas.verify_spec")
    return importlib.import_module("tlatlas.atlas.verify_spec").estimate_settings(
        method, estimator, steps, top_k, patience, screen, rule)


def take_loaded() -> frozenset[str]:
    """Modules :func:`sums_function` loaded since the last call (and forget them)."""
    out = frozenset(_loaded)
    _loaded.clear()
    return out
