"""Per-example steerability, specificity over the controls, amplification and drift, with
intervals (issue 15, items 4-5; DESIGN §10).

**Slope.** For example e, layer L and direction v, g_e(s) = log p_steered(answer) -
log p_clean(answer) = -dlogp_e(s) (nats). Its slope is the least-squares fit **through
the origin** over the fit scales: b_e = Σ_s s·g_e(s) / Σ_s s². The origin is exact, not
assumed: s = 0 is the clean run, g_e(0) = 0. The fit scales are the linear regime
0 < |s| ≤ ``linear_max`` (both signs); a grid without any (saturation only) is fitted
over all its nonzero scales and flagged ``linear=False``. b_e > 0: adding the family's
direction raises the family's answer; b_e < 0 is "steered the wrong way".

**Specificity.** A slope is only evidence of a family direction when it exceeds the
controls': per example, b_e(vector) - mean over draws of b_e(control), for the random
and for the partition control. Its mean (family-weighted) has a percentile-bootstrap
interval that resamples examples within families *and* control draws, so the draw-to-
draw spread of the controls is in the interval. The **most steerable layer** maximises
the smaller of the two specificities (the conservative one), never the raw KL.

**Amplification** at one scale (so one sign): family-weighted mean KL of a precision
row / that of the reference row, for the vector and for each control, with an interval
resampling examples (paired: the same examples in numerator and denominator) and draws.
**Drift**: a row's clean next-token KL from the reference and top-1 agreement.

All statistics are family-weighted (each family counts equally, as in
:meth:`SteeringResult.kl`); bootstrap replicates are computed at once as weight
matrices, seeded.
"""

from dataclasses import dataclass
from functools import lru_cache

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.errors import InvalidInputError
from tlatlas.stats import (
    CONFIDENCE,
    DEFAULT_REPLICATES,
    Interval,
    percentile_interval,
    stratified_indices,
)
from tlatlas.steering.config import LINEAR_MAX, linear_mask
from tlatlas.steering.result import SteeringResult

SLOPE_FIT = ("slope of log p_steered(answer) - log p_clean(answer) against s, least squares "
             "through the origin (s = 0 is the clean run) over the fit scales")


# --------------------------------------------------------------------------- pure tensors


def fit_scales(scales: tuple[float, ...], linear_max: float = LINEAR_MAX
               ) -> tuple[Bool[Tensor, " scale"], bool]:
    """The scales a slope is fitted over, and whether they are the linear regime."""
    mask = linear_mask(scales, linear_max)
    if bool(mask.any()):
        return mask, True
    return torch.tensor(scales) != 0, False


def example_slopes(dlogp: Float[Tensor, "*lead scale example"], scales: Float[Tensor, " scale"],
                   mask: Bool[Tensor, " scale"]) -> Float[Tensor, "*lead example"]:
    """Per-example slope of -dlogp against s over the masked scales, through the origin."""
    s = torch.where(mask, scales.double(), 0.0)
    denom = s.square().sum()
    if float(denom) == 0:
        raise InvalidInputError("no nonzero scale to fit a slope over")
    return torch.einsum("...se,s->...e", -dlogp.double(), s) / denom


def family_weights(strata: Int[Tensor, " example"]) -> Float[Tensor, " example"]:
    """1 / (number of families x the example's family size): weights of a family-weighted mean."""
    _, inverse, counts = torch.unique(strata, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts.double()[inverse])


def example_replicates(strata: Int[Tensor, " example"], replicates: int, seed: int
                       ) -> Float[Tensor, "rep example"]:
    """Bootstrap replicates as weights: row r times a per-example vector is replicate r of
    the family-weighted mean (examples resampled within their family). The same strata,
    count and seed give the same weights (cached: every table of a result reuses them)."""
    return _replicates(tuple(strata.tolist()), replicates, seed).clone()


