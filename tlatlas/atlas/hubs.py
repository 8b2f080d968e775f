"""Hub detection (DESIGN §5): the layer whose ablation hurts most, and how stable it is.

- **hub**: argmax over layers of the block-ablation effect averaged over families
  (each family weighted equally);
- **family agreement**: the share of families whose own argmax layer is the hub;
- **across seeds** (each seed resamples the suite): the hub per seed, its mode, and
  the standard deviation of its index (only for two or more seeds);
- **evidence** (:func:`hub_evidence`): a stratified bootstrap over the atlas's examples
  gives each layer's interval, P(hub = L) for every layer, the hub's margin over the
  runner-up with its interval, and family agreement with its interval.

An atlas built by estimate-then-verify (:mod:`tlatlas.atlas.verify`) holds exact values
only at its verified entries: :func:`verified_layer_mask` says which layers of a component
are exact, and the hub, the least layer, each family's argmax and the evidence are taken
over those layers only (every layer when the atlas has no verified mask).
"""

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.atlas.config import COMPONENTS
from tlatlas.atlas.sums import AtlasSums, mean_effect
from tlatlas.errors import InvalidInputError, UnknownNameError
from tlatlas.io import known_fields
from tlatlas.stats import DEFAULT_REPLICATES, Interval, percentile_interval


@dataclass(frozen=True, kw_only=True)
class HubSummary:
    """The hub of one atlas."""

    hub_layer: int
    """Layer with the largest family-averaged effect."""
    hub_effect: float
    """That effect (the metric's unit: nats for kl and dlogp)."""
    least_layer: int
    """Layer with the smallest family-averaged effect (the flatness check)."""
    least_effect: float
    """That effect."""
    family_argmax: dict[str, int]
    """Each family's own argmax layer."""
    family_agreement: float
    """Share of families whose argmax is the hub, in [0, 1]."""
    layer_effect: tuple[float, ...]
    """Family-averaged effect of every swept layer, in layer order."""
    metric: str
    """Metric the hub is computed on."""
    component: str
    """Component the hub is computed on."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Families left out of the hub, with why (too few scored examples)."""
    verified: tuple[bool, ...] | None = None
    """For an estimate-then-verify atlas, whether each layer's value is exact (the hub,
    least layer and family argmaxes are taken over exact layers only); None otherwise."""

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.hub_summary", "format_version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "HubSummary":
        fields = known_fields(cls, d)
        if fields.get("verified") is not None:
            fields["verified"] = tuple(fields["verified"])
        return cls(**{**fields, "layer_effect": tuple(fields["layer_effect"])})


def verified_layer_mask(sums: AtlasSums, component: str = "block") -> Bool[Tensor, " layer"] | None:
    """Which layers of ``component`` hold exact values in every example, for an atlas with
    a verified mask (``layer.verified``, :mod:`tlatlas.atlas.verify`); None for an atlas
    whose every value is exact or every value estimated (no mask)."""
    if "layer.verified" not in sums.tensors:
        return None
    c = COMPONENTS.index(component)
    return (sums.tensors["layer.verified"][c] >= sums.tensors["count"]).all(-1)


def verified_layers(sums: AtlasSums, component: str = "block") -> tuple[int, ...]:
    """The layers of ``component`` whose values are exact (all layers without a mask):
    what a consumer that must use exact values only (the hub, the LoRA export) ranks."""
    mask = verified_layer_mask(sums, component)
    if mask is None:
        return tuple(sums.layers)
    return tuple(layer for layer, ok in zip(sums.layers, mask.tolist(), strict=True) if ok)


def _exact_layers(sums: AtlasSums, component: str) -> Bool[Tensor, " layer"]:
    c = COMPONENTS.index(component)
    if sums.n_examples and sums.tensors["layer.sum"][:, c].isnan().all():
        raise InvalidInputError(f"component {component} was not computed in this atlas (it "
                                "was built with fewer AtlasConfig.components); use block")
    mask = verified_layer_mask(sums, component)
    if mask is None:
        return torch.ones(len(sums.layers), dtype=torch.bool)
    if not mask.any():
        raise InvalidInputError(f"no layer of {component} is verified in this atlas: it has "
                                "no exact value to take a hub from")
    return mask


def hub_families(sums: AtlasSums, families: Sequence[str] | None = None, *,
                 min_examples: int = 1) -> tuple[list[str], dict[str, str]]:
    """The families a hub is computed over, and those left out with the reason.

    A family scored on fewer than ``min_examples`` examples (e.g. after keeping only
    examples the model answers correctly) is left out: its mean is too noisy to vote.
    """
    fams = list(families) if families is not None else list(sums.families)
    missing = [f for f in fams if f not in sums.families]
    if missing:
        raise UnknownNameError(f"families {missing} are not in this atlas ({', '.join(sums.families)})")
    count = sums.tensors["count"]
    excluded = {f: f"scored on {int(count[sums.families.index(f)])} example(s), fewer than "
                   f"{min_examples}" for f in fams if count[sums.families.index(f)] < min_examples}
    used = [f for f in fams if f not in excluded]
    if not used:
        raise InvalidInputError(f"no family has {min_examples} or more scored examples: "
                                f"{'; '.join(f'{f} {r}' for f, r in excluded.items())}")
    return used, excluded


