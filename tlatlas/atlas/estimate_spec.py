"""What an estimate of the atlas is: the estimator's name, its steps, and its checks.

Kept apart from the estimators' computation (:mod:`tlatlas.atlas.estimators`) so that code
which only *describes* an estimate (the pipeline's arguments, an atlas file's metadata)
does not import the computation: an experiment block's recorded code version is the hash
of what it imports (``experiments/provenance.py``), and the exact atlas must not be
recomputed when an estimator changes.
"""

from dataclasses import dataclass
from typing import Any, Literal

from tlatlas.errors import InvalidInputError

EstimatorMethod = Literal["ig", "ig_joint", "graddrop", "bound"]
ESTIMATOR_METHODS: tuple[EstimatorMethod, ...] = ("ig", "ig_joint", "graddrop", "bound")
MAGNITUDE_METHODS = ("graddrop", "bound")
"""Estimators whose ``dlogp`` slot holds a magnitude (no sign), not a signed estimate."""


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """Which estimate of the atlas, and with how many points on the path."""

    method: EstimatorMethod = "ig_joint"
    """``ig`` (each node's own path), ``ig_joint`` (one shared path), ``graddrop`` or
    ``bound`` (see :mod:`tlatlas.atlas.estimators`)."""
    steps: int = 1
    """Points on the path (midpoint rule); 1 is the first-order estimate (alpha = 0)."""
    max_rows: int = 64
    """Rows per forward+backward (points and nodes are stacked along the batch axis)."""

    def __post_init__(self) -> None:
        if self.method not in ESTIMATOR_METHODS:
            raise InvalidInputError(f"unknown estimator {self.method!r}; choose one of "
                                    f"{', '.join(ESTIMATOR_METHODS)}")
        if self.steps < 1:
            raise InvalidInputError(f"steps must be >= 1, got {self.steps}")
        if self.method in MAGNITUDE_METHODS and self.steps != 1:
            raise InvalidInputError(f"{self.method} is a first-order score: steps must be 1")
        if self.max_rows < 1:
            raise InvalidInputError("max_rows must be >= 1")

    @property
    def alphas(self) -> tuple[float, ...]:
        """Where on the path ``a + alpha (r - a)`` the gradient is taken."""
        if self.steps == 1:
            return (0.0,)
        return tuple((i + 0.5) / self.steps for i in range(self.steps))

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics it estimates; the other slots of its maps are NaN."""
        return ("dlogp",) if self.steps == 1 else ("kl", "dlogp")

    @property
    def name(self) -> str:
        """``first_order``, ``graddrop``, ``bound``, ``ig`` or ``ig_joint``."""
        if self.method in MAGNITUDE_METHODS:
            return self.method
        return "first_order" if self.steps == 1 else self.method

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimator":
        return cls(method=d["method"], steps=int(d["steps"]))


FIRST_ORDER = Estimator(method="ig_joint", steps=1)
"""The first-order estimate (attribution patching)."""
