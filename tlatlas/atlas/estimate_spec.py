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

EstimatorMethod = Literal["ig", "ig_joint", "graddrop", "bound", "fisher", "fisher_bound"]
ESTIMATOR_METHODS: tuple[EstimatorMethod, ...] = ("ig", "ig_joint", "graddrop", "bound",
                                                  "fisher", "fisher_bound")
MAGNITUDE_METHODS = ("graddrop", "bound")
"""Estimators whose ``dlogp`` slot holds a magnitude (no sign), not a signed estimate."""
FISHER_METHODS = ("fisher", "fisher_bound")
"""Second-order estimates of KL at the clean point; they fill the ``kl`` slot only."""
ONE_POINT_METHODS = (*MAGNITUDE_METHODS, *FISHER_METHODS)
"""Estimators taken at the clean point alone (``steps`` must be 1)."""


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """Which estimate of the atlas, and with how many points on the path."""

    method: EstimatorMethod = "ig_joint"
    """``ig`` (each node's own path), ``ig_joint`` (one shared path), ``graddrop``,
    ``bound``, ``fisher`` or ``fisher_bound`` (see :mod:`tlatlas.atlas.estimators`)."""
    steps: int = 1
    """Points on the path (midpoint rule); 1 is the first-order estimate (alpha = 0)."""
    max_rows: int = 64
    """Rows per forward+backward (points and nodes are stacked along the batch axis)."""
    outcomes: int = 8
    """``fisher`` / ``fisher_bound``: the clean distribution's most likely tokens kept as
    outcomes of their own (the rest of the vocabulary is one more); a backward each."""

    def __post_init__(self) -> None:
        if self.method not in ESTIMATOR_METHODS:
            raise InvalidInputError(f"unknown estimator {self.method!r}; choose one of "
                                    f"{', '.join(ESTIMATOR_METHODS)}")
        if self.steps < 1:
            raise InvalidInputError(f"steps must be >= 1, got {self.steps}")
        if self.method in ONE_POINT_METHODS and self.steps != 1:
            raise InvalidInputError(f"{self.method} is taken at the clean point alone: "
                                    "steps must be 1")
        if self.max_rows < 1:
            raise InvalidInputError("max_rows must be >= 1")
        if self.outcomes < 1:
            raise InvalidInputError(f"outcomes must be >= 1, got {self.outcomes}")

    @property
    def alphas(self) -> tuple[float, ...]:
        """Where on the path ``a + alpha (r - a)`` the gradient is taken."""
        if self.steps == 1:
            return (0.0,)
        return tuple((i + 0.5) / self.steps for i in range(self.steps))

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics it estimates; the other slots of its maps are NaN."""
        if self.method in FISHER_METHODS:
            return ("kl",)
        return ("dlogp",) if self.steps == 1 else ("kl", "dlogp")

    @property
    def name(self) -> str:
        """``first_order``, ``graddrop``, ``bound``, ``fisher``, ``fisher_bound``, ``ig`` or
        ``ig_joint``."""
        if self.method in ONE_POINT_METHODS:
            return self.method
        return "first_order" if self.steps == 1 else self.method

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "steps": self.steps, "name": self.name}
        if self.method in FISHER_METHODS:
            out["outcomes"] = self.outcomes
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimator":
        return cls(method=d["method"], steps=int(d.get("steps", 1)),
                   outcomes=int(d.get("outcomes", cls.outcomes)))


FIRST_ORDER = Estimator(method="ig_joint", steps=1)
"""The first-order estimate (attribution patching)."""


def shown_metric(method: str, estimate: dict[str, Any] | None, asked: str = "kl") -> str:
    """The metric an atlas's tables and maps show when ``asked`` is asked for: on an
    attribution atlas KL only where its estimator estimates it (a path of two or more
    points, ``fisher``, ``fisher_bound``), else ``dlogp``. ``estimate`` is the atlas
    metadata's record (its ``estimator`` is :meth:`Estimator.to_dict`)."""
    if method != "attribution" or asked != "kl":
        return asked
    est = (estimate or {}).get("estimator")
    return "kl" if est and "kl" in Estimator.from_dict(est).metrics else "dlogp"
