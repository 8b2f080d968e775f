"""The causal atlas: effect of ablating each layer's components, by family and position.

Two exact methods give the same numbers (tested to 1e-4 in fp32):

- ``naive``: one full ``bridge.run_with_hooks`` forward per intervention.
- ``exact`` (fast): reuse the clean run (see :mod:`tlatlas.models.forward`): resume at the
  ablated layer from the cached residual, stack the three components of a layer into one
  forward, reuse the clean keys/values of positions before an ablated position, and
  unembed only the scored positions.

Results accumulate as sums and counts per family (:class:`AtlasSums`), so shards and
ranks merge exactly and memory does not grow with the number of examples.
"""


from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.atlas.ablation import (
    PositionPolicy,
    RoleStats,
    ablation_mask,
    position_mask,
    replacement,
    resample_donors,
    write_hook,
)
from tlatlas.atlas.batching import BatchPlan, plan_atlas_batches
from tlatlas.atlas.config import (
    COMPONENT_HOOKS,
    COMPONENTS,
    POS_COMPONENTS,
    AtlasConfig,
    Method,
    atlas_hook_names,
)
from tlatlas.atlas.engine import CleanBatch, clean_batches, run_clean, run_family_batches
from tlatlas.atlas.sums import AtlasSums, accumulate
from tlatlas.errors import InvalidInputError
from tlatlas.hooks import hook_name
from tlatlas.metrics import METRICS, effects, stack_effects
from tlatlas.models.forward import CleanRun, prefix_cache, run_from_layer
from tlatlas.models.loading import LoadedModel, check_layers
from tlatlas.tasks import Example
from tlatlas.tokens import TokenBatch, encode_batch

# --------------------------------------------------------------------------- one batch


@dataclass(frozen=True, kw_only=True, eq=False)
class AblationBatch:
    """One clean batch with the replacement value of every ablated hook."""

    model: LoadedModel
    """The model the batch ran through."""
    batch: TokenBatch
    """Tokens, roles, scored positions and targets."""
    clean: CleanRun
    """The clean run (scored logits, cached activations, keys/values)."""
    values: dict[str, Tensor]
    """Hook name -> what an ablation writes there, ``[batch pos d_model]``."""
    positions_ablated: PositionPolicy = "all"
    """Which positions a layer ablation writes to."""
    uids: tuple[int, ...] = ()
    """Each row's :attr:`~tlatlas.tasks.Example.uid` (empty for plain prompts)."""


def replacements(batch: TokenBatch, clean: CleanRun, config: AtlasConfig,
                 means: dict[str, RoleStats] | None, layers: Sequence[int],
                 hooks: Sequence[str], donors: Tensor | None) -> dict[str, Tensor]:
    """The replacement of every ``hooks`` activation at every layer (computed once from
    the clean run: zero, the reference mean, or the donor's clean activation)."""
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


def layer_effects(ctx: AblationBatch, layers: Sequence[int], method: Method,
                  components: Sequence[str] = COMPONENTS
                  ) -> Float[Tensor, "metric component layer batch"]:
    """Effect of ablating each component of each layer at every position, per example
    (NaN for the components not in ``components``)."""
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    b = len(batch)
    mask = ablation_mask(batch.roles, ctx.positions_ablated).to(model.device)
    out = torch.full((len(METRICS), len(COMPONENTS), len(layers), b), float("nan"))
    chosen = [COMPONENTS.index(c) for c in components]
    for li, layer in enumerate(layers):
        if method == "naive":
            for ci in chosen:
                comp = COMPONENTS[ci]
                hooks = [(hook_name(layer, h), write_hook(ctx.values[hook_name(layer, h)], mask))
                         for h in COMPONENT_HOOKS[comp]]
                with torch.inference_mode():
                    logits = model.bridge.run_with_hooks(batch.tokens.to(model.device),
                                                         fwd_hooks=hooks)
                scored = logits[torch.arange(b), batch.scored_pos.to(logits.device)]
                e = effects(clean.scored_logits, scored, batch.target)
                out[:, ci, li] = stack_effects(e).cpu()
            continue
        # exact fast path: the chosen components stacked along the batch axis, one forward
        n_c = len(chosen)
        hooks = []
        for h in ("hook_attn_out", "hook_mlp_out"):
            on = torch.tensor([h in COMPONENT_HOOKS[COMPONENTS[ci]] for ci in chosen])
            if not on.any():
                continue
            rows = on.repeat_interleave(b).to(model.device)
            value = ctx.values[hook_name(layer, h)].repeat(n_c, 1, 1)
            hooks.append((hook_name(layer, h), write_hook(value, mask.repeat(n_c, 1) & rows[:, None])))
        resid = clean.acts[hook_name(layer, "hook_resid_pre")].repeat(n_c, 1, 1)
        logits = run_from_layer(model, resid, layer, batch.scored_pos.repeat(n_c), fwd_hooks=hooks)
        e = effects(clean.scored_logits.repeat(n_c, 1), logits, batch.target.repeat(n_c))
        out[:, chosen, li] = stack_effects(e).view(len(METRICS), n_c, b).cpu()
    return out


