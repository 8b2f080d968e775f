"""From a model and a suite specification to a finished :class:`~tlatlas.store.Atlas`."""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tlatlas.atlas.config import COMPONENTS, AtlasConfig, atlas_hook_names
from tlatlas.atlas.distributed import (
    DistContext,
    all_reduce_role_stats,
    all_reduce_sums,
    collective_step,
    fault_hook,
    max_over_ranks,
)
from tlatlas.atlas.methods import ESTIMATING, estimate_settings, sums_function
from tlatlas.atlas.store import Atlas, AtlasMeta
from tlatlas.atlas.sweep import compute_atlas_sums, reference_stats
from tlatlas.errors import InvalidInputError
from tlatlas.models import LoadedModel, check_layers, dtype_label
from tlatlas.tasks import build_suite

if TYPE_CHECKING:  # annotations only: estimates are imported when used (tlatlas.atlas.methods)
    from tlatlas.atlas.estimate_spec import Estimator

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
            raise InvalidInputError(f"shard {self.shard[0]}/{self.shard[1]}: need 0 <= i < n")


def build_atlas(
    model: LoadedModel,
    spec: SuiteSpec,
    config: AtlasConfig,
    *,
    method: str | None = None,
    command: str = "",
    on_batch: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
    estimator: "Estimator | None" = None,
    steps: int | None = None,
    top_k: int = 5,
    patience: int | None = None,
    screen: int | None = None,
    rule: str = "patience",
) -> Atlas:
    """Compute the atlas of ``model`` on the suite ``spec`` describes.

    ``method`` overrides ``config.method`` and also accepts ``attribution`` (a gradient
    estimate: :mod:`tlatlas.atlas.attribution`, :mod:`tlatlas.atlas.estimators`) and
    ``verify`` (estimate, then verify the top ``top_k`` entries of every ranking exactly:
    :mod:`tlatlas.atlas.verify`; ``patience``, ``screen`` and ``rule`` as in its
    ``VerifyConfig``).

    ``estimator`` picks the estimate of ``attribution`` / ``verify`` (default: first
    order for ``attribution``, :data:`~tlatlas.atlas.verify.DEFAULT_ESTIMATOR` for
    ``verify``); ``steps`` overrides its number of path points (``attribution`` with
    ``steps >= 2`` and no estimator: the shared-path integrated gradients, ``ig_joint``).

    ``dist`` (a joined process group, :mod:`tlatlas.distributed`): call on every rank;
    each scores the slice ``(rank, world_size)`` of the suite and of the reference set,
    reference sums are all-reduced before the sweep and atlas sums after it, and every
    rank returns the whole-suite atlas. A rank that raises makes every rank raise
    :class:`~tlatlas.distributed.RankFailedError`.
    """
    if dist is not None and spec.shard is not None:
        raise InvalidInputError("a distributed run shards by rank; do not also give a shard")
    part = dist.shard if dist is not None else spec.shard
    method = method or config.method
    if method not in METHODS:
        raise InvalidInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method in ESTIMATING:
        est, verify = estimate_settings(method, estimator, steps, top_k, patience, screen, rule)
    elif estimator is not None or steps is not None:
        raise InvalidInputError(f"estimator and steps apply to attribution and verify, not {method}")
    else:
        est, verify = None, None
    if method in ("attribution", "verify") and config.components != COMPONENTS:
        raise InvalidInputError(f"--method {method} estimates every component; "
                                "AtlasConfig.components applies to exact and naive atlases")
    if dist is not None and method == "verify":
        raise InvalidInputError("verify picks entries from the whole suite's estimate; run it "
                                "in one process (or per shard with --shard)")
    timings: dict[str, float] = {}
    record: dict = {}
    suite = build_suite(spec.kind, seed=spec.seed, per_family=spec.per_family,
                        families=list(spec.families) if spec.families else None)
    scored = suite.shard(*part) if part else suite
    layers = check_layers(model, config.layers)
    means, ref_hash = None, None
    if config.ablation == "mean":
        t0 = time.perf_counter()
        ref = build_suite(spec.kind, seed=spec.seed + REFERENCE_SEED_OFFSET,
                          per_family=spec.reference_per_family, families=list(suite.families))
        value_hooks, _ = atlas_hook_names(layers, config.positions)
        ref_part = ref.shard(*dist.shard) if dist is not None else ref
        with collective_step(dist, "reference statistics"):
            means = reference_stats(model, list(ref_part), value_hooks,
                                    batch_size=config.batch_size,
                                    memory_budget_bytes=config.memory_budget_bytes)
        if dist is not None:  # every rank ablates with the means of the whole reference set
            means = all_reduce_role_stats(means, dist)
        ref_hash = ref.content_hash
        timings["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    on_batch = _chain(on_batch, fault_hook(dist))
    with collective_step(dist, "atlas sweep"):
        if method == "attribution":
            sums = sums_function("attribution")(
                model, list(scored), ablation=config.ablation, means=means,
                batch_size=config.batch_size, positions=config.positions, layers=layers,
                families=suite.families, positions_ablated=config.positions_ablated,
                on_batch=on_batch, estimator=est)
            record = {"estimator": est.to_dict()}
        elif method == "verify":
            sums, record = sums_function("verify")(
                model, list(scored), replace(config, layers=layers), verify,
                families=suite.families, means=means, on_batch=on_batch)
        else:
            sums = compute_atlas_sums(model, list(scored), replace(config, method=method),
                                      families=suite.families, means=means, on_batch=on_batch)
    timings["sweep"] = time.perf_counter() - t0
    if dist is not None:
        t0 = time.perf_counter()
        sums = all_reduce_sums(sums, dist)
        timings["reduce"] = time.perf_counter() - t0
        timings = max_over_ranks(timings, dist)  # wall time is the slowest rank's
    meta = AtlasMeta(
        model=model.name, fingerprint=model.fingerprint, suite_kind=spec.kind,
        suite_hash=suite.content_hash, seed=spec.seed, ablation=config.ablation, method=method,
        n_examples=sums.n_examples, shard=spec.shard,
        reference_hash=ref_hash, command=command, timings=timings,
        world_size=dist.world_size if dist is not None else 1,
        positions_ablated=config.positions_ablated, correct_only=config.correct_only,
        components=config.components,
        min_family_examples=config.min_family_examples, dtype=dtype_label(model.dtype),
        estimate=record,
    )
    return Atlas(sums=sums, meta=meta)


METHODS = ("exact", "naive", "attribution", "verify")
"""What :func:`build_atlas` accepts as ``method``."""


def _chain(*callbacks: Callable[[int], None] | None) -> Callable[[int], None] | None:
    present = [c for c in callbacks if c is not None]
    if len(present) < 2:
        return present[0] if present else None

    def both(n: int) -> None:
        for c in present:
            c(n)

    return both
