"""Attribution patching: a first-order estimate of the atlas from one forward and one backward.

For a hook activation ``a`` (clean run) and the replacement ``r`` an ablation writes
(zero, or the reference role mean of :func:`tlatlas.ablation.replacement`), a Taylor
expansion of the answer's log-probability around the clean run gives

    log p_ablated ~= log p_clean + sum_{pos in S} (r - a) . d log p / d a,

so the Delta-logp of ablating positions ``S`` (``log p_clean - log p_ablated``, exactly as
:func:`tlatlas.metrics.effects` defines ``dlogp``) is estimated by

    dlogp_hat = -sum_{pos in S} (r - a) . grad_a.

One backward of ``sum_b log p_b(target_b)`` gives every row's gradient at once: rows are
independent (causal attention, right padding), so row ``b``'s activations only reach
row ``b``'s log-probability. From that one backward come the whole layer map (``S`` = all
real positions; ``attn``, ``mlp``, ``block``) and the whole position map (``S`` = one
position; ``resid``, ``block``).

``block`` is *not* the sum of the ``attn`` and ``mlp`` estimates. The exact atlas ablates a
block by writing fixed values at both hooks, so the MLP never sees the changed attention
output: the attention term must use the gradient that bypasses the MLP, which is the
gradient at ``hook_resid_post`` (the block adds ``attn_out + mlp_out`` to the residual).
The ``attn`` estimate instead uses the gradient at ``hook_attn_out``, which includes the
path through the same layer's MLP (the MLP recomputes when only attention is ablated).
The difference is first order, not an interaction term one may drop. This assumes
``hook_attn_out`` and ``hook_mlp_out`` are what the block adds to the residual stream
(pre-norm blocks: Llama, Qwen2, SmolLM2); it is tested against the exact ablation.

Only ``dlogp`` is estimated. The ``kl`` and ``acc_drop`` slots of the returned
:class:`~tlatlas.atlas.AtlasSums` are NaN: KL(p_clean || p) has zero gradient at the clean
point (it is a minimum), so its first-order estimate is identically 0 and says nothing,
and accuracy is piecewise constant. Resample ablation is not supported (its replacement
is another example's activation, a large, non-local change; use the exact atlas).

How well the estimate agrees with the exact atlas is measured (:func:`spearman` of the two
maps), never assumed. Integrated gradients along the ablation path (which also estimate
KL) are in :mod:`tlatlas.atlas.estimators`; :func:`attribution_sums` builds the atlas of
any of them (``estimator=``), this first-order one by default.
"""

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.atlas.ablation import (
    AblationKind,
    PositionPolicy,
    RoleStats,
    ablation_mask,
    check_kind,
    position_mask,
    replacement,
)
from tlatlas.atlas.config import COMPONENT_HOOKS, COMPONENTS, POS_COMPONENTS, AtlasConfig
from tlatlas.atlas.engine import clean_batches, encoded_batches
from tlatlas.atlas.estimators import Estimator, counted, estimate_effects, estimate_hooks
from tlatlas.atlas.sums import AtlasSums, accumulate
from tlatlas.atlas.sweep import ablation_batch
from tlatlas.errors import InvalidInputError, UnknownNameError
from tlatlas.hooks import hook_name, hooks_attached
from tlatlas.metrics import METRICS
from tlatlas.models import LoadedModel, check_layers
from tlatlas.models.forward import CleanRun, decoder, unembed
from tlatlas.tasks import Example
from tlatlas.tokens import TokenBatch

ATTRIBUTION_KINDS: tuple[AblationKind, ...] = ("zero", "mean")
"""Ablations with a first-order estimate (resample needs the exact atlas)."""
ESTIMATED_METRICS = ("dlogp",)
"""Metrics that attribution estimates; the other slots of its atlas are NaN."""
_DLOGP = METRICS.index("dlogp")


def check_attribution_kind(kind: str) -> AblationKind:
    check_kind(kind)
    if kind not in ATTRIBUTION_KINDS:
        raise InvalidInputError(
            f"attribution patching supports {', '.join(ATTRIBUTION_KINDS)} ablation, not "
            f"{kind!r}: a resampled activation is not a small change; use the exact atlas")
    return kind  # type: ignore[return-value]


def attribution_hook_names(layers: Sequence[int]) -> list[str]:
    """The hooks whose activations and gradients the estimate needs (resid_post: always,
    for its gradient, the one the block's write sees)."""
    hooks = ["hook_attn_out", "hook_mlp_out", "hook_resid_post"]
    return [hook_name(layer, h) for layer in layers for h in hooks]


def _ablated_hooks(positions: bool) -> tuple[str, ...]:
    return ("hook_attn_out", "hook_mlp_out") + (("hook_resid_post",) if positions else ())


# --------------------------------------------------------------------------- one batch


