"""Estimates of the atlas past first order: integrated gradients along the ablation path.

The exact effect of ablating a node ``n`` (one component's write at one layer, at the
positions the ablation touches) is ``f(r) - f(a)``: ``a`` is the clean activation, ``r``
what the ablation writes (zero, or the reference role mean), and ``f`` is ``-log p(answer)``
(whose difference is Delta-logp) or ``KL(p_clean || p)`` (0 at ``a``, so its difference is
the ablated KL). Integrated gradients writes that difference as an integral along the
straight path ``a + alpha (r - a)``:

    f(r) - f(a) = (r - a) . integral_0^1 grad f(a + alpha (r - a)) d alpha
                ~ (r - a) . mean_i grad f(a + alpha_i (r - a)),

with ``alpha_i = (i + 1/2) / steps`` (the midpoint rule). ``steps = 1`` is ``alpha = 0``,
the first-order estimate of :mod:`tlatlas.atlas.attribution` (attribution patching), which
has no KL estimate: the gradient of KL is 0 at the clean point. With ``steps >= 2`` the
path leaves the clean point and the KL gradient is not 0, so KL is estimated too.

Which path (the cost decides)
-----------------------------
The exact fast path (:mod:`tlatlas.atlas.sweep`) already costs about one forward *from the
node's layer* per node (three components stacked into one forward; positions in chunks
with the clean keys/values as prefix). A node's own path therefore cannot be cheaper than
the exact effect: each point is a forward and a backward from the node's layer.

- ``ig`` (per node, the exact path integral; EAP-IG's "IG-activations" with one node
  interpolated at a time): for each layer, the ``attn`` / ``mlp`` / ``block`` nodes and the
  ``steps`` points are stacked along the batch axis and run from the cached
  ``resid_pre[L]``, with the node's value pinned to ``a + alpha (r - a)``. It converges to
  the exact effect as ``steps`` grows (tested), so it is the reference. It costs about
  ``3 x steps`` exact layer maps; the layer map only (on the position map it would cost
  ``3 x steps`` exact position maps, and is not offered).
- ``ig_joint`` (one shared path, as EAP-IG shares one path for every edge): at point
  ``alpha`` *every* swept ``attn_out`` / ``mlp_out`` write is moved from its recomputed
  value ``x`` to ``x + alpha (r - x)`` at the positions of the layer ablation, in one
  forward from the embeddings; one backward gives the gradient at every node, and each
  node's estimate is ``(r - a) . mean_i grad``. Cost: ``steps`` forward+backward passes for
  both maps, whatever the number of nodes. The approximation: along this path the other
  nodes are ablated too (by the same alpha), so the gradient a node sees at ``alpha``
  is that of a partly ablated model, not of the model with only that node moved; at
  ``alpha -> 1`` every node is ablated at once. The shared path is exact for a model
  that is linear in each node's write given the others; how far it ranks like the exact
  map is measured (``benchmarks/atlas_speed.py``; ``docs/estimate-verify.md``).
- ``bound`` (first order, one forward and backward, as cheap as attribution patching):
  each node's score is ``sum over positions of |r - a| |grad log p|``, the Cauchy-Schwarz
  bound on the magnitude of its first-order term at each position. It keeps what makes
  first order fail on large ablations out of the ranking: a first-order term is small when
  the ablation's direction happens to be near-orthogonal to the gradient, or when terms of
  opposite sign cancel over positions (AtP*'s cancellation), while the effect of a large
  ablation is not. It is a magnitude (nats; no sign), not an estimate of Delta-logp. On
  SmolLM2-135M and Gemma-3-270M it ranks like the exact KL better than the other
  first-order estimates (layer map 0.51-0.64, cells 0.79-0.91; first order 0.34-0.56 and
  0.67-0.89; ``docs/estimate-verify.md``), and the top of its order is as good as the
  Fisher estimates' below at one backward instead of nine, so it is what ``verify`` ranks
  by. Only ``ig`` reaches 0.9 on the layer map (0.96-1.00), at 2.5-5x the exact map's time.
- ``graddrop`` (AtP*, Kramar et al. 2024): first order, with the gradient flowing back
  *into* layer ``l``'s attention and MLP zeroed, once for every layer ``l``; a node's score
  is the mean over ``l`` of the absolute estimates (a magnitude, its sign is lost). It
  targets cancellation between paths; cost one forward and ``n_layers`` backwards.
  AtP*'s other fix, the QK fix, recomputes a head's attention softmax exactly for a
  changed query or key; our nodes are whole residual writes whose effect reaches every
  later layer's queries *and* keys, so the fix there is a forward from the node's layer,
  which is the exact path itself. It is not offered.

- ``fisher`` and ``fisher_bound`` (second order at the clean point, for KL): KL's gradient
  is 0 at the clean point, and its second-order term is ``1/2 d^T F d`` with ``F`` the
  Fisher information of the output distribution with respect to the node's activation
  (``F = sum_y p_y g_y g_y^T``, ``g_y = grad log p_y``), the network linearised at the clean
  point. ``F`` is taken over a coarse distribution: the clean run's ``outcomes`` most likely
  tokens and the rest of the vocabulary as one outcome (a backward each, from one
  forward; coarsening can only lower KL and ``F``, and with ``d_vocab - 1`` outcomes it is
  exact). ``fisher`` is ``1/2 sum_j (g_j . d)^2`` (``g_j = sqrt(q_j) grad log q_j``), the
  second-order KL; ``fisher_bound`` replaces each ``g_j . d`` by ``|g_j| |d|`` summed over
  positions (as ``bound`` does for the answer's log-probability), an upper bound on it that
  no direction can hide. Both fill the ``kl`` slot only. Where ``bound`` ranks by the
  answer token's gradient alone, these see every likely token, which is what the exact KL
  measures. Measured (n = 48 layer maps, n = 12 cells at two seeds, bootstrap intervals):
  ``fisher`` ranks the layer map best of the estimates cheaper than the exact map (0.81-0.89
  against ``bound``'s 0.71-0.79), ``fisher_bound`` ranks the cells best (0.88-0.95, above
  ``bound`` on all eight maps); neither returns the whole exact top 5 in more position
  rankings than ``bound`` does, beyond one ranking in 24 per map.

Every estimate's ``block`` term uses the gradient at ``hook_resid_post`` (the block pins
both of its writes, so the MLP never sees the changed attention output), exactly as the
first-order estimate does; ``attn`` uses the gradient at ``hook_attn_out``.

All of it works for zero and mean ablation (resample: the replacement is another
example's activation, use the exact atlas). Numbers measured with each estimator are in
``docs/estimate-verify.md``.
"""

