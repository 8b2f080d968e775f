"""From a model and a suite specification to a finished :class:`~tlatlas.store.Atlas`."""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from tlatlas.atlas import (
    AtlasConfig,
    atlas_hook_names,
    check_layers,
    compute_atlas_sums,
    reference_stats,
)
from tlatlas.models import LoadedModel
from tlatlas.store import Atlas, AtlasMeta
from tlatlas.tasks import build_suite

REFERENCE_SEED_OFFSET = 1_000_003
"""Mean ablation's reference set is the same suite kind drawn with seed + this offset."""


@dataclass(frozen=True, kw_only=True)
class SuiteSpec:
    """Which examples an atlas covers."""

    kind: str = "synthetic"
    """``synthetic`` or ``nl``."""
    seed: int = 42
    """Suite seed."""
    per_family: int | None = None
    """Stratified sample size per family (None: the whole suite)."""
    families: tuple[str, ...] | None = None
    """Restrict to these families (None: all twelve)."""
    shard: tuple[int, int] | None = None
    """``(index, count)``: compute only this disjoint stratified slice."""
    reference_per_family: int = 16
    """Reference-set size per family for mean ablation."""

    def __post_init__(self) -> None:
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard {self.shard[0]}/{self.shard[1]}: need 0 <= i < n")


def build_atlas(
    model: LoadedModel,
    spec: SuiteSpec,
    config: AtlasConfig,
    *,
    method: str | None = None,
    command: str = "",
    on_batch: Callable[[int], None] | None = None,
) -> Atlas:
    """Compute the atlas of ``model`` on the suite ``spec`` describes.

    ``method`` overrides ``config.method`` and also accepts ``attribution`` (the
    gradient estimate of :mod:`tlatlas.attribution`).
    """
    method = method or config.method
    timings: dict[str, float] = {}
    suite = build_suite(spec.kind, seed=spec.seed, per_family=spec.per_family,
                        families=list(spec.families) if spec.families else None)
    scored = suite.shard(*spec.shard) if spec.shard else suite
    layers = check_layers(model, config.layers)
    means, ref_hash = None, None
    if config.ablation == "mean":
        t0 = time.perf_counter()
        ref = build_suite(spec.kind, seed=spec.seed + REFERENCE_SEED_OFFSET,
                          per_family=spec.reference_per_family, families=list(suite.families))
        value_hooks, _ = atlas_hook_names(layers, config.positions)
        means = reference_stats(model, list(ref), value_hooks, batch_size=config.batch_size)
        ref_hash = ref.content_hash
        timings["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if method == "attribution":
        from tlatlas.attribution import attribution_sums

        sums = attribution_sums(model, list(scored), ablation=config.ablation, means=means,
                                batch_size=config.batch_size, positions=config.positions,
                                layers=layers, families=suite.families, on_batch=on_batch)
    else:
        sums = compute_atlas_sums(model, list(scored), replace(config, method=method),
                                  families=suite.families, means=means, on_batch=on_batch)
    timings["sweep"] = time.perf_counter() - t0
    meta = AtlasMeta(
        model=model.name, fingerprint=model.fingerprint, suite_kind=spec.kind,
        suite_hash=suite.content_hash, seed=spec.seed, ablation=config.ablation, method=method,
        n_examples=len(scored), shard=spec.shard, reference_hash=ref_hash, command=command,
        timings=timings,
    )
    return Atlas(sums=sums, meta=meta)