def target_logp_grads(
    model: LoadedModel, batch: TokenBatch, hook_names: Sequence[str]
) -> tuple[Float[Tensor, "batch d_vocab"], dict[str, Tensor], dict[str, Tensor]]:
    """One forward and one backward of ``sum_b log p_b(target_b)`` at the scored positions.

    Returns ``(scored logits [batch d_vocab] fp32, activations, gradients)``; activations
    and gradients are detached ``[batch pos d_model]`` per hook name. Parameter ``.grad``
    is left untouched (``torch.autograd.grad`` with respect to the activations only).
    """
    acts: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(act: Tensor, hook: object = None) -> Tensor:
            acts[name] = act
            return act

        return hook

    tokens = batch.tokens.to(model.device)
    with torch.enable_grad(), hooks_attached(model.bridge, [(n, keep(n)) for n in hook_names]):
        hidden = decoder(model)(input_ids=tokens, use_cache=False).last_hidden_state
        rows = torch.arange(tokens.shape[0], device=hidden.device)
        logits = unembed(model, hidden[rows, batch.scored_pos.to(hidden.device)])
        logp = logits.log_softmax(-1).gather(-1, batch.target.to(logits.device)[:, None])
        missing = [n for n in hook_names if n not in acts]
        if missing:
            raise RuntimeError(f"hook point(s) did not fire: {', '.join(missing)}")
        names = list(hook_names)
        grads = torch.autograd.grad(logp.sum(), [acts[n] for n in names], allow_unused=True)
    out_grads = {n: (torch.zeros_like(acts[n]) if g is None else g).detach()
                 for n, g in zip(names, grads, strict=True)}
    return logits.detach(), {n: a.detach() for n, a in acts.items()}, out_grads


def linear_dlogp(
    delta: Float[Tensor, "batch pos d_model"],
    grad: Float[Tensor, "batch pos d_model"],
) -> Float[Tensor, "batch pos"]:
    """First-order Delta-logp of adding ``delta = r - a`` to an activation, per position (fp32).

    Sign: estimates ``log p_clean - log p_ablated``, like ``metrics.effects(...).dlogp``.
    """
    return -(delta.float() * grad.float()).sum(-1)


def attribution_effects(
    model: LoadedModel,
    batch: TokenBatch,
    layers: Sequence[int],
    *,
    ablation: AblationKind = "zero",
    means: dict[str, RoleStats] | None = None,
    positions: bool = False,
    positions_ablated: PositionPolicy = "all",
) -> tuple[CleanRun, Float[Tensor, "component layer batch"],
           Float[Tensor, "pcomp layer batch pos"] | None]:
    """Estimated Delta-logp of every layer (and position) ablation of one batch.

    Returns ``(clean run, layer map [component layer batch], position map
    [pcomp layer batch pos] or None)``; the position map is NaN at pads (positions after
    each row's scored position), as in the exact atlas. All on the CPU, fp32.
    """
    check_attribution_kind(ablation)
    if ablation == "mean" and means is None:
        raise InvalidInputError("mean ablation needs reference statistics (atlas.reference_stats)")
    ablated = [hook_name(layer, h) for layer in layers for h in _ablated_hooks(positions)]
    if ablation == "mean":
        missing = [n for n in ablated if n not in means]
        if missing:
            raise UnknownNameError(f"no reference means for hook(s): {', '.join(missing)}")
    logits, acts, grads = target_logp_grads(model, batch, attribution_hook_names(layers))
    real = position_mask(batch.roles, "all").to(logits.device)
    layer_mask = ablation_mask(batch.roles, positions_ablated).to(logits.device)
    delta = {n: replacement(ablation, acts[n], batch.roles,
                            means=means[n].means() if ablation == "mean" else None) - acts[n]
             for n in ablated}  # r - a, [batch pos d_model]

    def term(layer: int, comp: str) -> Tensor:  # [batch pos], 0 at pads
        hooks = COMPONENT_HOOKS[comp]
        # a block ablation pins both writes, so both see the gradient past the block
        grad_at = "hook_resid_post" if comp == "block" else hooks[0]
        d = sum(delta[hook_name(layer, h)] for h in hooks)
        return linear_dlogp(d, grads[hook_name(layer, grad_at)]) * real

    b, width = batch.tokens.shape
    layer_e = torch.zeros(len(COMPONENTS), len(layers), b)
    pos_e = torch.zeros(len(POS_COMPONENTS), len(layers), b, width) if positions else None
    for li, layer in enumerate(layers):
        for ci, comp in enumerate(COMPONENTS):
            t = term(layer, comp)
            layer_e[ci, li] = (t * layer_mask).sum(-1).cpu()
            if pos_e is not None and comp in POS_COMPONENTS:
                pos_e[POS_COMPONENTS.index(comp), li] = t.cpu()
        if pos_e is not None:
            pos_e[POS_COMPONENTS.index("resid"), li] = term(layer, "resid").cpu()
    if pos_e is not None:
        pos_e = pos_e.masked_fill(~real.cpu(), float("nan"))
    return CleanRun(scored_logits=logits, acts={}, kv=None), layer_e, pos_e


# --------------------------------------------------------------------------- the sweep


def _as_metric_slots(dlogp: Tensor) -> Tensor:
    """Put the estimate in the dlogp slot; other slots 0 (NaN where dlogp is NaN).

    ``sums.accumulate`` reads validity from the kl slot, so it must carry the NaNs; the
    kl / acc_drop sums are set to NaN afterwards.
    """
    out = torch.where(torch.isnan(dlogp), float("nan"), 0.0).expand(len(METRICS), *dlogp.shape)
    out = out.clone()
    out[_DLOGP] = dlogp
    return out