from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.atlas.ablation import ablation_mask, position_mask
from tlatlas.atlas.config import COMPONENT_HOOKS, COMPONENTS, POS_COMPONENTS
from tlatlas.atlas.estimate_spec import ESTIMATOR_METHODS as ESTIMATOR_METHODS
from tlatlas.atlas.estimate_spec import FIRST_ORDER as FIRST_ORDER
from tlatlas.atlas.estimate_spec import FISHER_METHODS as FISHER_METHODS
from tlatlas.atlas.estimate_spec import MAGNITUDE_METHODS as MAGNITUDE_METHODS
from tlatlas.atlas.estimate_spec import Estimator as Estimator
from tlatlas.atlas.estimate_spec import EstimatorMethod as EstimatorMethod
from tlatlas.atlas.sweep import AblationBatch
from tlatlas.errors import InvalidInputError
from tlatlas.hooks import hook_name, hooks_attached
from tlatlas.metrics import METRICS
from tlatlas.models.forward import decoder, layers_from, unembed

_WRITES = ("hook_attn_out", "hook_mlp_out")


# --------------------------------------------------------------------------- pieces


def objectives(logits: Float[Tensor, "batch d_vocab"], clean_logits: Float[Tensor, "batch d_vocab"],
               target: Int[Tensor, " batch"]) -> dict[str, Tensor]:
    """Scalars whose change is each estimated effect, summed over rows (rows are
    independent, so one backward gives every row's gradient): ``dlogp`` is
    ``-sum log p(target)``, ``kl`` is ``sum KL(p_clean || p)``."""
    lp = logits.float().log_softmax(-1)
    lpc = clean_logits.float().log_softmax(-1)
    return {"dlogp": -lp.gather(-1, target.to(lp.device)[:, None]).sum(),
            "kl": (lpc.exp() * (lpc - lp)).sum()}