def position_effects(ctx: AblationBatch, layers: Sequence[int], method: Method, chunk: int
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


def _prefix(model: LoadedModel, clean: CleanRun, rows: Tensor, p: int):
    # A suffix run appends its keys/values to the cache it is given, so each run gets a
    # fresh one (built from views of the clean cache: no copy until the append).
    return prefix_cache(model, clean.kv, rows, p) if p > 0 else None


# --------------------------------------------------------------------------- the sweep


def reference_stats(model: LoadedModel, examples: Sequence[Example], hook_names: Sequence[str],
                    *, batch_size: int = 8, memory_budget_bytes: int | None = None
                    ) -> dict[str, RoleStats]:
    """Per-role sums and counts of each hook's activation over a reference set (streaming).

    ``batch_size=0`` chooses it from ``memory_budget_bytes`` (default: the free memory)."""
    stats = {n: RoleStats.zeros(model.d_model) for n in hook_names}
    if batch_size == 0:
        layers = len({n.split(".")[1] for n in hook_names})
        batch_size = min(p.batch_size for p in plan_atlas_batches(
            model, examples, layers_swept=layers, positions=True, position_chunk=1,
            budget=memory_budget_bytes).values())
    for cb in clean_batches(model, examples, hook_names, batch_size=batch_size):
        for n in hook_names:
            stats[n].add(cb.clean.acts[n], cb.batch.roles)
    return stats


def ablation_batch(model: LoadedModel, cb: CleanBatch, config: AtlasConfig,
                   means: dict[str, RoleStats] | None, layers: Sequence[int],
                   hooks: Sequence[str]) -> AblationBatch:
    """A clean batch with its replacements (resample donors drawn per batch from
    ``config.resample_seed`` and the batch index, so reruns draw the same donors)."""
    donors = None
    if config.ablation == "resample":
        gen = torch.Generator().manual_seed(config.resample_seed * 1_000_003 + cb.index)
        donors = resample_donors(cb.batch.families, gen)
    values = replacements(cb.batch, cb.clean, config, means, layers, hooks, donors)
    return AblationBatch(model=model, batch=cb.batch, clean=cb.clean, values=values,
                         positions_ablated=config.positions_ablated,
                         uids=tuple(ex.uid for ex in cb.examples))


def atlas_batch_plans(model: LoadedModel, examples: Sequence[Example], config: AtlasConfig
                      ) -> dict[str, BatchPlan] | None:
    """Per-family batch plans of a sweep with ``config.batch_size == 0`` (None otherwise)."""
    if not config.auto_batch:
        return None
    layers = check_layers(model, config.layers)
    return plan_atlas_batches(model, examples, layers_swept=len(layers),
                              positions=config.positions, position_chunk=config.position_chunk,
                              method=config.method, budget=config.memory_budget_bytes)


def compute_atlas_sums(
    model: LoadedModel,
    examples: Sequence[Example],
    config: AtlasConfig,
    *,
    families: Sequence[str] | None = None,
    means: dict[str, RoleStats] | None = None,
    on_batch: Callable[[int], None] | None = None,
    mixed: bool = False,
) -> AtlasSums:
    """Sweep every layer (and position) over ``examples`` and return the summed effects.

    ``means`` (required for mean ablation) come from :func:`reference_stats` on a
    reference set that is not the scored examples. With ``config.batch_size == 0`` each
    family's batch size and position chunk come from the memory budget
    (:func:`atlas_batch_plans`). A batch that runs out of memory is halved and retried,
    with a :class:`~tlatlas.models.memory.MemoryBackoffWarning`. ``mixed``: batches of any
    families (:func:`~tlatlas.atlas.engine.batch_groups`; zero and mean ablation with a
    fixed batch size: resample draws its donors within a batch's family).
    """
    if mixed and (config.ablation == "resample" or config.auto_batch):
        raise InvalidInputError("mixed-family batches need zero or mean ablation and a fixed "
                                "batch size")
    layers = check_layers(model, config.layers)
    if config.ablation == "mean" and means is None:
        raise InvalidInputError("mean ablation needs reference statistics (reference_stats)")
    fams = tuple(families) if families is not None else tuple(dict.fromkeys(e.family for e in examples))
    sums = AtlasSums.empty(fams, layers, positions=config.positions, max_offset=config.max_offset)
    plans = atlas_batch_plans(model, examples, config)
    sizes = {f: p.batch_size for f, p in plans.items()} if plans else config.batch_size
    if config.correct_only:
        examples, seen = correct_examples(model, examples, fams, batch_size=sizes,
                                          resample=config.ablation == "resample")
    value_hooks, cached_hooks = atlas_hook_names(layers, config.positions)
    hooks = sorted({h.split(".", 2)[2] for h in value_hooks})

    def step(exs: tuple[Example, ...], index: int) -> None:
        batch = encode_batch(exs, model.tokenizer)
        cb = CleanBatch(index=index, examples=exs, batch=batch,
                        clean=run_clean(model, batch, cached_hooks))
        ctx = ablation_batch(model, cb, config, means, layers, hooks)
        layer_e = layer_effects(ctx, layers, config.method, config.components)
        chunk = plans[exs[0].family].position_chunk if plans else config.position_chunk
        pos_e = position_effects(ctx, layers, config.method, chunk) if config.positions else None
        # the scored logits to the CPU first: accumulating cannot fail half-way on the device
        clean = replace(cb.clean, scored_logits=cb.clean.scored_logits.cpu())
        accumulate(sums, batch, clean, layer_e, pos_e, ctx.uids)
        if on_batch is not None:
            on_batch(len(batch))

    run_family_batches(examples, sizes, step, device=model.device, what="atlas sweep",
                       mixed=mixed)
    if not config.correct_only:
        seen = {"seen.count": sums.tensors["count"].clone(),
                "seen.correct": sums.tensors["clean.correct"].clone()}
    sums.tensors.update(seen)
    return sums.finished()


def correct_examples(model: LoadedModel, examples: Sequence[Example], families: Sequence[str],
                     *, batch_size: int | dict[str, int], resample: bool = False
                     ) -> tuple[list[Example], dict[str, Tensor]]:
    """The examples whose clean top-1 is the answer, and per-family counts of all examples
    seen and of the correct ones (``seen.count``, ``seen.correct`` [family], fp64).

    With ``resample`` a family left with one correct example is dropped (it has no donor).
    """
    kept: list[Example] = []
    count = torch.zeros(len(families), dtype=torch.float64)
    correct = torch.zeros(len(families), dtype=torch.float64)

    def step(exs: tuple[Example, ...], index: int) -> None:
        batch = encode_batch(exs, model.tokenizer)
        top = run_clean(model, batch, []).scored_logits.argmax(-1).cpu()
        hit = (top == batch.target).tolist()
        f = families.index(batch.families[0])
        count[f] += len(hit)
        correct[f] += sum(hit)
        kept.extend(ex for ex, h in zip(exs, hit, strict=True) if h)

    run_family_batches(examples, batch_size, step, device=model.device, min_batch=1,
                       what="correct-only filter")
    if resample:
        per_family = Counter(ex.family for ex in kept)
        kept = [ex for ex in kept if per_family[ex.family] >= 2]
    return kept, {"seen.count": count, "seen.correct": correct}