def hub_summary(sums: AtlasSums, *, metric: str = "kl", component: str = "block",
                families: Sequence[str] | None = None, min_examples: int = 1) -> HubSummary:
    """Hub of an atlas, optionally restricted to some families (e.g. a narrower suite);
    families scored on fewer than ``min_examples`` examples are left out (``excluded``)."""
    fams, excluded = hub_families(sums, families, min_examples=min_examples)
    idx = [sums.families.index(f) for f in fams]
    effect = mean_effect(sums, metric, component)[:, idx]  # [layer family]
    per_layer = effect.mean(1)
    exact = _exact_layers(sums, component)
    hi = torch.where(exact, per_layer, -torch.inf)
    hub_i = int(hi.argmax())
    least_i = int(torch.where(exact, per_layer, torch.inf).argmin())
    masked = torch.where(exact[:, None], effect, -torch.inf)
    argmax = {f: sums.layers[int(masked[:, j].argmax())] for j, f in enumerate(fams)}
    hub = sums.layers[hub_i]
    return HubSummary(
        hub_layer=hub, hub_effect=float(per_layer[hub_i]),
        least_layer=sums.layers[least_i], least_effect=float(per_layer[least_i]),
        family_argmax=argmax,
        family_agreement=sum(v == hub for v in argmax.values()) / len(fams),
        layer_effect=tuple(float(x) for x in per_layer), metric=metric, component=component,
        excluded=excluded,
        verified=None if "layer.verified" not in sums.tensors else tuple(exact.tolist()),
    )


@dataclass(frozen=True, kw_only=True)
class SeedSpread:
    """The hub across seeds."""

    seeds: tuple[int, ...]
    """Seeds in the order given."""
    hubs: tuple[int, ...]
    """Hub layer per seed."""
    mode: int
    """Most frequent hub (the lowest layer on ties)."""
    std: float | None
    """Population standard deviation of the hub index; None for one seed (a spread
    needs two or more: one seed has no spread, which is not a spread of 0)."""
    agreement: tuple[float, ...]
    """Family agreement per seed."""


def seed_spread(seeds: Sequence[int], summaries: Sequence[HubSummary]) -> SeedSpread:
    """The hub across seeds, from one hub summary per seed."""
    if len(seeds) != len(summaries):
        raise InvalidInputError("need one hub summary per seed")
    return spread_of(seeds, [s.hub_layer for s in summaries],
                     [s.family_agreement for s in summaries])


def spread_of(seeds: Sequence[int], hubs: Sequence[int], agreement: Sequence[float]
              ) -> SeedSpread:
    """The hub across seeds from each seed's hub layer and family agreement."""
    if not seeds or not len(seeds) == len(hubs) == len(agreement):
        raise InvalidInputError("need one hub and one agreement per seed, and at least one seed")
    counts = Counter(hubs)
    top = max(counts.values())
    return SeedSpread(
        seeds=tuple(seeds), hubs=tuple(hubs), mode=min(h for h, c in counts.items() if c == top),
        std=statistics.pstdev(hubs) if len(hubs) > 1 else None, agreement=tuple(agreement))


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True, kw_only=True)
class HubEvidence:
    """How sure we are of an atlas's hub: a stratified bootstrap over its examples."""

    metric: str
    """Metric the hub is computed on."""
    component: str
    """Component the hub is computed on."""
    layers: tuple[int, ...]
    """Layer of each entry of the per-layer tuples."""
    n_examples: int
    """Examples the statistics rest on (in the families used)."""
    replicates: int
    """Bootstrap replicates."""
    hub_layer: int
    """The hub of the data as observed."""
    runner_up: int
    """The layer with the second-largest effect."""
    layer_estimate: tuple[float, ...]
    """Family-averaged effect of every layer."""
    layer_ci_low: tuple[float, ...]
    """Lower 95% bound of each layer's effect."""
    layer_ci_high: tuple[float, ...]
    """Upper 95% bound of each layer's effect."""
    hub_probability: tuple[float, ...]
    """P(hub = L): the share of replicates whose hub is each layer (sums to 1)."""
    hub_margin: Interval
    """Effect of the hub minus the runner-up's (per replicate: the observed hub's effect
    minus the largest other layer's), with its interval."""
    family_agreement: Interval
    """Share of families whose own argmax is the hub (per replicate: that replicate's hub)."""
    families: tuple[str, ...]
    """Families used."""
    excluded: dict[str, str]
    """Families left out, with why."""

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "component": self.component, "layers": list(self.layers),
                "n_examples": self.n_examples, "replicates": self.replicates,
                "hub_layer": self.hub_layer, "runner_up": self.runner_up,
                "hub_probability": list(self.hub_probability),
                "hub_margin": self.hub_margin.to_dict(),
                "layer_effect": {"estimate": list(self.layer_estimate),
                                 "ci_low": list(self.layer_ci_low),
                                 "ci_high": list(self.layer_ci_high)},
                "family_agreement": self.family_agreement.to_dict(),
                "families": list(self.families), "excluded": dict(self.excluded)}


