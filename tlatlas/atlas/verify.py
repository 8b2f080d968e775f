"""Estimate, then verify: rank every atlas entry by an estimate, compute the exact effects
of the top of that ranking with the exact fast path, and stop when the top is settled.

What is ranked
--------------
- **Layer map** (``layer_ranking="pooled"``, the default): every (component, layer) entry
  in one ranking by the family-averaged estimate of ``rank_metric`` (the hub's own
  average: each family weighted equally), whose top ``top_k`` is settled; and the
  ``block`` layers in a ranking of their own whose top 1 (the hub) is settled too.
  ``per_component``: the top ``top_k`` layers of each of ``attn``, ``mlp``, ``block`` (what
  a LoRA plan per module type needs; about three times the verification). Verifying an
  entry runs its ablation exactly on *every* example (one forward from the layer per
  batch, the selected components of that layer stacked), so a verified entry is exact
  in every family and example.
- **Position map** (with ``positions``): for each example and each position component
  (``resid``, ``block``) its cells (layer, position <= scored position), by that example's
  own estimate, top ``top_k`` settled. Cells are verified in rounds while the batch's
  clean run is alive, grouped by position chunk (clean keys/values of earlier positions
  as the prefix) and stacked over layers and examples.

The stopping rule (per ranking)
------------------------------
Entries are verified in estimate order, ``top_k + patience`` first, then ``patience`` at a
time (position map, ``scored_first``: every layer's cell at the scored position is
verified up front, before the estimate order; those cells cost a one-token suffix each,
hold the map's largest effects, and are the ones an estimate orders worst among
themselves). A ranking is **settled** when the exact top-``top_k`` set among its verified entries
did not change over its last ``patience`` verified entries, i.e. none of the last
``patience`` is in the exact top-``top_k`` of all verified entries (ties go to the entry
verified first); or when every entry is verified. ``patience`` defaults to ``2 * top_k``. The
rule trusts the estimate's *order* beyond the window, not its values: an entry the
estimate ranks below ``patience`` consecutive entries that all failed to enter the
top-``top_k`` is assumed not to enter it. How often that fails is measured (recall of the
exact top-``top_k`` in ``benchmarks/atlas_speed.py``, ``docs/estimate-verify.md``), never
assumed.

``rule="bound"`` (layer map only): ``patience`` entries per round, and a ranking is
settled when the largest ratio *exact / score* among its verified entries, times the
largest unverified score, is below its ``top_k``-th exact value: nothing unverified enters
the top unless the order's score under-states it more than it under-stated every entry
checked (:func:`bound_rule`).

The order of the layer map
--------------------------
With ``screen=J`` (default 1) by the **exact** map on the first ``J`` examples of each
family (:func:`screen_examples`): unbiased, at ``J / examples per family`` of the exact
map's cost; with ``screen=0`` by the estimate. With a position map the gradient pass runs
anyway, and the screen is taken only when it is at most ``screen_share`` of the examples
(``record["ordered_by"]``). Without a position map the screen is then
also the estimate: no gradient pass runs, and an unverified entry holds its family's
exact mean over the screened examples (every metric, ``acc_drop`` included;
``record["filled_by"]``). A screen that takes every example is the exact map itself:
nothing is left to verify.

What the atlas records
----------------------
``layer.sum`` / ``example.layer`` hold exact values at verified entries and the estimate
elsewhere (NaN in metrics the estimator does not give, e.g. ``acc_drop``);
``layer.verified`` [component layer family] counts the examples whose value is exact
(an entry is exact where it equals ``count``; counts add when shards merge);
``layer.estimate`` [metric component layer family] keeps the summed estimate of every
entry. With positions: ``role.verified`` / ``offset.verified`` count exact cells (compare
with ``role.count`` / ``offset.count``), ``role.estimate`` / ``offset.estimate`` are the
estimate's sums and ``example.role_verified`` [pcomp layer role example] is the share of an
example's cells of that role that are exact. Hub detection uses verified layers only
(:func:`tlatlas.atlas.hubs.verified_layer_mask`).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.atlas.attribution import check_attribution_kind
from tlatlas.atlas.config import COMPONENTS, AtlasConfig
from tlatlas.atlas.engine import clean_batches
from tlatlas.atlas.entries import layer_entry_effects, position_cell_effects
from tlatlas.atlas.estimators import counted, estimate_effects, estimate_hooks, has_estimate
from tlatlas.atlas.sums import AtlasSums, accumulate
from tlatlas.atlas.sweep import (
    AblationBatch,
    ablation_batch,
    compute_atlas_sums,
    correct_examples,
)
from tlatlas.atlas.verify_spec import DEFAULT_ESTIMATOR as DEFAULT_ESTIMATOR
from tlatlas.atlas.verify_spec import STOPPING_RULE as STOPPING_RULE
from tlatlas.atlas.verify_spec import LayerRanking as LayerRanking
from tlatlas.atlas.verify_spec import VerifyConfig
from tlatlas.errors import InvalidInputError
from tlatlas.hooks import hook_name
from tlatlas.metrics import METRICS
from tlatlas.models import LoadedModel, check_layers
from tlatlas.tasks import Example

_WRITES = ("hook_attn_out", "hook_mlp_out")


# --------------------------------------------------------------------------- the rule


def top_k_settled(exact: Float[Tensor, " verified"], top_k: int, patience: int) -> bool:
    """Whether a ranking verified this far (exact values in estimate order) is settled."""
    v = exact.numel()
    if v < top_k + patience:
        return False
    top = torch.sort(exact.double().nan_to_num(nan=-torch.inf), descending=True,
                     stable=True).indices[:top_k]
    return bool((top < v - patience).all())


Settled = Callable[[list[int], list[int], int, dict[int, float]], bool]
"""A stopping test: ``(verified ids in order, unverified ids in order, top_k, id -> exact
value) -> settled?``."""


def patience_rule(patience: int) -> Settled:
    """The ``patience`` rule: none of the last ``patience`` verified entries is in the exact
    top ``k`` (:func:`top_k_settled`)."""
    def settled(done: list[int], rest: list[int], k: int, got: dict[int, float]) -> bool:
        return top_k_settled(torch.tensor([got[e] for e in done]), k, patience)
    return settled


def bound_rule(score: Float[Tensor, " entry"]) -> Settled:
    """The ``bound`` rule over a non-negative ``score`` [entry id] (the order's values):
    the largest ratio ``exact / score`` among the verified entries, times the largest
    unverified score, is below the ``k``-th exact value. An estimated bound: nothing
    unverified enters the top ``k`` unless the score under-states it more than it did every
    entry checked so far."""
    score = score.double().nan_to_num(nan=0.0).clamp_min(0.0)

    def settled(done: list[int], rest: list[int], k: int, got: dict[int, float]) -> bool:
        if len(done) < k:
            return False
        values = torch.tensor([got[e] for e in done], dtype=torch.float64).nan_to_num(nan=0.0)
        ratio = float((values / score[done].clamp_min(1e-12)).max())
        kth = float(torch.sort(values, descending=True).values[k - 1])
        return ratio * float(score[rest].max()) < kth
    return settled


def settle(rankings: Sequence[tuple[Sequence[int], int, int]],
           exact: Callable[[list[int]], Tensor], window: int,
           settled: Settled | None = None) -> tuple[dict[int, float], int]:
    """Verify entries of several rankings in their order until each is settled.

    ``rankings``: ``(entry ids in verification order, top_k, first)``: the first ``first``
    entries are verified up front whatever the rule says (cheap ones), then ``top_k +
    window`` (counting the up-front entries toward it verifies fewer and, replayed on
    the position map, lost recall on two of four maps), then ``window`` at a time until
    ``settled`` (default: :func:`patience_rule`
    with ``window``) holds or every entry is verified; rankings may share entries
    (verified once). ``exact(ids)`` verifies new entries and returns their exact values of
    the rank metric. Returns ``(entry id -> exact value, rounds)``; a round asks ``exact``
    once for the union of every unsettled ranking's next entries.
    """
    settled = settled or patience_rule(window)
    got: dict[int, float] = {}
    seen = [0] * len(rankings)
    upto = [min(first + k + window, len(order)) for order, k, first in rankings]
    done = [len(order) == 0 for order, _, _ in rankings]
    rounds = 0
    while not all(done):
        new = list(dict.fromkeys(e for i, (order, _, _) in enumerate(rankings) if not done[i]
                                 for e in order[seen[i]:upto[i]] if e not in got))
        if new:
            got.update(zip(new, exact(new).tolist(), strict=True))
            rounds += 1
        for i, (order, k, _) in enumerate(rankings):
            if done[i]:
                continue
            seen[i] = upto[i]
            if seen[i] >= len(order) or settled(list(order[:seen[i]]), list(order[seen[i]:]),
                                                k, got):
                done[i] = True
            else:
                upto[i] = min(seen[i] + window, len(order))
    return got, rounds


def verified_top_k(exact: Float[Tensor, " entry"], verified: Bool[Tensor, " entry"],
                   top_k: int) -> Int[Tensor, " k"]:
    """Indices of the ``top_k`` largest exact values among verified entries."""
    score = torch.where(verified, exact.double().nan_to_num(nan=-torch.inf), -torch.inf)
    k = min(top_k, int(verified.sum()))
    return torch.sort(score, descending=True, stable=True).indices[:k]


def rank_scores(est: Float[Tensor, "metric ..."], rank_metric: str) -> Tensor:
    """What entries are ranked by: the estimate of ``dlogp`` (signed) or ``|KL|`` (a
    few-point path integral of KL can come out negative; the exact KL cannot), and
    ``|dlogp|`` where the estimator gives no KL."""
    m = METRICS.index(rank_metric)
    if rank_metric == "dlogp":
        return est[m]
    if torch.isnan(est[m]).all():
        return est[METRICS.index("dlogp")].abs()
    return est[m].abs()


# --------------------------------------------------------------------------- position map


def verify_positions(ctx: AblationBatch, layers: Sequence[int],
                     estimate: Float[Tensor, "metric pcomp layer batch pos"],
                     verify: VerifyConfig
                     ) -> tuple[Float[Tensor, "metric pcomp layer batch pos"],
                                Bool[Tensor, "pcomp layer batch pos"]]:
    """One batch's position map with each example's top cells verified (see the rule).

    Returns ``(values, verified)``: exact values where verified, the estimate elsewhere
    (NaN at pads)."""
    score = rank_scores(estimate, verify.rank_metric)  # [pcomp layer batch pos]
    m = METRICS.index(verify.rank_metric)
    values = estimate.clone()
    verified = torch.zeros(score.shape, dtype=torch.bool)
    n_p, n_l, b, width = score.shape
    valid = has_estimate(estimate)
    flat = torch.where(valid, score.nan_to_num(nan=-torch.inf), -torch.inf)
    # one ranking per (pcomp, row); entry id = flat index into [pcomp layer batch pos].
    # The scored position's cells go first (verified up front: a one-token suffix each).
    ids_all = torch.arange(n_p * n_l * b * width).view(n_p, n_l, b, width)
    rankings = []
    for p in range(n_p):
        for r in range(b):
            at = int(ctx.batch.scored_pos[r])
            front = torch.zeros(n_l, width, dtype=torch.bool)
            if verify.scored_first:
                front[:, at] = True
            s_ = torch.where(front, torch.inf, flat[p, :, r]).flatten()
            order = torch.sort(s_, descending=True, stable=True).indices[:int(valid[p, :, r].sum())]
            rankings.append((ids_all[p, :, r].flatten()[order].tolist(), verify.top_k,
                             int(front.sum())))

    def exact(ids: list[int]) -> Tensor:
        idx = torch.tensor(ids)
        p, li, r, pos = torch.unravel_index(idx, (n_p, n_l, b, width))
        cells = torch.stack([p, torch.tensor(layers)[li], r, pos], 1)
        e = position_cell_effects(ctx, cells, chunk=verify.chunk, max_rows=verify.max_rows)
        values[:, p, li, r, pos] = e
        verified[p, li, r, pos] = True
        return e[m]

    settle(rankings, exact, verify.window)
    return values, verified


# --------------------------------------------------------------------------- layer map


def screen_examples(examples: Sequence[Example], families: Sequence[str], per_family: int
                    ) -> list[Example]:
    """The first ``per_family`` examples of each family, in the order given (a stratified
    sample when the suite is; every example of a family that has fewer)."""
    taken = dict.fromkeys(families, 0)
    picked = []
    for ex in examples:
        if taken.get(ex.family, per_family) < per_family:
            taken[ex.family] += 1
            picked.append(ex)
    return picked


def family_average(sums_: Float[Tensor, "... family"], count: Float[Tensor, " family"]
                   ) -> Tensor:
    """Mean over families (each weighted equally) of the per-family means."""
    present = count > 0
    return (sums_[..., present] / count[present]).mean(-1)


def _order(score: Tensor) -> Tensor:
    return torch.sort(score, descending=True, stable=True).indices


def verify_layers(model: LoadedModel, examples: Sequence[Example], config: AtlasConfig,
                  verify: VerifyConfig, layers: Sequence[int], families: Sequence[str],
                  score: Float[Tensor, "component layer"], count: Float[Tensor, " family"], *,
                  means=None, known: tuple[Tensor, dict[int, Tensor]] | None = None
                  ) -> tuple[Tensor, dict[int, Tensor], Bool[Tensor, "component layer"], int]:
    """Verify the layer map's rankings (``verify.layer_ranking``) until settled.

    Returns ``(exact sums [metric component layer family] (NaN where not verified),
    uid -> exact rows [metric component layer] (NaN where not verified), verified mask,
    rounds)``; each round is one pass over the examples (a clean forward per batch and the
    selected entries' forwards, :func:`~tlatlas.atlas.entries.layer_entry_effects`).
    ``known``: exact values already computed for other examples (a screen's: their sums
    [metric component layer family] and uid -> rows [metric component layer]), added to
    every verified entry instead of computed again; ``count`` counts them too."""
    n_c, n_l = score.shape
    m = METRICS.index(verify.rank_metric)
    flat = score.double().nan_to_num(nan=-torch.inf)
    block = COMPONENTS.index("block")
    if verify.layer_ranking == "pooled":
        rankings = [(_order(flat.flatten()), verify.top_k),
                    (block * n_l + _order(flat[block]), 1)]
    else:
        rankings = [(c * n_l + _order(flat[c]), verify.top_k) for c in range(n_c)]
    rankings = [(order.tolist(), k, 0) for order, k in rankings]
    exact = torch.full((len(METRICS), n_c, n_l, len(families)), float("nan"), dtype=torch.float64)
    rows: dict[int, Tensor] = {}
    verified = torch.zeros(n_c, n_l, dtype=torch.bool)

    def run(ids: list[int]) -> Tensor:
        sel_c = torch.tensor(ids) // n_l
        sel_l = torch.tensor(ids) % n_l
        need = sorted({layers[li] for li in sel_l.tolist()})
        cached = [hook_name(layer, h) for layer in need for h in (*_WRITES, "hook_resid_pre")]
        entries = [(int(c), layers[int(li)]) for c, li in zip(sel_c, sel_l, strict=True)]
        exact[:, sel_c, sel_l] = 0.0 if known is None else known[0][:, sel_c, sel_l].double()
        for uid, got in ({} if known is None else known[1]).items():
            row = rows.setdefault(uid, torch.full((len(METRICS), n_c, n_l), float("nan")))
            row[:, sel_c, sel_l] = got[:, sel_c, sel_l]
        for cb in clean_batches(model, examples, cached, batch_size=config.batch_size,
                                mixed=True):
            ctx = ablation_batch(model, cb, config, means, need, _WRITES)
            e = layer_entry_effects(ctx, entries, max_rows=verify.max_rows)  # [metric entry batch]
            fam = torch.tensor([families.index(f) for f in cb.batch.families])
            onehot = torch.nn.functional.one_hot(fam, len(families)).double()
            exact[:, sel_c, sel_l] += torch.einsum("meb,bf->mef", e.double(), onehot)
            for j, ex in enumerate(cb.examples):
                row = rows.setdefault(ex.uid, torch.full((len(METRICS), n_c, n_l), float("nan")))
                row[:, sel_c, sel_l] = e[:, :, j]
        verified[sel_c, sel_l] = True
        return family_average(exact[m, sel_c, sel_l], count)

    rule = bound_rule(flat.flatten()) if verify.rule == "bound" else None
    _, rounds = settle(rankings, run, verify.window, rule)
    return exact, rows, verified, rounds


# --------------------------------------------------------------------------- the atlas


def verify_sums(
    model: LoadedModel,
    examples: Sequence[Example],
    config: AtlasConfig,
    verify: VerifyConfig = VerifyConfig(),  # noqa: B008 (frozen)
    *,
    families: Sequence[str] | None = None,
    means=None,
    on_batch: Callable[[int], None] | None = None,
    on_positions: Callable[[tuple[int, ...], Tensor, Tensor], None] | None = None,
) -> tuple[AtlasSums, dict[str, Any]]:
    """The atlas by estimate, then verify (module docstring); returns ``(sums, record)``.

    ``record`` (for the atlas's metadata): the verify settings, the stopping rule, how
    many entries / cells were verified out of how many, the layer rounds and the seconds
    of each stage. ``on_positions(uids, values, verified)`` sees each batch's position map
    (``[metric pcomp layer batch pos]``, ``[pcomp layer batch pos]``).
    """
    check_attribution_kind(config.ablation)
    if config.batch_size < 1:
        raise InvalidInputError("verify needs a batch size >= 2 (a batch size chosen from the "
                                "memory budget, batch_size=0, is not supported here yet)")
    layers = check_layers(model, config.layers)
    if config.ablation == "mean" and means is None:
        raise InvalidInputError("mean ablation needs reference statistics (reference_stats)")
    fams = tuple(families) if families is not None else tuple(dict.fromkeys(e.family for e in examples))
    est = verify.estimator
    sums = AtlasSums.empty(fams, layers, positions=config.positions, max_offset=config.max_offset)
    if config.correct_only:
        examples, seen = correct_examples(model, examples, fams, batch_size=config.batch_size)
    est_pos = AtlasSums.empty(fams, layers, positions=True, max_offset=config.max_offset) \
        if config.positions else None
    ver_pos = AtlasSums.empty(fams, layers, positions=True, max_offset=config.max_offset) \
        if config.positions else None
    timings = {"estimate": 0.0, "verify_positions": 0.0}
    screen_mean = None
    picked = screen_examples(examples, fams, verify.screen) if verify.screen else []
    if config.positions and len(picked) > verify.screen_share * len(examples):
        picked = []  # the gradient pass runs anyway; a screen this large costs more than it saves
    if picked:  # the exact map on a few examples per family
        t0 = time.perf_counter()
        screened = compute_atlas_sums(  # a few examples of each family: batches mix them
            model, picked, replace(config, layers=layers, positions=False, method="exact",
                                   correct_only=False), families=fams, means=means,
            mixed=True).tensors
        screen_mean = screened["layer.sum"] / screened["count"].clamp_min(1)  # [m c l family]
        timings["screen"] = time.perf_counter() - t0
    # without a position map the screen is the estimate: no gradient pass, a clean run only
    by_screen = screen_mean is not None and not config.positions
    estimated = METRICS if by_screen else est.metrics
    value_hooks, cached = estimate_hooks(layers, config.positions)
    hooks = sorted({h.split(".", 2)[2] for h in value_hooks})
    n_cells = n_verified = 0
    for cb in clean_batches(model, examples, [] if by_screen else cached,
                            batch_size=config.batch_size, mixed=by_screen):
        t0 = time.perf_counter()
        if by_screen:
            fam = [fams.index(f) for f in cb.batch.families]
            layer_e, pos_e = screen_mean[..., fam].float(), None
        else:
            ctx = ablation_batch(model, cb, config, means, layers, hooks)
            layer_e, pos_e = estimate_effects(ctx, layers, est, positions=config.positions)
        timings["estimate"] += time.perf_counter() - t0
        uids = tuple(ex.uid for ex in cb.examples)
        if pos_e is not None:
            t0 = time.perf_counter()
            values, ver = verify_positions(ctx, layers, pos_e, verify)
            timings["verify_positions"] += time.perf_counter() - t0
            real = has_estimate(pos_e)
            n_cells += int(real.sum())
            n_verified += int(ver.sum())
            accumulate(est_pos, cb.batch, cb.clean, counted(layer_e, est.metrics),
                       counted(pos_e, est.metrics))
            flag = torch.where(real, ver.float(), float("nan")).expand(len(METRICS), *ver.shape)
            accumulate(ver_pos, cb.batch, cb.clean, torch.zeros_like(layer_e), flag, uids)
            if on_positions is not None:
                on_positions(uids, values, ver)
            pos_e = counted(values, est.metrics)
        accumulate(sums, cb.batch, cb.clean, layer_e, pos_e, uids)
        if on_batch is not None:
            on_batch(len(cb.batch))
    sums = sums.finished()
    t = sums.tensors
    not_est = [i for i, metric in enumerate(METRICS) if metric not in estimated]
    t["layer.estimate"] = t["layer.sum"].clone()
    t["layer.estimate"][not_est] = float("nan")
    # the layer map: verify in rounds (in the screen's order, or the estimate's), then put
    # the exact values in place
    t0 = time.perf_counter()
    if screen_mean is None:
        score = rank_scores(family_average(t["layer.estimate"], t["count"]), verify.rank_metric)
        known, rest = None, examples
    else:  # the screen's order; its examples' exact values are not computed again
        score = rank_scores(family_average(screened["layer.sum"], screened["count"]),
                            verify.rank_metric)
        screened_rows = {int(u): screened["example.layer"][..., j]
                         for j, u in enumerate(screened["example.id"].tolist())}
        known = (screened["layer.sum"], screened_rows)
        rest = [ex for ex in examples if ex.uid not in screened_rows]
    if known is not None and not rest:
        # the screen took every example: it is the exact map, and nothing is left to verify
        exact, rows = known[0].double(), known[1]
        vmask = torch.ones(exact.shape[1:3], dtype=torch.bool)
        rounds = 0
    else:
        exact, rows, vmask, rounds = verify_layers(model, rest, config, verify, layers, fams,
                                                   score, t["count"], means=means, known=known)
    timings["verify_layers"] = time.perf_counter() - t0
    screened_n = {"screened": len(picked), "ordered_by": "screen" if picked else "estimator",
                  "filled_by": "screen" if by_screen else "estimator"}
    # unverified entries keep the estimate (NaN in metrics it does not give)
    t["layer.sum"] = torch.where(vmask[None, :, :, None], exact, t["layer.sum"])
    t["layer.verified"] = vmask[:, :, None].double() * t["count"][None, None]
    if "example.id" in t:
        where = {int(u): i for i, u in enumerate(t["example.id"].tolist())}
        for uid, row in rows.items():
            j = where[uid]
            t["example.layer"][:, :, :, j] = torch.where(vmask[None], row,
                                                         t["example.layer"][:, :, :, j])
    record: dict[str, Any] = {**verify.to_dict(), "layer_entries": int(vmask.numel()),
                              "layer_verified": int(vmask.sum()), "layer_rounds": rounds,
                              **screened_n}
    if config.positions:
        est_pos, ver_pos = est_pos.finished(), ver_pos.finished()
        for key in ("role", "offset"):
            t[f"{key}.estimate"] = est_pos.tensors[f"{key}.sum"].clone()
            t[f"{key}.estimate"][not_est] = float("nan")
            t[f"{key}.verified"] = ver_pos.tensors[f"{key}.sum"][0].clone()
            partial = t[f"{key}.verified"] < t[f"{key}.count"][None, None]
            for i in not_est:
                t[f"{key}.sum"][i] = t[f"{key}.sum"][i].masked_fill(partial, float("nan"))
        if "example.role" in t:
            frac = ver_pos.tensors["example.role"][0]
            t["example.role_verified"] = frac
            for i in not_est:
                t["example.role"][i] = t["example.role"][i].masked_fill(frac < 1, float("nan"))
        record.update(cells=n_cells, cells_verified=n_verified)
    if not config.correct_only:
        seen = {"seen.count": t["count"].clone(), "seen.correct": t["clean.correct"].clone()}
    t.update(seen)
    record["seconds"] = timings
    return sums, record


__all__ = ["DEFAULT_ESTIMATOR", "STOPPING_RULE", "Settled", "VerifyConfig", "bound_rule",
           "family_average", "patience_rule", "rank_scores", "settle", "top_k_settled", "verified_top_k", "verify_layers", "verify_positions",
           "verify_sums"]