@lru_cache(maxsize=8)  # a few suites at a time; each entry is replicates x examples fp64
def _replicates(strata: tuple[int, ...], replicates: int, seed: int) -> Tensor:
    s = torch.tensor(strata, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    idx = stratified_indices(s, replicates, gen)
    counts = torch.zeros(replicates, s.numel(), dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts * family_weights(s)[None]


def draw_replicates(draws: int, replicates: int, seed: int) -> Float[Tensor, "rep draw"]:
    """Bootstrap replicates of a mean over control draws, as weights (rows sum to 1)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    idx = torch.randint(0, draws, (replicates, draws), generator=gen)
    counts = torch.zeros(replicates, draws, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts / draws


def _interval(estimate: float, reps: Float[Tensor, " rep"], n: int, confidence: float) -> Interval:
    lo, hi = percentile_interval(reps[:, None], confidence=confidence)
    return Interval(estimate=estimate, ci_low=float(lo[0]), ci_high=float(hi[0]), n=n,
                    confidence=confidence)


def _intervals(estimates: Float[Tensor, " cell"], reps: Float[Tensor, "rep cell"], n: int,
               confidence: float) -> list[Interval]:
    lo, hi = percentile_interval(reps, confidence=confidence)
    return [Interval(estimate=float(e), ci_low=float(a), ci_high=float(b), n=n,
                     confidence=confidence) for e, a, b in zip(estimates, lo, hi, strict=True)]


def _mean_intervals(values: Float[Tensor, "cell example"], strata: Int[Tensor, " example"],
                    w: Float[Tensor, "rep example"], confidence: float) -> list[Interval]:
    v = values.double()
    return _intervals(v @ family_weights(strata), w @ v.T, v.shape[-1], confidence)


def _difference_intervals(vector: Float[Tensor, "cell example"],
                          control: Float[Tensor, "cell draw example"],
                          strata: Int[Tensor, " example"], w: Float[Tensor, "rep example"],
                          dw: Float[Tensor, "rep draw"], confidence: float) -> list[Interval]:
    v, c = vector.double(), control.double()
    reps = w @ v.T - torch.einsum("re,cde,rd->rc", w, c, dw)
    estimates = (v - c.mean(1)) @ family_weights(strata)
    return _intervals(estimates, reps, v.shape[-1], confidence)


def weighted_mean_interval(values: Float[Tensor, " example"], strata: Int[Tensor, " example"], *,
                           replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                           confidence: float = CONFIDENCE) -> Interval:
    """Family-weighted mean of per-example values with its stratified bootstrap interval."""
    w = example_replicates(strata, replicates, seed)
    return _mean_intervals(values[None], strata, w, confidence)[0]


def control_difference(vector: Float[Tensor, " example"], control: Float[Tensor, "draw example"],
                       strata: Int[Tensor, " example"], *, replicates: int = DEFAULT_REPLICATES,
                       seed: int = 0, confidence: float = CONFIDENCE) -> Interval:
    """Family-weighted mean of vector - (mean over draws of control), paired over examples;
    the interval resamples examples (within families) and draws."""
    w = example_replicates(strata, replicates, seed)
    dw = draw_replicates(control.shape[0], replicates, seed)
    return _difference_intervals(vector[None], control[None], strata, w, dw, confidence)[0]


# --------------------------------------------------------------------------- on a result


@dataclass(frozen=True, kw_only=True)
class SlopeStats:
    """The distribution of per-example slopes of one direction at one layer."""

    mean: Interval
    """Family-weighted mean slope (nats per unit s) with its bootstrap interval; n examples."""
    median: float
    """Median slope over examples."""
    q25: float
    """First quartile of the slopes."""
    q75: float
    """Third quartile of the slopes."""
    wrong_way: Interval
    """Family-weighted share of examples with slope < 0 (steered away from the answer)."""


@dataclass(frozen=True, kw_only=True)
class ControlSlopes:
    """A control's mean slope and its spread over draws."""

    mean: float
    """Mean over draws of the family-weighted mean slope."""
    std: float
    """Standard deviation over draws of that mean (0 for one draw)."""
    draws: int
    """Number of draws."""


@dataclass(frozen=True, kw_only=True)
class LayerSteerability:
    """Slopes of the vector and its controls at one layer, and the vector's specificity."""

    layer: int
    """Steered layer."""
    vector: SlopeStats
    """The vector's per-example slopes."""
    random: ControlSlopes | None
    """The random control's slopes (None without random draws)."""
    partition: ControlSlopes | None
    """The partition control's slopes (None without partition draws)."""
    over_random: Interval | None
    """Mean of (vector slope - mean random slope) per example, interval over examples and draws."""
    over_partition: Interval | None
    """Mean of (vector slope - mean partition slope) per example, likewise."""
    fit_scales: tuple[float, ...]
    """Scales the slopes were fitted over."""
    linear: bool
    """Whether those are the linear regime (False: a saturation-only grid)."""

    @property
    def specificity(self) -> float:
        """The smaller of the two specificities (the vector's mean slope if no control)."""
        est = [i.estimate for i in (self.over_random, self.over_partition) if i is not None]
        return min(est) if est else self.vector.mean.estimate


def _linear_max(result: SteeringResult) -> float:
    return float(result.meta.config.get("linear_max", LINEAR_MAX))


def _control(slopes: Float[Tensor, "draw example"], w: Float[Tensor, " example"]) -> ControlSlopes:
    per_draw = slopes @ w
    std = float(per_draw.std()) if per_draw.numel() > 1 else 0.0
    return ControlSlopes(mean=float(per_draw.mean()), std=std, draws=int(per_draw.numel()))


def layer_steerability(result: SteeringResult, precision: str | None = None, *,
                       family: str | None = None, replicates: int = DEFAULT_REPLICATES,
                       seed: int = 0, confidence: float = CONFIDENCE) -> list[LayerSteerability]:
    """Slopes and specificity at every layer of one precision row (default the reference),
    over all scored examples or one family's."""
    p = result.row(precision)
    fam = result.example_values("family")
    keep = torch.ones_like(fam, dtype=torch.bool) if family is None else \
        fam == result.families.index(family)
    if not bool(keep.any()):
        raise InvalidInputError(f"no scored examples of family {family}")
    strata = fam[keep]
    w0 = family_weights(strata)
    w = example_replicates(strata, replicates, seed)
    mask, linear = fit_scales(result.scales, _linear_max(result))
    scales = torch.tensor(result.scales)
    vec = example_slopes(result.example_values("dlogp")[p][..., keep], scales, mask)  # [l e]
    means = _mean_intervals(vec, strata, w, confidence)
    wrong = _mean_intervals((vec < 0).double(), strata, w, confidence)
    quart = torch.quantile(vec, torch.tensor([0.25, 0.5, 0.75], dtype=vec.dtype), dim=-1)  # [3 l]
    ctrl: dict[str, tuple[list[ControlSlopes], list[Interval]]] = {}
    for name in ("random", "partition"):
        dl = result.example_values(f"{name}.dlogp")[p][..., keep]  # [l s draw e]
        if dl.shape[2] == 0:
            continue
        c = example_slopes(dl.transpose(1, 2), scales, mask)  # [l draw e]
        dw = draw_replicates(c.shape[1], replicates, seed)
        ctrl[name] = ([_control(c[li], w0) for li in range(c.shape[0])],
                      _difference_intervals(vec, c, strata, w, dw, confidence))
    fit = tuple(s for s, m in zip(result.scales, mask.tolist(), strict=True) if m)
    return [LayerSteerability(
        layer=layer,
        vector=SlopeStats(mean=means[li], median=float(quart[1, li]), q25=float(quart[0, li]),
                          q75=float(quart[2, li]), wrong_way=wrong[li]),
        random=ctrl["random"][0][li] if "random" in ctrl else None,
        partition=ctrl["partition"][0][li] if "partition" in ctrl else None,
        over_random=ctrl["random"][1][li] if "random" in ctrl else None,
        over_partition=ctrl["partition"][1][li] if "partition" in ctrl else None,
        fit_scales=fit, linear=linear) for li, layer in enumerate(result.layers)]


def most_steerable(result: SteeringResult, precision: str | None = None, *,
                   replicates: int = DEFAULT_REPLICATES, seed: int = 0
                   ) -> dict[str, LayerSteerability]:
    """Per family: the layer with the largest :attr:`LayerSteerability.specificity`."""
    out = {}
    for f in result.families:
        rows = layer_steerability(result, precision, family=f, replicates=replicates, seed=seed)
        out[f] = max(rows, key=lambda r: r.specificity)
    return out


@dataclass(frozen=True, kw_only=True)
class Amplification:
    """KL of one precision row / the reference's at each layer and scale, with intervals."""

    precision: str
    """The row."""
    reference: str
    """The row it is divided by."""
    vector: list[list[Interval | None]]
    """[layer][scale] for the vector (None at s = 0, where both KLs are 0)."""
    random: list[list[Interval | None]] | None
    """The same for the random control, resampling draws too (None without draws)."""
    partition: list[list[Interval | None]] | None
    """The same for the partition control (None without draws)."""


def _ratio_grid(num: Tensor, den: Tensor, strata: Tensor, replicates: int, seed: int,
                confidence: float) -> list[list[Interval | None]]:
    """num, den: [layer scale draw example] -> ratio of family-weighted means, per cell."""
    w0 = family_weights(strata)
    w = example_replicates(strata, replicates, seed)
    dw = draw_replicates(num.shape[2], replicates, seed)
    n_l, n_s, n_d, n_e = num.shape

    def reps(x: Tensor) -> Tensor:  # [rep layer scale]
        return torch.einsum("re,lsde,rd->rls", w, x.double(), dw)

    est = (torch.einsum("e,lsde->ls", w0, num.double()) /
           torch.einsum("e,lsde->ls", w0, den.double()))
    ratio = reps(num) / reps(den)
    out: list[list[Interval | None]] = []
    for li in range(n_l):
        row: list[Interval | None] = []
        for si in range(n_s):
            if not torch.isfinite(est[li, si]):
                row.append(None)
                continue
            row.append(_interval(float(est[li, si]), ratio[:, li, si], n_e * n_d, confidence))
        out.append(row)
    return out


def amplification_intervals(result: SteeringResult, precision: str, *,
                            reference: str | None = None, replicates: int = DEFAULT_REPLICATES,
                            seed: int = 0, confidence: float = CONFIDENCE) -> Amplification:
    """Amplification of ``precision`` over ``reference`` (default :attr:`SteeringResult.reference`)
    at every layer and scale, for the vector and both controls. Each KL is within its
    own precision (clean vs steered of the same copy)."""
    ref = reference or result.reference
    p, r = result.row(precision), result.row(ref)
    strata = result.example_values("family")
    kl = result.example_values("kl")
    vector = _ratio_grid(kl[p][:, :, None], kl[r][:, :, None], strata, replicates, seed, confidence)
    controls = {}
    for name in ("random", "partition"):
        x = result.example_values(f"{name}.kl")
        controls[name] = (_ratio_grid(x[p], x[r], strata, replicates, seed, confidence)
                          if x.shape[3] else None)
    return Amplification(precision=precision, reference=ref, vector=vector, **controls)


@dataclass(frozen=True, kw_only=True)
class Drift:
    """A precision copy's clean next-token distribution against the reference's."""

    kl: Interval
    """Family-weighted mean KL(p_reference ‖ p_row) at the scored position, nats."""
    top1_agreement: Interval
    """Family-weighted share of examples whose clean top-1 tokens agree."""


def drift_stats(result: SteeringResult, precision: str, *, replicates: int = DEFAULT_REPLICATES,
                seed: int = 0) -> Drift | None:
    """The row's drift from :attr:`SteeringResult.reference`, or None when not measured
    (a single-row sweep, or a format-1 file)."""
    if not result.has_examples:
        return None
    p = result.row(precision)
    kl, agree = result.example_values("drift_kl")[p], result.example_values("top1_agree")[p]
    if bool(torch.isnan(kl).any()):
        return None
    strata = result.example_values("family")
    w = example_replicates(strata, replicates, seed)
    kl_i, agree_i = _mean_intervals(torch.stack([kl, agree]), strata, w, CONFIDENCE)
    return Drift(kl=kl_i, top1_agreement=agree_i)


__all__ = ["SLOPE_FIT", "fit_scales", "example_slopes", "family_weights", "example_replicates",
           "draw_replicates", "weighted_mean_interval", "control_difference", "SlopeStats",
           "ControlSlopes", "LayerSteerability", "layer_steerability", "most_steerable",
           "Amplification", "amplification_intervals", "Drift", "drift_stats"]


def transfer_slopes(own: SteeringResult, transferred: SteeringResult, *,
                    replicates: int = DEFAULT_REPLICATES, seed: int = 0,
                    confidence: float = CONFIDENCE) -> list[dict]:
    """Per steered layer of a transfer (:mod:`tlatlas.steering.transfer`): the slopes of
    B's own vector, of A's transferred vector and of B's random control (``own``'s draws),
    on the same examples of the reference row, and the paired differences transferred −
    random, own − random and transferred − own (family-weighted means; intervals resample
    examples within families and draws). JSON-able, one dict per layer."""
    ids = own.example_values("id")
    if not torch.equal(ids, transferred.example_values("id")) or own.layers != transferred.layers:
        raise InvalidInputError("the own and transferred sweeps must score the same examples "
                                "at the same layers")
    strata = own.example_values("family")
    mask, linear = fit_scales(own.scales, _linear_max(own))
    scales = torch.tensor(own.scales)
    s_own = example_slopes(own.example_values("dlogp")[own.row(None)], scales, mask)  # [l e]
    s_tr = example_slopes(transferred.example_values("dlogp")[transferred.row(None)], scales,
                          mask)
    rnd = own.example_values("random.dlogp")[own.row(None)]  # [l s draw e]
    s_rnd = example_slopes(rnd.transpose(1, 2), scales, mask) if rnd.shape[2] else None
    kw = {"replicates": replicates, "seed": seed, "confidence": confidence}
    w0 = family_weights(strata)
    out = []
    for li, layer in enumerate(own.layers):
        row = {"layer": layer, "fit_scales": [s for s, m in zip(own.scales, mask.tolist(),
                                                                strict=True) if m],
               "linear": linear,
               "own": weighted_mean_interval(s_own[li], strata, **kw).to_dict(),
               "transferred": weighted_mean_interval(s_tr[li], strata, **kw).to_dict(),
               "transferred_minus_own": control_difference(s_tr[li], s_own[li][None], strata,
                                                           **kw).to_dict()}
        if s_rnd is not None:
            c = _control(s_rnd[li], w0)
            row |= {"random": {"mean": c.mean, "std": c.std, "draws": c.draws},
                    "transferred_over_random": control_difference(s_tr[li], s_rnd[li], strata,
                                                                  **kw).to_dict(),
                    "own_over_random": control_difference(s_own[li], s_rnd[li], strata,
                                                          **kw).to_dict()}
        out.append(row)
    return out