def attribution_sums(
    model: LoadedModel,
    examples: Sequence[Example],
    *,
    ablation: AblationKind = "zero",
    means: dict[str, RoleStats] | None = None,
    batch_size: int = 8,
    positions: bool = False,
    max_offset: int = 32,
    layers: Sequence[int] | None = None,
    families: Sequence[str] | None = None,
    positions_ablated: PositionPolicy = "all",
    on_batch: Callable[[int], None] | None = None,
    estimator: Estimator | None = None,
) -> AtlasSums:
    """The attribution-patching atlas, laid out exactly like ``atlas.compute_atlas_sums``.

    The ``dlogp`` slot of every ``*.sum`` tensor holds the summed first-order estimate;
    the ``kl`` and ``acc_drop`` slots are NaN (see the module docstring). Counts and the
    clean statistics are exact. ``means`` (required for mean ablation) come from
    :func:`tlatlas.atlas.reference_stats` on a reference set, never the scored examples.

    ``estimator`` (:class:`tlatlas.atlas.estimators.Estimator`; None: first order) picks
    another estimate, e.g. integrated gradients with ``steps >= 2``, which fill the ``kl``
    slot too; ``acc_drop`` stays NaN.
    """
    check_attribution_kind(ablation)
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    if max_offset < 1:
        raise InvalidInputError("max_offset must be >= 1")
    if ablation == "mean" and means is None:
        raise InvalidInputError("mean ablation needs reference statistics (atlas.reference_stats)")
    layer_ids = check_layers(model, layers)
    fams = tuple(families) if families is not None else tuple(dict.fromkeys(e.family for e in examples))
    if estimator is not None and estimator.name != "first_order":
        return _estimated_sums(model, examples, estimator, ablation=ablation, means=means,
                               batch_size=batch_size, positions=positions,
                               max_offset=max_offset, layers=layer_ids, families=fams,
                               positions_ablated=positions_ablated, on_batch=on_batch)
    sums = AtlasSums.empty(fams, layer_ids, positions=positions, max_offset=max_offset)
    for exs, batch in encoded_batches(examples, model.tokenizer, batch_size=batch_size):
        clean, layer_e, pos_e = attribution_effects(model, batch, layer_ids, ablation=ablation,
                                                    means=means, positions=positions,
                                                    positions_ablated=positions_ablated)
        accumulate(sums, batch, clean, _as_metric_slots(layer_e),
                   None if pos_e is None else _as_metric_slots(pos_e),
                   [ex.uid for ex in exs])
        if on_batch is not None:
            on_batch(len(batch))
    sums = sums.finished()
    sums.tensors["seen.count"] = sums.tensors["count"].clone()
    sums.tensors["seen.correct"] = sums.tensors["clean.correct"].clone()
    for key in ("layer.sum", "role.sum", "offset.sum", "example.layer", "example.role"):
        if key in sums.tensors:
            for m, metric in enumerate(METRICS):
                if metric not in ESTIMATED_METRICS:
                    sums.tensors[key][m] = float("nan")
    return sums


def _estimated_sums(model: LoadedModel, examples: Sequence[Example], estimator: Estimator, *,
                    ablation: AblationKind, means: dict[str, RoleStats] | None,
                    batch_size: int, positions: bool, max_offset: int, layers: Sequence[int],
                    families: Sequence[str], positions_ablated: PositionPolicy,
                    on_batch: Callable[[int], None] | None) -> AtlasSums:
    """:func:`attribution_sums` for an estimator of :mod:`tlatlas.atlas.estimators`."""
    config = AtlasConfig(ablation=ablation, positions=positions, max_offset=max_offset,
                         batch_size=max(batch_size, 2), layers=tuple(layers),
                         positions_ablated=positions_ablated)
    value_hooks, cached = estimate_hooks(layers, positions)
    hooks = sorted({h.split(".", 2)[2] for h in value_hooks})
    sums = AtlasSums.empty(families, layers, positions=positions, max_offset=max_offset)
    estimated = estimator.metrics
    for cb in clean_batches(model, examples, cached, batch_size=batch_size):
        ctx = ablation_batch(model, cb, config, means, layers, hooks)
        layer_e, pos_e = estimate_effects(ctx, layers, estimator, positions=positions)
        accumulate(sums, cb.batch, cb.clean, counted(layer_e, estimated),
                   None if pos_e is None else counted(pos_e, estimated),
                   [ex.uid for ex in cb.examples])
        if on_batch is not None:
            on_batch(len(cb.batch))
    sums = sums.finished()
    sums.tensors["seen.count"] = sums.tensors["count"].clone()
    sums.tensors["seen.correct"] = sums.tensors["clean.correct"].clone()
    for key in ("layer.sum", "role.sum", "offset.sum", "example.layer", "example.role"):
        if key in sums.tensors:
            for m, metric in enumerate(METRICS):
                if metric not in estimated:
                    sums.tensors[key][m] = float("nan")
    return sums

