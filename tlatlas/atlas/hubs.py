"""Hub detection (DESIGN §5): the layer whose ablation hurts most, and how stable it is.

- **hub**: argmax over layers of the block-ablation effect averaged over families
  (each family weighted equally);
- **family agreement**: the share of families whose own argmax layer is the hub;
- **across seeds** (each seed resamples the suite): the hub per seed, its mode, and
  the standard deviation of its index.
"""

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tlatlas.atlas.sums import AtlasSums, mean_effect
from tlatlas.errors import InvalidInputError, UnknownNameError
from tlatlas.io import known_fields


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

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.hub_summary", "format_version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "HubSummary":
        fields = known_fields(cls, d)
        return cls(**{**fields, "layer_effect": tuple(fields["layer_effect"])})


def hub_summary(sums: AtlasSums, *, metric: str = "kl", component: str = "block",
                families: Sequence[str] | None = None) -> HubSummary:
    """Hub of an atlas, optionally restricted to some families (e.g. a narrower suite)."""
    fams = list(families) if families is not None else list(sums.families)
    missing = [f for f in fams if f not in sums.families]
    if missing:
        raise UnknownNameError(f"families {missing} are not in this atlas ({', '.join(sums.families)})")
    idx = [sums.families.index(f) for f in fams]
    effect = mean_effect(sums, metric, component)[:, idx]  # [layer family]
    per_layer = effect.mean(1)
    hub_i = int(per_layer.argmax())
    least_i = int(per_layer.argmin())
    argmax = {f: sums.layers[int(effect[:, j].argmax())] for j, f in enumerate(fams)}
    hub = sums.layers[hub_i]
    return HubSummary(
        hub_layer=hub, hub_effect=float(per_layer[hub_i]),
        least_layer=sums.layers[least_i], least_effect=float(per_layer[least_i]),
        family_argmax=argmax,
        family_agreement=sum(v == hub for v in argmax.values()) / len(fams),
        layer_effect=tuple(float(x) for x in per_layer), metric=metric, component=component,
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
    std: float
    """Population standard deviation of the hub index (0 for one seed)."""
    agreement: tuple[float, ...]
    """Family agreement per seed."""


def seed_spread(seeds: Sequence[int], summaries: Sequence[HubSummary]) -> SeedSpread:
    if len(seeds) != len(summaries) or not seeds:
        raise InvalidInputError("need one hub summary per seed, and at least one seed")
    hubs = tuple(s.hub_layer for s in summaries)
    counts = Counter(hubs)
    top = max(counts.values())
    return SeedSpread(
        seeds=tuple(seeds), hubs=hubs, mode=min(h for h, c in counts.items() if c == top),
        std=statistics.pstdev(hubs) if len(hubs) > 1 else 0.0,
        agreement=tuple(s.family_agreement for s in summaries),
    )