def node_terms(delta: dict[str, Tensor], grad: dict[str, Tensor], layers: Sequence[int],
               real: Bool[Tensor, "batch pos"], *, positions: bool, bound: bool = False
               ) -> tuple[Float[Tensor, "component layer batch pos"],
                          Float[Tensor, "pcomp layer batch pos"] | None]:
    """``(r - a) . grad`` per position for every node (0 at pads), fp32; with ``bound``
    its Cauchy-Schwarz bound ``|r - a| |grad|`` instead.

    ``delta`` / ``grad``: hook name -> ``[batch pos d_model]``. ``block`` takes the
    gradient at ``hook_resid_post`` (see the module docstring); ``resid`` needs
    ``hook_resid_post`` in ``delta``.
    """
    def term(layer: int, comp: str) -> Tensor:
        hooks = COMPONENT_HOOKS[comp]
        grad_at = "hook_resid_post" if comp in ("block", "resid") else hooks[0]
        d = sum(delta[hook_name(layer, h)].float() for h in hooks)
        g = grad[hook_name(layer, grad_at)].float()
        if bound:
            return d.norm(dim=-1) * g.norm(dim=-1) * real
        return (d * g).sum(-1) * real

    b, width = real.shape
    layer_t = torch.zeros(len(COMPONENTS), len(layers), b, width, device=real.device)
    pos_t = torch.zeros(len(POS_COMPONENTS), len(layers), b, width, device=real.device) \
        if positions else None
    for li, layer in enumerate(layers):
        for ci, comp in enumerate(COMPONENTS):
            layer_t[ci, li] = term(layer, comp)
        if pos_t is not None:
            for pi, comp in enumerate(POS_COMPONENTS):
                pos_t[pi, li] = layer_t[COMPONENTS.index("block"), li] if comp == "block" \
                    else term(layer, comp)
    return layer_t, pos_t


