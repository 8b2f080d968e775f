"""Per-prompt position maps: the effect of ablating each token of each prompt, per layer.

The atlas stores position effects aggregated by role and by offset from the scored token
(sums that merge across shards); it never keeps one prompt's per-token effects. A
:class:`PositionMap` is that per-prompt view, for a handful of prompts, for pictures
(:mod:`tlatlas.viz.maps` colours each prompt's tokens by it).

It is computed by the atlas's own exact fast path
(:func:`tlatlas.atlas.sweep.position_effects` on an
:class:`~tlatlas.atlas.sweep.AblationBatch`), so a map and an atlas built on the same
prompts agree entry by entry.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.atlas.ablation import AblationKind, RoleStats
from tlatlas.atlas.config import POS_COMPONENTS, AtlasConfig, Method, atlas_hook_names
from tlatlas.atlas.engine import clean_batches
from tlatlas.atlas.estimate_spec import shown_metric
from tlatlas.atlas.sweep import ablation_batch, position_effects
from tlatlas.errors import InvalidInputError
from tlatlas.metrics import METRICS
from tlatlas.models import LoadedModel, check_layers
from tlatlas.tasks import Example

POSMAP_KIND = "tlatlas.position_map"
POSMAP_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True, eq=False)
class PositionMap:
    """Effect of ablating one position at a time, per prompt, layer and position."""

    tokens: tuple[tuple[str, ...], ...]
    """Each prompt's tokens as text (BOS included), up to and including the scored token."""
    effect: Float[Tensor, "prompt layer pos"]
    """Effect on the scored token of ablating ``component`` at (layer, position); NaN past
    a prompt's scored position (fp32, CPU; nats for kl and dlogp)."""
    layers: tuple[int, ...]
    """Layer of each index of the layer axis."""
    families: tuple[str, ...]
    """Family of each prompt."""
    prompts: tuple[str, ...]
    """The prompt texts, in the order given."""
    metric: str
    """``kl``, ``dlogp`` or ``acc_drop`` (see :mod:`tlatlas.metrics`)."""
    component: str
    """``resid`` (hook_resid_post) or ``block`` (attention and MLP outputs)."""
    ablation: str
    """``zero``, ``mean`` or ``resample``."""

    def __post_init__(self) -> None:
        n, n_l, width = self.effect.shape
        if not (len(self.tokens) == len(self.families) == len(self.prompts) == n):
            raise InvalidInputError(f"{n} prompts in effect, but {len(self.tokens)} token lists, "
                             f"{len(self.families)} families and {len(self.prompts)} prompts")
        if len(self.layers) != n_l:
            raise InvalidInputError(f"effect has {n_l} layers, layers lists {len(self.layers)}")
        if any(len(t) > width for t in self.tokens):
            raise InvalidInputError("a prompt has more tokens than the position axis")
        if self.metric not in METRICS:
            raise InvalidInputError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.component not in POS_COMPONENTS:
            raise InvalidInputError(f"unknown component {self.component!r}; "
                             f"choose one of {', '.join(POS_COMPONENTS)}")

    def prompt_effect(self, i: int) -> Float[Tensor, "layer tok"]:
        """Prompt ``i``'s effects over its own tokens only (no NaN padding)."""
        return self.effect[i, :, : len(self.tokens[i])]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": POSMAP_KIND, "format_version": POSMAP_FORMAT_VERSION,
            "tokens": [list(t) for t in self.tokens],
            "effect": [[[None if v != v else v for v in row] for row in p]
                       for p in self.effect.tolist()],
            "layers": list(self.layers), "families": list(self.families),
            "prompts": list(self.prompts), "metric": self.metric,
            "component": self.component, "ablation": self.ablation,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PositionMap":
        if d.get("kind") != POSMAP_KIND or d.get("format_version") != POSMAP_FORMAT_VERSION:
            raise InvalidInputError(f"not a position map of format {POSMAP_FORMAT_VERSION}: "
                             f"kind {d.get('kind')!r}, format {d.get('format_version')!r}")
        effect = torch.tensor([[[float("nan") if v is None else v for v in row] for row in p]
                               for p in d["effect"]], dtype=torch.float32)
        return cls(tokens=tuple(tuple(t) for t in d["tokens"]), effect=effect,
                   layers=tuple(d["layers"]), families=tuple(d["families"]),
                   prompts=tuple(d["prompts"]), metric=d["metric"], component=d["component"],
                   ablation=d["ablation"])


def token_strings(tokenizer, ids: Sequence[int]) -> tuple[str, ...]:
    """Each token decoded on its own (so a leading space stays visible as a space)."""
    return tuple(tokenizer.decode([int(i)]) for i in ids)


def position_map(
    model: LoadedModel,
    examples: Sequence[Example],
    *,
    layers: Sequence[int] | None = None,
    ablation: AblationKind = "zero",
    component: str = "resid",
    metric: str = "kl",
    **kwargs: Any,
) -> PositionMap:
    """Ablate ``component`` at one position at a time and measure ``metric`` at the scored token.

    Keyword arguments as for :func:`position_maps` (``method``, ``means``, ``batch_size``,
    ``position_chunk``, ``resample_seed``, ``on_batch``).
    """
    return position_maps(model, examples, layers=layers, ablation=ablation,
                         components=(component,), metric=metric, **kwargs)[0]


