"""Statistics over effects: ranks, rank correlation, and bootstrap intervals.

Every interval tlatlas reports is a seeded percentile bootstrap over *examples*, resampled
within each task family (stratified: every replicate keeps each family's size), so a
family-weighted statistic stays family-weighted. Comparisons of two conditions on the
same examples resample the pairs (:func:`paired_difference`). Atlas-level statistics
(layer-effect intervals, P(hub = L), the hub's margin, family agreement) live in
:mod:`tlatlas.atlas.hubs`, built on these functions.
"""

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas.errors import InvalidInputError


def average_ranks(x: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two same-shape tensors, flattened.

    Pairs where either value is NaN (or infinite) are ignored; ties get average ranks.
    Returns NaN when either side is constant over the kept pairs.

    Raises:
        ValueError: the shapes differ or fewer than two pairs remain.
    """
    if a.shape != b.shape:
        raise InvalidInputError(f"spearman needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.detach().flatten().double().cpu(), b.detach().flatten().double().cpu()
    keep = torch.isfinite(x) & torch.isfinite(y)
    if int(keep.sum()) < 2:
        raise InvalidInputError("spearman needs at least two pairs without NaN")
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    if float(denom) == 0.0:
        return float("nan")
    return float((rx * ry).sum() / denom)


# --------------------------------------------------------------------------- bootstrap

DEFAULT_REPLICATES = 1000
"""Bootstrap replicates unless a caller asks otherwise."""
CONFIDENCE = 0.95
"""Width of every interval tlatlas reports."""


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval."""

    estimate: float
    """The statistic on the data as observed."""
    ci_low: float
    """Lower end of the interval."""
    ci_high: float
    """Upper end of the interval."""
    n: int
    """Observations it rests on (examples, or paired examples)."""
    confidence: float = CONFIDENCE
    """Nominal coverage of the interval."""

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci": [self.ci_low, self.ci_high], "n": self.n,
                "confidence": self.confidence}


def percentile_interval(replicates: Float[Tensor, "rep ..."], *,
                        confidence: float = CONFIDENCE
                        ) -> tuple[Float[Tensor, "..."], Float[Tensor, "..."]]:
    """Elementwise percentile interval over the replicate axis (NaN replicates ignored)."""
    alpha = (1 - confidence) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=replicates.dtype)
    lo_hi = torch.nanquantile(replicates, q, dim=0)
    return lo_hi[0], lo_hi[1]


def stratified_indices(strata: Int[Tensor, " n"], replicates: int, generator: torch.Generator
                       ) -> Int[Tensor, "rep n"]:
    """Bootstrap draws of row indices, resampling within each stratum (each keeps its size).

    Row ``j`` of a replicate is a draw from the stratum of row ``j``, so any per-stratum
    statistic computed on the drawn rows is a bootstrap replicate of that statistic.
    """
    n = strata.shape[0]
    out = torch.empty(replicates, n, dtype=torch.long)
    for value in torch.unique(strata):
        members = torch.nonzero(strata == value)[:, 0]
        draws = torch.randint(0, members.numel(), (replicates, members.numel()),
                              generator=generator)
        out[:, members] = members[draws]
    return out


def bootstrap_mean(values: Float[Tensor, " n"], *, strata: Int[Tensor, " n"] | None = None,
                   replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                   confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` with a (stratified) percentile-bootstrap interval."""
    v = values.double().flatten()
    if v.numel() < 1:
        raise InvalidInputError("a bootstrap needs at least one value")
    strata = torch.zeros(v.numel(), dtype=torch.long) if strata is None else strata
    gen = torch.Generator().manual_seed(seed)
    reps = v[stratified_indices(strata, replicates, gen)].mean(1)
    lo, hi = percentile_interval(reps[:, None], confidence=confidence)
    return Interval(estimate=float(v.mean()), ci_low=float(lo[0]), ci_high=float(hi[0]),
                    n=int(v.numel()), confidence=confidence)


def paired_difference(a: Float[Tensor, "..."], b: Float[Tensor, "..."], *,
                      strata: Int[Tensor, "..."] | None = None,
                      replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``a - b`` over shared observations (same examples, seeds x prompts, ...),
    with a paired bootstrap interval: pairs are resampled together, so what the two
    conditions share cancels. Pairs with a NaN on either side are dropped."""
    if a.shape != b.shape:
        raise InvalidInputError(f"paired values need one shape, got {tuple(a.shape)} and "
                                f"{tuple(b.shape)}")
    d = (a.double() - b.double()).flatten()
    keep = torch.isfinite(d)
    if strata is not None:
        strata = strata.flatten()[keep]
    return bootstrap_mean(d[keep], strata=strata, replicates=replicates, seed=seed,
                          confidence=confidence)


def verdict(interval: Interval, *, smoke: bool = False) -> str:
    """``supported`` when the interval excludes 0 in the claimed direction (a positive
    estimate), ``contradicted`` when it excludes 0 the other way, else ``inconclusive``.
    Smoke-size results are never evidence."""
    if smoke:
        return "smoke: not evidence"
    if interval.ci_low > 0:
        return "supported"
    if interval.ci_high < 0:
        return "contradicted"
    return "inconclusive"