def forward_from_layer(model, resid: Float[Tensor, "batch pos d_model"], start: int,
                       scored_idx: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_vocab"]:
    """Blocks ``start..`` from the residual ``resid`` (position 0 on), logits at
    ``scored_idx``, with autograd on (the hooks attached by the caller fire)."""
    position_ids = torch.arange(resid.shape[1], device=resid.device)[None]
    with torch.enable_grad(), layers_from(model, start) as dec:
        hidden = dec(inputs_embeds=resid, position_ids=position_ids,
                     use_cache=False).last_hidden_state
        rows = torch.arange(resid.shape[0], device=hidden.device)
        return unembed(model, hidden[rows, scored_idx.to(hidden.device)])


def _normal(t: Tensor) -> Tensor:
    """A tensor autograd may save (the clean run's tensors are inference tensors)."""
    return t.detach().clone()


class _GradGate(torch.autograd.Function):
    """Identity forward; zero gradient backward when ``state["drop"] == layer``."""

    @staticmethod
    def forward(ctx, x, state, layer):  # noqa: D102
        ctx.state, ctx.layer = state, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        return (torch.zeros_like(g) if ctx.state["drop"] == ctx.layer else g), None, None


# --------------------------------------------------------------------------- the paths


def joint_path_grads(ctx: AblationBatch, layers: Sequence[int], alphas: Sequence[float],
                     metrics: Sequence[str], path_mask: Bool[Tensor, "batch pos"], *,
                     max_rows: int = 64) -> dict[str, dict[str, Tensor]]:
    """Mean gradient of each objective along the shared path, at every swept
    ``attn_out`` / ``mlp_out`` (their interpolated values) and ``resid_post``.

    Returns ``metric -> hook name -> [batch pos d_model]`` (fp32, on the model's device).
    """
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    b, dev = len(batch), model.device
    writes = [hook_name(layer, h) for layer in layers for h in _WRITES]
    names = writes + [hook_name(layer, "hook_resid_post") for layer in layers]
    total: dict[str, dict[str, Tensor]] = {m: {} for m in metrics}
    per = max(1, max_rows // b)
    for start in range(0, len(alphas), per):
        chunk = alphas[start:start + per]
        k = len(chunk)
        alpha = torch.tensor(chunk, device=dev).repeat_interleave(b)[:, None, None]
        mask = path_mask.to(dev).repeat(k, 1)[..., None]
        kept: dict[str, Tensor] = {}
        hooks = [(n, _interpolating(_normal(ctx.values[n]).to(dev).repeat(k, 1, 1), alpha,
                                    mask, kept, n)) for n in writes]
        hooks += [(n, _keeping(kept, n)) for n in names[len(writes):]]
        tokens = batch.tokens.to(dev).repeat(k, 1)
        with torch.enable_grad(), hooks_attached(model.bridge, hooks):
            hidden = decoder(model)(input_ids=tokens, use_cache=False).last_hidden_state
            rows = torch.arange(k * b, device=hidden.device)
            logits = unembed(model, hidden[rows, batch.scored_pos.to(dev).repeat(k)])
            fs = objectives(logits, _normal(clean.scored_logits).repeat(k, 1),
                            batch.target.repeat(k))
            for i, m in enumerate(metrics):
                grads = torch.autograd.grad(fs[m], [kept[n] for n in names], allow_unused=True,
                                            retain_graph=i < len(metrics) - 1)
                for n, g in zip(names, grads, strict=True):
                    g = torch.zeros_like(kept[n]) if g is None else g
                    g = g.detach().float().view(k, b, *g.shape[1:]).sum(0)
                    total[m][n] = total[m][n] + g if n in total[m] else g
    return {m: {n: g / len(alphas) for n, g in t.items()} for m, t in total.items()}


def node_path_layer_effects(ctx: AblationBatch, layers: Sequence[int], alphas: Sequence[float],
                            metrics: Sequence[str], *, max_rows: int = 64
                            ) -> Float[Tensor, "metric component layer batch"]:
    """Each layer-map node's own path integral (``ig``): NaN in metrics not estimated."""
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    b, dev = len(batch), model.device
    lmask = ablation_mask(batch.roles, ctx.positions_ablated).to(dev)
    out = torch.full((len(METRICS), len(COMPONENTS), len(layers), b), float("nan"))
    units = [(c, al) for c in range(len(COMPONENTS)) for al in alphas]
    per = max(1, max_rows // b)
    for li, layer in enumerate(layers):
        names = {h: hook_name(layer, h) for h in _WRITES}
        a = {h: _normal(clean.acts[n]) for h, n in names.items()}
        d = {h: _normal(ctx.values[n]).to(dev) - a[h] for h, n in names.items()}
        acc = {m: torch.zeros(len(COMPONENTS), b) for m in metrics}
        for start in range(0, len(units), per):
            chunk = units[start:start + per]
            n_u = len(chunk)
            alpha = torch.tensor([al for _, al in chunk], device=dev).repeat_interleave(b)
            vs, hooks = {}, []
            for h in _WRITES:
                on = torch.tensor([h in COMPONENT_HOOKS[COMPONENTS[c]] for c, _ in chunk],
                                  device=dev).repeat_interleave(b)
                v = (a[h].repeat(n_u, 1, 1) + alpha[:, None, None].to(a[h].dtype)
                     * d[h].repeat(n_u, 1, 1)).requires_grad_()
                vs[h] = v
                hooks.append((names[h], _pinned(v, lmask.repeat(n_u, 1) & on[:, None])))
            resid = _normal(clean.acts[hook_name(layer, "hook_resid_pre")]).repeat(n_u, 1, 1)
            with torch.enable_grad(), hooks_attached(model.bridge, hooks):
                logits = forward_from_layer(model, resid, layer, batch.scored_pos.repeat(n_u))
                fs = objectives(logits, _normal(clean.scored_logits).repeat(n_u, 1),
                                batch.target.repeat(n_u))
                for i, m in enumerate(metrics):
                    grads = torch.autograd.grad(fs[m], [vs[h] for h in _WRITES],
                                                retain_graph=i < len(metrics) - 1)
                    t = sum((d[h].repeat(n_u, 1, 1).float() * g.float()).sum((-1, -2))
                            for h, g in zip(_WRITES, grads, strict=True))
                    comp = torch.tensor([c for c, _ in chunk]).repeat_interleave(b)
                    row = torch.arange(b).repeat(n_u)
                    acc[m].index_put_((comp, row), t.detach().cpu(), accumulate=True)
        for m in metrics:
            out[METRICS.index(m), :, li] = acc[m] / len(alphas)
    return out


def _interpolating(r: Tensor, alpha: Tensor, mask: Tensor, kept: dict[str, Tensor],
                   name: str) -> Callable:
    """Hook: move the recomputed write ``x`` to ``x + alpha (r - x)`` at ``mask``; keep it."""
    def hook(act: Tensor, hook: object = None) -> Tensor:
        v = torch.where(mask, act + alpha.to(act.dtype) * (r.to(act.dtype) - act), act)
        kept[name] = v
        return v

    return hook


def _keeping(kept: dict[str, Tensor], name: str) -> Callable:
    def hook(act: Tensor, hook: object = None) -> Tensor:
        kept[name] = act
        return act

    return hook


def _gated(state: dict[str, int], layer: int, kept: dict[str, Tensor] | None,
           name: str) -> Callable:
    """Hook: a gradient gate on layer ``layer``'s write (see :func:`graddrop_grads`)."""
    def hook(act: Tensor, hook: object = None) -> Tensor:
        v = _GradGate.apply(act, state, layer)
        if kept is not None:
            kept[name] = v
        return v

    return hook


def _pinned(value: Tensor, mask: Tensor) -> Callable:
    def hook(act: Tensor, hook: object = None) -> Tensor:
        return torch.where(mask.to(act.device)[..., None], value.to(act.dtype), act)

    return hook


def _swept(layers: Sequence[int]) -> list[str]:
    """The hooks whose gradients the clean-point estimates take: every swept layer's
    ``attn_out``, ``mlp_out`` and ``resid_post``."""
    return [hook_name(layer, h) for layer in layers for h in (*_WRITES, "hook_resid_post")]


def _clean_point_grads(ctx: AblationBatch, layers: Sequence[int],
                       hooks: list[tuple[str, Callable]], kept: dict[str, Tensor],
                       scalars: Callable[[Tensor], Iterator[Tensor]]
                       ) -> list[dict[str, Tensor]]:
    """One clean forward from the embeddings with ``hooks`` attached (they store the swept
    writes and ``resid_post`` in ``kept``), then the gradient of each scalar that
    ``scalars(logits at the scored positions)`` yields, at every swept ``attn_out`` /
    ``mlp_out`` / ``resid_post``: one ``hook name -> [batch pos d_model]`` dict per scalar.
    The graph is kept until the iterator ends, so it may change state between scalars."""
    model, batch = ctx.model, ctx.batch
    dev = model.device
    names = _swept(layers)
    out = []
    with torch.enable_grad(), hooks_attached(model.bridge, hooks):
        hidden = decoder(model)(input_ids=batch.tokens.to(dev), use_cache=False).last_hidden_state
        rows = torch.arange(len(batch), device=hidden.device)
        logits = unembed(model, hidden[rows, batch.scored_pos.to(dev)])
        for f in scalars(logits):
            grads = torch.autograd.grad(f, [kept[n] for n in names], allow_unused=True,
                                        retain_graph=True)
            out.append({n: (torch.zeros_like(kept[n]) if g is None else g).detach().float()
                        for n, g in zip(names, grads, strict=True)})
    return out


def graddrop_grads(ctx: AblationBatch, layers: Sequence[int]
                   ) -> list[dict[str, Tensor]]:
    """First-order gradients of ``dlogp``, once per dropped layer ``l`` (the gradient into
    layer ``l``'s attention and MLP zeroed; the residual path around it kept).

    Returns one ``hook name -> [batch pos d_model]`` dict per layer of the model."""
    model = ctx.model
    state = {"drop": -1}
    swept = set(layers)
    kept: dict[str, Tensor] = {}
    hooks = [(hook_name(layer, h), _gated(state, layer, kept if layer in swept else None,
                                          hook_name(layer, h)))
             for layer in range(model.n_layers) for h in _WRITES]
    hooks += [(hook_name(layer, "hook_resid_post"), _keeping(kept, hook_name(layer, "hook_resid_post")))
              for layer in layers]

    def dropped(logits: Tensor) -> Iterator[Tensor]:
        f = objectives(logits, _normal(ctx.clean.scored_logits), ctx.batch.target)["dlogp"]
        for drop in range(model.n_layers):
            state["drop"] = drop
            yield f

    return _clean_point_grads(ctx, layers, hooks, kept, dropped)


def coarse_log_probs(logits: Float[Tensor, "batch d_vocab"], outcomes: int
                     ) -> Float[Tensor, "batch outcome"]:
    """``log q``: the output distribution coarsened to each row's ``outcomes`` most likely
    tokens (by the detached logits) and one more outcome, the rest of the vocabulary.
    Coarsening keeps KL and the Fisher information at or below the full distribution's; with
    ``outcomes = d_vocab - 1`` it loses nothing. Masked tokens (``-inf`` logits) are held
    at a finite floor, so that an outcome of probability 0 (the rest, when every other
    token is masked) adds nothing to ``F`` instead of a NaN."""
    lp = logits.float().clamp_min(torch.finfo(torch.float32).min / 2).log_softmax(-1)
    idx = lp.detach().topk(min(outcomes, lp.shape[-1] - 1), -1).indices
    rest = lp.scatter(-1, idx, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([lp.gather(-1, idx), rest], -1)


def fisher_grads(ctx: AblationBatch, layers: Sequence[int], outcomes: int
                 ) -> list[dict[str, Tensor]]:
    """``sqrt(q_j) grad log q_j`` at the clean point for each outcome ``j`` of
    :func:`coarse_log_probs` (rows summed: rows are independent). For a change ``d`` of
    the swept activations ``sum_j (g_j . d)^2 = d^T F d``, ``F`` the Fisher information of
    the coarse distribution, so ``KL(q_clean || q) ~ 1/2 sum_j (g_j . d)^2``.

    Returns one ``hook name -> [batch pos d_model]`` dict per outcome."""
    kept: dict[str, Tensor] = {}
    hooks = [(n, _keeping(kept, n)) for n in _swept(layers)]

    def weighted(logits: Tensor) -> Iterator[Tensor]:
        lq = coarse_log_probs(logits, outcomes)
        w = lq.detach().exp().sqrt()
        for j in range(lq.shape[-1]):
            yield (w[:, j] * lq[:, j]).sum()

    return _clean_point_grads(ctx, layers, hooks, kept, weighted)


# --------------------------------------------------------------------------- one batch


def estimate_effects(ctx: AblationBatch, layers: Sequence[int], estimator: Estimator, *,
                     positions: bool = False
                     ) -> tuple[Float[Tensor, "metric component layer batch"],
                                Float[Tensor, "metric pcomp layer batch pos"] | None]:
    """Estimated effects of every layer (and position) ablation of one batch, laid out like
    the exact :func:`~tlatlas.atlas.sweep.layer_effects` / ``position_effects``.

    ``ctx.values`` must hold the replacements of ``hook_attn_out`` and ``hook_mlp_out``
    (and ``hook_resid_post`` with ``positions``) of every layer in ``layers``, and
    ``ctx.clean.acts`` the clean activations of the same hooks (plus ``hook_resid_pre``
    for ``ig``). Metrics the estimator does not estimate are NaN; the position map is
    NaN at pads. CPU, fp32.
    """
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    dev = model.device
    real = position_mask(batch.roles, "all").to(dev)
    lmask = ablation_mask(batch.roles, ctx.positions_ablated).to(dev)
    b, width = batch.tokens.shape
    hooks = (*_WRITES, "hook_resid_post") if positions else _WRITES
    delta = {hook_name(layer, h): _normal(ctx.values[hook_name(layer, h)]).to(dev).float()
             - clean.acts[hook_name(layer, h)].float() for layer in layers for h in hooks}
    layer_e = torch.full((len(METRICS), len(COMPONENTS), len(layers), b), float("nan"))
    pos_e = torch.full((len(METRICS), len(POS_COMPONENTS), len(layers), b, width),
                       float("nan")) if positions else None
    if estimator.method == "ig" and estimator.steps > 1:
        if positions:
            raise InvalidInputError(
                "the per-node path (ig) is offered for the layer map only: on the position "
                "map it costs 3 x steps exact maps; use ig_joint")
        layer_e = node_path_layer_effects(ctx, layers, estimator.alphas, estimator.metrics,
                                          max_rows=estimator.max_rows)
        return layer_e, None
    if estimator.method in FISHER_METHODS:
        m = METRICS.index("kl")
        lsum = torch.zeros(len(COMPONENTS), len(layers), b, device=dev)
        psum = torch.zeros(len(POS_COMPONENTS), len(layers), b, width, device=dev)
        for grad in fisher_grads(ctx, layers, estimator.outcomes):
            lt, pt = node_terms(delta, grad, layers, real, positions=positions,
                                bound=estimator.method == "fisher_bound")
            lsum += (lt * lmask).sum(-1).square()
            if pt is not None:
                psum += pt.square()
        layer_e[m] = (lsum / 2).cpu()
        if pos_e is not None:
            pos_e[m] = (psum / 2).cpu()
    elif estimator.method == "graddrop":
        m = METRICS.index("dlogp")
        lsum = torch.zeros(len(COMPONENTS), len(layers), b, device=dev)
        psum = torch.zeros(len(POS_COMPONENTS), len(layers), b, width, device=dev)
        variants = graddrop_grads(ctx, layers)
        for grad in variants:
            lt, pt = node_terms(delta, grad, layers, real, positions=positions)
            lsum += (lt * lmask).sum(-1).abs()
            if pt is not None:
                psum += pt.abs()
        layer_e[m] = (lsum / len(variants)).cpu()
        if pos_e is not None:
            pos_e[m] = (psum / len(variants)).cpu()
    else:
        grads = joint_path_grads(ctx, layers, estimator.alphas, estimator.metrics, lmask,
                                 max_rows=estimator.max_rows)
        for metric, grad in grads.items():
            m = METRICS.index(metric)
            lt, pt = node_terms(delta, grad, layers, real, positions=positions,
                                bound=estimator.method == "bound")
            layer_e[m] = (lt * lmask).sum(-1).cpu()
            if pos_e is not None:
                pos_e[m] = pt.cpu()
    if pos_e is not None:
        pos_e = pos_e.masked_fill(~real.cpu(), float("nan"))
    return layer_e, pos_e


def has_estimate(est: Float[Tensor, "metric ..."]) -> Bool[Tensor, "..."]:
    """Where an estimate has a value (in some metric: which ones depends on the estimator;
    NaN in every metric at pads)."""
    return ~torch.isnan(est).all(0)


def counted(e: Float[Tensor, "metric ..."], estimated: Sequence[str]) -> Tensor:
    """``e`` with the metrics not in ``estimated`` set to 0 where the entry is real (see
    :func:`has_estimate`) but has no value, so that ``sums.accumulate`` (which reads
    validity from the ``kl`` slot) counts it; the caller NaNs those metrics afterwards.
    Values there (a verified entry's exact ones) are kept."""
    out = e.clone()
    valid = has_estimate(e)
    for i, metric in enumerate(METRICS):
        if metric not in estimated:
            out[i] = torch.where(valid & torch.isnan(e[i]), 0.0, e[i])
    return out


def estimate_hooks(layers: Sequence[int], positions: bool) -> tuple[list[str], list[str]]:
    """(hooks whose replacements an estimate needs, hooks its clean run must cache)."""
    hooks = (*_WRITES, "hook_resid_post") if positions else _WRITES
    values = [hook_name(layer, h) for layer in layers for h in hooks]
    return values, values + [hook_name(layer, "hook_resid_pre") for layer in layers]


__all__ = ["ESTIMATOR_METHODS", "FIRST_ORDER", "Estimator", "coarse_log_probs", "counted",
           "estimate_effects", "estimate_hooks", "fisher_grads", "forward_from_layer",
           "graddrop_grads", "has_estimate", "joint_path_grads",
           "node_path_layer_effects", "node_terms", "objectives"]