def position_maps(
    model: LoadedModel,
    examples: Sequence[Example],
    *,
    layers: Sequence[int] | None = None,
    ablation: AblationKind = "zero",
    components: Sequence[str] = POS_COMPONENTS,
    metric: str = "kl",
    method: Method = "exact",
    means: dict[str, RoleStats] | None = None,
    batch_size: int = 8,
    position_chunk: int = 16,
    resample_seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[PositionMap, ...]:
    """One map per component from one sweep (the atlas's path computes both together).

    Args:
        examples: the prompts, in the order the map keeps (batches are formed per family,
            as in the atlas, and put back in this order).
        layers: layers to sweep (default all).
        means: per-role reference statistics, required for mean ablation
            (:func:`tlatlas.atlas.reference_stats` on a set that is not ``examples``).
        method: ``exact`` (the atlas's fast path) or ``naive`` (one full forward each).

    Cost: about ``2 x len(layers) x width / position_chunk`` suffix forwards per batch
    (both position components are always computed; batches never mix families).
    """
    config = AtlasConfig(ablation=ablation, method=method, positions=True,
                         batch_size=max(batch_size, 2), position_chunk=position_chunk,
                         layers=tuple(layers) if layers is not None else None,
                         resample_seed=resample_seed)
    bad = [c for c in components if c not in POS_COMPONENTS]
    if bad or not components:
        raise InvalidInputError(f"unknown component(s) {bad}; choose from {', '.join(POS_COMPONENTS)}")
    if metric not in METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if not examples:
        raise InvalidInputError("position_map needs at least one example")
    if ablation == "mean" and means is None:
        raise InvalidInputError("mean ablation needs reference statistics (reference_stats)")
    swept = check_layers(model, config.layers)
    value_hooks, cached_hooks = atlas_hook_names(swept, positions=True)
    hooks = sorted({h.split(".", 2)[2] for h in value_hooks})
    m = METRICS.index(metric)
    comps = [POS_COMPONENTS.index(c) for c in components]

    # where each example sits in the caller's order (duplicates are fine)
    slots: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        slots.setdefault(id(ex), []).append(i)
    rows: list[tuple[int, tuple[str, ...], Tensor]] = []
    for cb in clean_batches(model, examples, cached_hooks, batch_size=config.batch_size):
        ctx = ablation_batch(model, cb, config, means, swept, hooks)
        pos_e = position_effects(ctx, swept, config.method, config.position_chunk)
        batch = cb.batch
        for r, ex in enumerate(cb.examples):
            n_tok = int(batch.scored_pos[r]) + 1
            toks = token_strings(model.tokenizer, batch.tokens[r, :n_tok].tolist())
            rows.append((slots[id(ex)].pop(0), toks, pos_e[m, comps, :, r, :n_tok].float()))
        if on_batch is not None:
            on_batch(len(batch))
    rows.sort(key=lambda t: t[0])
    width = max(len(t) for _, t, _ in rows)
    effect = torch.full((len(comps), len(rows), len(swept), width), float("nan"))
    for i, (_, toks, e) in enumerate(rows):
        effect[:, i, :, : len(toks)] = e
    return tuple(
        PositionMap(tokens=tuple(t for _, t, _ in rows), effect=effect[k], layers=swept,
                    families=tuple(ex.family for ex in examples),
                    prompts=tuple(ex.prompt for ex in examples), metric=metric,
                    component=comp, ablation=ablation)
        for k, comp in enumerate(components))


def default_map_layers(sums, max_layers: int = 10) -> tuple[int, ...]:
    """Up to ``max_layers`` evenly spaced layers of an atlas (first and last included),
    plus its hub: a position map costs a sweep over positions per layer."""
    from tlatlas.atlas.hubs import hub_summary

    layers = list(sums.layers)
    if len(layers) <= max_layers:
        return tuple(layers)
    idx = {round(i * (len(layers) - 1) / (max_layers - 1)) for i in range(max_layers)}
    picked = {layers[i] for i in idx} | {hub_summary(sums).hub_layer}
    return tuple(sorted(picked))


def atlas_position_maps(
    model: LoadedModel,
    atlas,
    *,
    n_prompts: int = 4,
    layers: Sequence[int] | None = None,
    reference_per_family: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[PositionMap, ...]:
    """Per-prompt maps (``resid`` and ``block``) to show beside an atlas.

    The prompts are the first example of each of the atlas's first ``n_prompts``
    families in the atlas's own suite (kind and seed): a stratified sample takes a
    family's first examples, so they are among the prompts the atlas scored. The
    ablation and metric are the atlas's (``dlogp`` for an attribution atlas); resample
    takes two prompts per family (a donor each); mean ablation uses a reference set drawn
    as :func:`tlatlas.pipeline.build_atlas` draws it. ``layers`` defaults to
    :func:`default_map_layers`.
    """
    from tlatlas.atlas.pipeline import REFERENCE_SEED_OFFSET
    from tlatlas.atlas.sweep import reference_stats
    from tlatlas.tasks import build_suite

    meta = atlas.meta
    model.fingerprint.check_matches(meta.fingerprint, what=f"atlas of {meta.model}")
    families = list(atlas.sums.families)[: max(1, n_prompts)]
    per = 2 if meta.ablation == "resample" else 1
    examples = list(build_suite(meta.suite_kind, seed=meta.seed, per_family=per, families=families))
    swept = tuple(layers) if layers is not None else default_map_layers(atlas.sums)
    means = None
    if meta.ablation == "mean":
        ref = build_suite(meta.suite_kind, seed=meta.seed + REFERENCE_SEED_OFFSET,
                          per_family=reference_per_family, families=families)
        value_hooks, _ = atlas_hook_names(swept, positions=True)
        means = reference_stats(model, list(ref), value_hooks)
    metric = shown_metric(meta.method, meta.estimate)
    return position_maps(model, examples, layers=swept, ablation=meta.ablation, metric=metric,
                         means=means, on_batch=on_batch)


__all__ = ["PositionMap", "position_map", "position_maps", "atlas_position_maps",
           "default_map_layers", "token_strings"]
