"""How a steering sweep is run: the scale grids of the two regimes, the controls, the split.

Two regimes (issue 15):

- **linear** (the default grid, :data:`LINEAR_SCALES`): |s| ≤ 1 with both signs, where a
  direction's effect on the answer's log-probability is still close to linear in s and a
  random direction of the same norm moves the next-token distribution little, so the
  vector and its controls can be told apart and per-example slopes are defined;
- **saturation** (:data:`SATURATION_SCALES`): ±2 and ±4, where random directions already
  move the distribution by several nats; kept for the origin report's grid, never as the
  place to read a direction's specificity or an amplification ratio.

Scale 0 is in both grids: it is the clean run itself, so every effect there is exactly 0.
"""

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from tlatlas.errors import InvalidInputError, TlatlasError
from tlatlas.io import known_fields

CONFIG_KIND = "tlatlas.steering_config"
CONFIG_FORMAT_VERSION = 2
"""2: regimes, partition control, held-out split (1: one scale grid, random control only)."""
LINEAR_SCALES = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
"""The default grid: the linear regime, both signs."""
SATURATION_SCALES = (-4.0, -2.0, 0.0, 2.0, 4.0)
"""The saturation grid (the origin report's -4..4 range, thinned)."""
REGIME_SCALES = {"linear": LINEAR_SCALES, "saturation": SATURATION_SCALES}
"""Default grid of each regime."""
DEFAULT_SCALES = LINEAR_SCALES
"""Scales of a default :class:`SteeringConfig`."""
LINEAR_MAX = 1.0
"""Largest |s| treated as the linear regime (slopes are fitted over 0 < |s| ≤ this)."""

Regime = Literal["linear", "saturation"]


def parse_scales(text: str) -> tuple[float, ...]:
    """``lo:hi:n`` (n evenly spaced, ends included) or a comma list: ``-4:4:9``, ``-2,0,2``."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            n_i = int(n)
            if n_i < 1:
                raise ValueError
            if n_i == 1:
                return (float(lo),)
            return tuple(round(float(v), 6) for v in torch.linspace(float(lo), float(hi), n_i).tolist())
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TlatlasError(f"scales {text!r}: want lo:hi:n (e.g. -4:4:9) or a list (-2,0,2)") from None


@dataclass(frozen=True, kw_only=True)
class SteeringConfig:
    """How a steering sweep is run (vectors, controls, split, grid)."""

    regime: Regime = "linear"
    """Which default grid ``scales`` takes when not given: ``linear`` (|s| ≤ 1, both
    signs) or ``saturation`` (±2, ±4). Tables label each scale by |s| ≤ ``linear_max``,
    whatever the grid."""
    scales: tuple[float, ...] | None = None
    """Multiples s of the layer's typical residual norm; the added vector is s·v·n_L
    (default: the regime's grid)."""
    linear_max: float = LINEAR_MAX
    """Largest |s| of the linear regime: per-example slopes are fitted over the scales with
    0 < |s| ≤ this (over every nonzero scale, flagged, when the grid has none)."""
    layers: tuple[int, ...] | None = None
    """Layers to steer (default: every layer the vectors cover, i.e. all of them)."""
    random_draws: int = 8
    """K norm-matched isotropic random directions per layer for the random control (0: none)."""
    partition_draws: int = 4
    """M partition-control directions per family and layer: the difference of means between
    two random halves of the family's training prompts, unit-normalised and norm-matched
    (0: no partition control)."""
    random_seed: int = 0
    """Seed of the random directions and of the partitions (the same for every precision)."""
    heldout_fraction: float = 0.5
    """Share of each family's examples held out for scoring; the vectors and the partition
    control are estimated on the rest (see :func:`tlatlas.steering.heldout.heldout_split`)."""
    split_seed: int = 0
    """Seed of the train / held-out split."""
    batch_size: int = 8
    """Examples per clean forward."""
    max_rows: int = 256
    """At most this many steered rows (scale x direction x example) per forward."""
    method: Literal["exact", "naive"] = "exact"
    """``exact``: resume at L + 1 from the cached clean residual; ``naive``: full hooked forwards."""

    def __post_init__(self) -> None:
        if self.regime not in REGIME_SCALES:
            raise InvalidInputError(f"unknown regime {self.regime!r}; choose linear or saturation")
        if self.scales is None:
            object.__setattr__(self, "scales", REGIME_SCALES[self.regime])
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        if not self.scales or not all(math.isfinite(s) for s in self.scales):
            raise InvalidInputError(f"scales must be a non-empty list of finite numbers, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise InvalidInputError(f"scales repeat: {self.scales}")
        if not (math.isfinite(self.linear_max) and self.linear_max > 0):
            raise InvalidInputError(f"linear_max must be > 0, got {self.linear_max}")
        if self.random_draws < 0 or self.partition_draws < 0:
            raise InvalidInputError("random_draws and partition_draws must be >= 0")
        if not 0 < self.heldout_fraction < 1:
            raise InvalidInputError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.batch_size < 1 or self.max_rows < 1:
            raise InvalidInputError("batch_size and max_rows must be >= 1")
        if self.method not in ("exact", "naive"):
            raise InvalidInputError(f"unknown method {self.method!r}; choose exact or naive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return {"kind": CONFIG_KIND, "format_version": CONFIG_FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SteeringConfig":
        """A config of format 2, or of format 1 (its grid kept; no partition control, the
        random draws it had; its regime read off the grid)."""
        if d.get("kind", CONFIG_KIND) != CONFIG_KIND:
            raise InvalidInputError(f"not a steering config: kind {d.get('kind')!r}")
        kw = known_fields(cls, d)
        if kw.get("scales") is not None:
            kw["scales"] = tuple(float(s) for s in kw["scales"])
        if kw.get("layers") is not None:
            kw["layers"] = tuple(kw["layers"])
        if d.get("format_version", 1) == 1:
            kw.setdefault("partition_draws", 0)
            kw.setdefault("random_draws", 4)  # format 1's default
            big = max((abs(s) for s in kw.get("scales", ())), default=0.0) > LINEAR_MAX
            kw.setdefault("regime", "saturation" if big else "linear")
        return cls(**kw)


def linear_mask(scales: tuple[float, ...], linear_max: float = LINEAR_MAX) -> torch.Tensor:
    """Which scales are in the linear regime: 0 < |s| ≤ ``linear_max`` (bool, one per scale)."""
    s = torch.tensor(scales, dtype=torch.float64)
    return (s != 0) & (s.abs() <= linear_max + 1e-12)


__all__ = ["SteeringConfig", "parse_scales", "linear_mask", "DEFAULT_SCALES", "LINEAR_SCALES",
           "SATURATION_SCALES", "REGIME_SCALES", "LINEAR_MAX", "CONFIG_KIND",
           "CONFIG_FORMAT_VERSION"]
