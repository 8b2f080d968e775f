"""The causal atlas: effect of ablating each layer's components, by family and position.

Two exact methods give the same numbers (tested to 1e-4 in fp32):

- ``naive``: one full ``bridge.run_with_hooks`` forward per intervention.
- ``exact`` (fast): reuse the clean run (see :mod:`tlatlas.forward`): resume at the
  ablated layer from the cached residual, stack the three components of a layer into one
  forward, reuse the clean keys/values of positions before an ablated position, and
  unembed only the scored positions.

Results accumulate as sums and counts per family (:class:`AtlasSums`), so shards and
ranks merge exactly and memory does not grow with the number of examples.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.ablation import (
    AblationKind,
    RoleStats,
    check_kind,
    position_mask,
    replacement,
    resample_donors,
    write_hook,
)
from tlatlas.errors import LayerOutOfRangeError
from tlatlas.forward import clean_run, prefix_cache, run_from_layer
from tlatlas.metrics import METRICS, effects, stack_effects
from tlatlas.models import LoadedModel
from tlatlas.tasks import Example
from tlatlas.tokens import ROLES, TokenBatch, encode_batch

COMPONENTS = ("attn", "mlp", "block")
"""Layer-map components: attention output, MLP output, both (the block's whole write)."""
POS_COMPONENTS = ("resid", "block")
"""Position-map components: the residual stream after the block, and the block's write."""
COMPONENT_HOOKS = {
    "attn": ("hook_attn_out",),
    "mlp": ("hook_mlp_out",),
    "block": ("hook_attn_out", "hook_mlp_out"),
    "resid": ("hook_resid_post",),
}
Method = Literal["exact", "naive"]


@dataclass(frozen=True, kw_only=True)
class AtlasConfig:
    """How an atlas is computed."""

    ablation: AblationKind = "zero"
    """What replaces an ablated activation."""
    method: Method = "exact"
    """``exact`` (fast, reuses the clean run) or ``naive`` (one forward per intervention)."""
    positions: bool = False
    """Also compute the position-resolved maps (cost ~ layers x positions forwards)."""
    max_offset: int = 32
    """Position map width: distances 0..max_offset-1 before the scored position."""
    batch_size: int = 8
    """Examples per forward (batches never mix families)."""
    position_chunk: int = 16
    """Exact position map: positions stacked into one forward (the keys/values of the
    positions before the chunk are reused from the clean run)."""
    layers: tuple[int, ...] | None = None
    """Layers to sweep (default all)."""
    resample_seed: int = 0
    """Seed of the donor draws of resample ablation."""

    def __post_init__(self) -> None:
        check_kind(self.ablation)
        if self.method not in ("exact", "naive"):
            raise ValueError(f"unknown method {self.method!r}; choose exact or naive")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (resample needs a donor in the batch)")
        if self.max_offset < 1:
            raise ValueError("max_offset must be >= 1")
        if self.position_chunk < 1:
            raise ValueError("position_chunk must be >= 1")


@dataclass(frozen=True, kw_only=True, eq=False)
class AtlasSums:
    """Mergeable sums of every effect, per family. All tensors live on the CPU in fp64."""

    families: tuple[str, ...]
    """Family of each index of the last axis."""
    layers: tuple[int, ...]
    """Layer of each index of the layer axis."""
    max_offset: int
    """Width of the offset axis of the position map."""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    """``layer.sum`` [metric component layer family], ``count`` [family],
    ``clean.correct`` / ``clean.logp`` [family]; with positions also
    ``role.sum`` [metric pcomp layer role family], ``role.count`` [role family],
    ``offset.sum`` [metric pcomp layer offset family], ``offset.count`` [offset family]."""

    @classmethod
    def empty(cls, families: Sequence[str], layers: Sequence[int], *, positions: bool,
              max_offset: int) -> "AtlasSums":
        f, n_l, m = len(families), len(layers), len(METRICS)
        t = {
            "layer.sum": torch.zeros(m, len(COMPONENTS), n_l, f, dtype=torch.float64),
            "count": torch.zeros(f, dtype=torch.float64),
            "clean.correct": torch.zeros(f, dtype=torch.float64),
            "clean.logp": torch.zeros(f, dtype=torch.float64),
        }
        if positions:
            p = len(POS_COMPONENTS)
            t["role.sum"] = torch.zeros(m, p, n_l, len(ROLES), f, dtype=torch.float64)
            t["role.count"] = torch.zeros(len(ROLES), f, dtype=torch.float64)
            t["offset.sum"] = torch.zeros(m, p, n_l, max_offset, f, dtype=torch.float64)
            t["offset.count"] = torch.zeros(max_offset, f, dtype=torch.float64)
        return cls(families=tuple(families), layers=tuple(layers), max_offset=max_offset,
                   tensors=t)

    @property
    def has_positions(self) -> bool:
        return "role.sum" in self.tensors

    def merged(self, other: "AtlasSums") -> "AtlasSums":
        if (self.families, self.layers, self.max_offset) != (
                other.families, other.layers, other.max_offset) or \
                self.tensors.keys() != other.tensors.keys():
            raise ValueError("cannot merge atlases with different families, layers or maps")
        return AtlasSums(families=self.families, layers=self.layers, max_offset=self.max_offset,
                         tensors={k: v + other.tensors[k] for k, v in self.tensors.items()})


# --------------------------------------------------------------------------- batching


def family_batches(examples: Sequence[Example], batch_size: int) -> list[list[Example]]:
    """Batches of one family each, in suite order; a lone leftover joins the previous batch."""
    by_family: dict[str, list[Example]] = {}
    for ex in examples:
        by_family.setdefault(ex.family, []).append(ex)
    batches: list[list[Example]] = []
    for exs in by_family.values():
        chunks = [exs[i:i + batch_size] for i in range(0, len(exs), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2].extend(chunks.pop())
        batches.extend(chunks)
    return batches


def check_layers(model: LoadedModel, layers: Sequence[int] | None) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(model.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad:
        raise LayerOutOfRangeError(
            f"layer(s) {bad} out of range: {model.name} has layers 0..{model.n_layers - 1}")
    return tuple(layers)


def hook_name(layer: int, hook: str) -> str:
    return f"blocks.{layer}.{hook}"


# --------------------------------------------------------------------------- one batch


@dataclass(frozen=True, kw_only=True, eq=False)
class _BatchContext:
    model: LoadedModel
    batch: TokenBatch
    clean: object  # forward.CleanRun
    values: dict[str, Tensor]  # hook name -> replacement [batch pos d_model]


def _replacements(batch: TokenBatch, clean, config: AtlasConfig,
                  means: dict[str, RoleStats] | None, layers: Sequence[int],
                  hooks: Sequence[str], donors) -> dict[str, Tensor]:
    values = {}
    for layer in layers:
        for h in hooks:
            name = hook_name(layer, h)
            act = clean.acts[name]
            values[name] = replacement(
                config.ablation, act, batch.roles,
                means=means[name].means() if means is not None else None,
                donors=donors,
            )
    return values


def _layer_effects(ctx: _BatchContext, layers: Sequence[int], method: Method
                   ) -> Float[Tensor, "metric component layer batch"]:
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    b = len(batch)
    mask = position_mask(batch.roles, "all").to(model.device)
    out = torch.zeros(len(METRICS), len(COMPONENTS), len(layers), b)
    for li, layer in enumerate(layers):
        if method == "naive":
            for ci, comp in enumerate(COMPONENTS):
                hooks = [(hook_name(layer, h), write_hook(ctx.values[hook_name(layer, h)], mask))
                         for h in COMPONENT_HOOKS[comp]]
                with torch.inference_mode():
                    logits = model.bridge.run_with_hooks(batch.tokens.to(model.device),
                                                         fwd_hooks=hooks)
                scored = logits[torch.arange(b), batch.scored_pos.to(logits.device)]
                e = effects(clean.scored_logits, scored, batch.target)
                out[:, ci, li] = stack_effects(e).cpu()
            continue
        # exact fast path: the three components stacked along the batch axis, one forward
        n_c = len(COMPONENTS)
        hooks = []
        for h in ("hook_attn_out", "hook_mlp_out"):
            on = torch.tensor([h in COMPONENT_HOOKS[c] for c in COMPONENTS])
            rows = on.repeat_interleave(b).to(model.device)
            value = ctx.values[hook_name(layer, h)].repeat(n_c, 1, 1)
            hooks.append((hook_name(layer, h), write_hook(value, mask.repeat(n_c, 1) & rows[:, None])))
        resid = clean.acts[hook_name(layer, "hook_resid_pre")].repeat(n_c, 1, 1)
        logits = run_from_layer(model, resid, layer, batch.scored_pos.repeat(n_c), fwd_hooks=hooks)
        e = effects(clean.scored_logits.repeat(n_c, 1), logits, batch.target.repeat(n_c))
        out[:, :, li] = stack_effects(e).view(len(METRICS), n_c, b).cpu()
    return out


def _position_effects(ctx: _BatchContext, layers: Sequence[int], method: Method, chunk: int
                      ) -> Float[Tensor, "metric pcomp layer batch pos"]:
    """Effect of ablating one position at a time; NaN where the position is not scored-before.

    The exact path stacks a chunk of positions ``[a, a + chunk)`` into one forward (one row
    per (position, example) pair) and reuses the clean keys/values of positions ``< a``:
    per (layer, component) it runs ``width / chunk`` forwards instead of ``width``.
    """
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    b, width = batch.tokens.shape
    dev = model.device
    out = torch.full((len(METRICS), len(POS_COMPONENTS), len(layers), b, width), float("nan"))
    scored = batch.scored_pos.to(dev)
    if method == "naive":
        for p in range(width):
            rows = torch.nonzero(scored >= p)[:, 0]
            if rows.numel() == 0:
                continue
            pmask = position_mask(batch.roles, p).to(dev)
            for li, layer in enumerate(layers):
                for ci, comp in enumerate(POS_COMPONENTS):
                    hooks = [(n, write_hook(ctx.values[n], pmask))
                             for n in (hook_name(layer, h) for h in COMPONENT_HOOKS[comp])]
                    with torch.inference_mode():
                        logits = model.bridge.run_with_hooks(batch.tokens.to(dev), fwd_hooks=hooks)
                    e = effects(clean.scored_logits[rows], logits[rows, scored[rows]],
                                batch.target[rows.cpu()])
                    out[:, ci, li, rows.cpu(), p] = stack_effects(e).cpu()
        return out
    for a in range(0, width, chunk):
        pairs = [(p, r) for p in range(a, min(a + chunk, width)) for r in range(b)
                 if int(batch.scored_pos[r]) >= p]
        if not pairs:
            continue
        pos = torch.tensor([p for p, _ in pairs], device=dev)
        rows = torch.tensor([r for _, r in pairs], device=dev)
        idx = torch.arange(len(pairs), device=dev)
        rel = pos - a  # the ablated position within the suffix
        mask = torch.zeros(len(pairs), width - a, dtype=torch.bool, device=dev)
        mask[idx, rel] = True
        for li, layer in enumerate(layers):
            for ci, comp in enumerate(POS_COMPONENTS):
                names = [hook_name(layer, h) for h in COMPONENT_HOOKS[comp]]
                if comp == "resid":
                    # the ablated residual enters block layer+1; positions < p stay clean
                    resid = clean.acts[names[0]][rows, a:].clone()
                    resid[idx, rel] = ctx.values[names[0]][rows, pos]
                    logits = run_from_layer(model, resid, layer + 1, scored[rows] - a,
                                            prefix=_prefix(model, clean, rows, a), prefix_len=a)
                else:
                    hooks = [(n, write_hook(ctx.values[n][rows, a:], mask)) for n in names]
                    resid = clean.acts[hook_name(layer, "hook_resid_pre")][rows, a:]
                    logits = run_from_layer(model, resid, layer, scored[rows] - a,
                                            prefix=_prefix(model, clean, rows, a), prefix_len=a,
                                            fwd_hooks=hooks)
                e = effects(clean.scored_logits[rows], logits, batch.target[rows.cpu()])
                out[:, ci, li, rows.cpu(), pos.cpu()] = stack_effects(e).cpu()
    return out


def _prefix(model: LoadedModel, clean, rows: Tensor, p: int):
    # A suffix run appends its keys/values to the cache it is given, so each run gets a
    # fresh one (built from views of the clean cache: no copy until the append).
    return prefix_cache(model, clean.kv, rows, p) if p > 0 else None


# --------------------------------------------------------------------------- the sweep


def _accumulate(sums: AtlasSums, batch: TokenBatch, clean, layer_e: Tensor,
                pos_e: Tensor | None) -> None:
    fam = torch.tensor([sums.families.index(f) for f in batch.families])
    onehot = torch.nn.functional.one_hot(fam, len(sums.families)).double()  # [batch family]
    t = sums.tensors
    t["layer.sum"] += torch.einsum("mclb,bf->mclf", layer_e.double(), onehot)
    t["count"] += onehot.sum(0)
    lp = clean.scored_logits.log_softmax(-1)
    tgt = batch.target.to(lp.device)
    t["clean.correct"] += onehot.T @ (lp.argmax(-1) == tgt).double().cpu()
    t["clean.logp"] += onehot.T @ lp.gather(-1, tgt[:, None])[:, 0].double().cpu()
    if pos_e is None:
        return
    valid = ~torch.isnan(pos_e[0, 0, 0])  # [batch pos]
    e = torch.nan_to_num(pos_e.double())
    roles = torch.nn.functional.one_hot(batch.roles.clamp(min=0), len(ROLES)).double()
    roles = roles * valid[..., None]
    t["role.sum"] += torch.einsum("mclbt,btr,bf->mclrf", e, roles, onehot)
    t["role.count"] += torch.einsum("btr,bf->rf", roles, onehot)
    offset = batch.scored_pos[:, None] - torch.arange(batch.tokens.shape[1])[None]
    in_range = valid & (offset < sums.max_offset)
    off = torch.nn.functional.one_hot(offset.clamp(0, sums.max_offset - 1), sums.max_offset).double()
    off = off * in_range[..., None]
    t["offset.sum"] += torch.einsum("mclbt,bto,bf->mclof", e, off, onehot)
    t["offset.count"] += torch.einsum("bto,bf->of", off, onehot)


def reference_stats(model: LoadedModel, examples: Sequence[Example], hook_names: Sequence[str],
                    *, batch_size: int = 8) -> dict[str, RoleStats]:
    """Per-role sums and counts of each hook's activation over a reference set (streaming)."""
    stats = {n: RoleStats.zeros(model.d_model) for n in hook_names}
    for exs in family_batches(examples, batch_size):
        batch = encode_batch(exs, model.tokenizer)
        clean = clean_run(model, batch.tokens.to(model.device), batch.scored_pos, list(hook_names))
        for n in hook_names:
            stats[n].add(clean.acts[n], batch.roles)
    return stats


def atlas_hook_names(layers: Sequence[int], positions: bool) -> tuple[list[str], list[str]]:
    """(hooks whose replacement values are needed, hooks the clean run must cache)."""
    ablated = ["hook_attn_out", "hook_mlp_out"] + (["hook_resid_post"] if positions else [])
    values = [hook_name(layer, h) for layer in layers for h in ablated]
    cached = values + [hook_name(layer, "hook_resid_pre") for layer in layers]
    return values, cached


def compute_atlas_sums(
    model: LoadedModel,
    examples: Sequence[Example],
    config: AtlasConfig,
    *,
    families: Sequence[str] | None = None,
    means: dict[str, RoleStats] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> AtlasSums:
    """Sweep every layer (and position) over ``examples`` and return the summed effects.

    ``means`` (required for mean ablation) come from :func:`reference_stats` on a
    reference set that is not the scored examples.
    """
    layers = check_layers(model, config.layers)
    if config.ablation == "mean" and means is None:
        raise ValueError("mean ablation needs reference statistics (reference_stats)")
    fams = tuple(families) if families is not None else tuple(dict.fromkeys(e.family for e in examples))
    sums = AtlasSums.empty(fams, layers, positions=config.positions, max_offset=config.max_offset)
    value_hooks, cached_hooks = atlas_hook_names(layers, config.positions)
    hooks = sorted({h.split(".", 2)[2] for h in value_hooks})
    for bi, exs in enumerate(family_batches(examples, config.batch_size)):
        batch = encode_batch(exs, model.tokenizer)
        clean = clean_run(model, batch.tokens.to(model.device), batch.scored_pos, cached_hooks)
        donors = None
        if config.ablation == "resample":
            gen = torch.Generator().manual_seed(config.resample_seed * 1_000_003 + bi)
            donors = resample_donors(batch.families, gen)
        values = _replacements(batch, clean, config, means, layers, hooks, donors)
        ctx = _BatchContext(model=model, batch=batch, clean=clean, values=values)
        layer_e = _layer_effects(ctx, layers, config.method)
        pos_e = (_position_effects(ctx, layers, config.method, config.position_chunk)
                 if config.positions else None)
        _accumulate(sums, batch, clean, layer_e, pos_e)
        if on_batch is not None:
            on_batch(len(batch))
    return sums


def mean_effect(sums: AtlasSums, metric: str = "kl", component: str = "block"
                ) -> Float[Tensor, "layer family"]:
    """Mean effect per layer and family (sum / count)."""
    m, c = METRICS.index(metric), COMPONENTS.index(component)
    return sums.tensors["layer.sum"][m, c] / sums.tensors["count"].clamp(min=1)


def role_effect(sums: AtlasSums, metric: str = "kl", component: str = "resid"
                ) -> Float[Tensor, "layer role"]:
    """Mean effect of ablating one position of each role, pooled over families."""
    m, c = METRICS.index(metric), POS_COMPONENTS.index(component)
    return sums.tensors["role.sum"][m, c].sum(-1) / sums.tensors["role.count"].sum(-1).clamp(min=1)


def offset_effect(sums: AtlasSums, metric: str = "kl", component: str = "resid"
                  ) -> Float[Tensor, "layer offset"]:
    """Mean effect by distance before the scored position (0 = the scored token itself)."""
    m, c = METRICS.index(metric), POS_COMPONENTS.index(component)
    return sums.tensors["offset.sum"][m, c].sum(-1) / sums.tensors["offset.count"].sum(-1).clamp(min=1)