def family_mean_replicates(effect: Float[Tensor, "layer example"],
                           family: Int[Tensor, " example"], n_families: int, *,
                           replicates: int, generator: torch.Generator
                           ) -> tuple[Float[Tensor, "layer family"],
                                      Float[Tensor, "rep layer family"]]:
    """Each family's mean effect per layer, observed and in every bootstrap replicate
    (examples resampled within their family; memory ~ replicates x (layers + examples))."""
    e = effect.double()
    n_l = e.shape[0]
    observed = torch.full((n_l, n_families), float("nan"), dtype=torch.float64)
    reps = torch.full((replicates, n_l, n_families), float("nan"), dtype=torch.float64)
    for f in range(n_families):
        members = torch.nonzero(family == f)[:, 0]
        n = members.numel()
        if n == 0:
            continue
        e_f = e[:, members]  # [layer n]
        observed[:, f] = e_f.mean(1)
        draws = torch.randint(0, n, (replicates, n), generator=generator)
        weights = torch.zeros(replicates, n, dtype=torch.float64)
        weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
        reps[:, :, f] = weights @ e_f.T / n  # [rep layer]
    return observed, reps


def hub_evidence(sums: AtlasSums, *, metric: str = "kl", component: str = "block",
                 families: Sequence[str] | None = None, min_examples: int = 1,
                 replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> HubEvidence:
    """The hub with P(hub = L) for every layer, its margin over the runner-up, each
    layer's interval and family agreement's, by a stratified bootstrap over examples.

    Raises InvalidInputError for an atlas without per-example effects (format 1).
    """
    fams, excluded = hub_families(sums, families, min_examples=min_examples)
    exact = _exact_layers(sums, component)
    if int(exact.sum()) < 2:
        raise InvalidInputError("a hub's margin needs at least two (verified) layers")
    # an estimate-then-verify atlas: the evidence is over its exact layers only
    layers = tuple(layer for layer, ok in zip(sums.layers, exact.tolist(), strict=True) if ok)
    effect = sums.example_effect(metric, component)[exact]  # [layer example]
    fam_idx = sums.tensors["example.family"]
    keep_f = torch.tensor([sums.families.index(f) for f in fams])
    rows = torch.isin(fam_idx, keep_f)
    remap = torch.full((len(sums.families),), -1, dtype=torch.long)
    remap[keep_f] = torch.arange(len(fams))
    gen = torch.Generator().manual_seed(seed)
    observed, reps = family_mean_replicates(effect[:, rows], remap[fam_idx[rows]], len(fams),
                                            replicates=replicates, generator=gen)
    per_layer = observed.mean(1)  # [layer]
    rep_layer = reps.mean(2)  # [rep layer]
    hub_i = int(per_layer.argmax())
    others = per_layer.clone()
    others[hub_i] = -torch.inf
    runner_i = int(others.argmax())
    rep_others = rep_layer.clone()
    rep_others[:, hub_i] = -torch.inf
    margins = rep_layer[:, hub_i] - rep_others.max(1).values
    rep_hub = rep_layer.argmax(1)  # [rep]
    p_hub = torch.bincount(rep_hub, minlength=len(layers)).double() / replicates
    rep_agree = (reps.argmax(1) == rep_hub[:, None]).double().mean(1)
    obs_agree = float((observed.argmax(0) == hub_i).double().mean())
    lo, hi = percentile_interval(torch.stack([margins, rep_agree], 1))
    layer_lo, layer_hi = percentile_interval(rep_layer)
    n = int(rows.sum())
    return HubEvidence(
        metric=metric, component=component, layers=layers, n_examples=n,
        replicates=replicates, hub_layer=layers[hub_i], runner_up=layers[runner_i],
        layer_estimate=tuple(per_layer.tolist()), layer_ci_low=tuple(layer_lo.tolist()),
        layer_ci_high=tuple(layer_hi.tolist()), hub_probability=tuple(p_hub.tolist()),
        hub_margin=Interval(estimate=float(per_layer[hub_i] - per_layer[runner_i]),
                            ci_low=float(lo[0]), ci_high=float(hi[0]), n=n),
        family_agreement=Interval(estimate=obs_agree, ci_low=float(lo[1]),
                                  ci_high=float(hi[1]), n=n),
        families=tuple(fams), excluded=excluded)
