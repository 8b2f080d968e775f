"""Steering and quantization blocks: how steerable is each layer, against random and
partition directions, in quantized copies, and carried from one model to another?

Smoke size (CPU, SmolLM2-135M, one seed):

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks quant-speed,steer-controls,steer-quant
    python -m experiments.run --models smollm2-135m gemma3-270m --size smoke --blocks steer-transfer

``steer-controls`` and ``steer-quant`` split each family's examples (``heldout_fraction``,
so ``per_family`` >= 4 even at smoke size: two training prompts per family for the
partition control's halves, two held out), estimate the vectors and the partition
control on the training part (:func:`tlatlas.steering.fit_vectors`) and score the
held-out part. Each records the KL grids of the vector and both controls, per-sign
summaries (the most negative and the largest positive scale, and the smallest |s| of
each sign), the per-layer slopes and specificity with 95% intervals
(:func:`~tlatlas.steering.layer_steerability`), the most steerable layer per family and
over all families (:func:`~tlatlas.steering.most_steerable`), and for each quantized row
its amplification over the reference row with intervals
(:func:`~tlatlas.steering.amplification_intervals`) and its clean drift
(:func:`~tlatlas.steering.drift_stats`).

Rule. Every interval is a 95% percentile bootstrap over the held-out examples (within
families) and the control draws; n is the number of held-out examples. The verdict is
:func:`experiments.blocks.base.judged`'s default: *supported* when the interval lies
above 0, *contradicted* when below, else *inconclusive*; at smoke size every claim is
*smoke: not evidence* and none is a gem.

- ``steer-controls``: "the direction beats the random (partition) control" is the
  specificity at the most steerable layer (vector slope minus the mean control slope,
  nats of log p(answer) per unit s). That layer is chosen on the same held-out prompts
  (the largest of the two specificities' minimum, among the steered layers), so its
  interval is optimistic; a threat says so.
- ``steer-quant``: "row P amplifies steering" is P's KL / the reference's KL (same
  examples, paired) minus 1, at the reference's most steerable layer, at the smallest
  |s| of each sign and at the most negative scale (the origin report's s = -4). A
  vector whose amplification is no larger than the random control's, or a row whose
  clean drift is as large as the steering KL, is a threat.
- ``steer-transfer`` records means only (no per-example values): its claims carry n
  and the verdict *inconclusive* (no interval), or *smoke: not evidence*.
"""

import math

from experiments.blocks.base import (
    Block,
    Statement,
    by_model_size,
    judged,
    register_block,
    size_costs,
)
from experiments.context import release_models

QUANT_PRECISIONS = ("fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8")


def _claim(text: str, n: int, size: str, sources: tuple[str, ...], **origin) -> Statement:
    """A claim without an interval (the block's stated rule): never evidence on its own."""
    return Statement(kind="claim", text=text, sources=sources, n=int(n),
                     verdict="smoke: not evidence" if size == "smoke" else "inconclusive",
                     **origin)


def _sized(smoke: dict, small: dict, full: dict) -> dict:
    """Parameters per size. At ``small`` a block runs on one suite seed (``suite_seeds``,
    read by the runner): its claims' n is held-out prompts x control draws within the run,
    and one seed is what a 2-core CPU affords; ``full`` replicates over the default three."""
    return {"smoke": smoke, "small": {"suite_seeds": [42]} | small, "full": full}


def _cost(smoke: float, small: float, full: float, memory: float = 3.0) -> dict:
    return size_costs(smoke, small, full, memory=memory, full_memory=memory * 2)


def _layers(params: dict, n_layers: int) -> tuple[int, ...]:
    return tuple(range(0, n_layers, int(params.get("layer_stride", 1))))


def _config(params: dict, n_layers: int | None = None):
    """The sweep's :class:`~tlatlas.steering.SteeringConfig` from a block's parameters:
    ``regime`` (its grid unless ``scales`` is given), draws, held-out fraction, layers."""
    from tlatlas.steering import SteeringConfig

    kw = {"regime": params.get("regime", "linear"),
          "random_draws": int(params["random_draws"]),
          "partition_draws": int(params.get("partition_draws", 0)),
          "heldout_fraction": float(params.get("heldout_fraction", 0.5))}
    if params.get("scales") is not None:
        kw["scales"] = tuple(float(s) for s in params["scales"])
    if n_layers is not None:
        kw["layers"] = _layers(params, n_layers)
    return SteeringConfig(**kw)


def _interval(d: dict):
    """A :class:`tlatlas.stats.Interval` from its ``to_dict``."""
    from tlatlas.stats import Interval

    return Interval(estimate=d["estimate"], ci_low=d["ci"][0], ci_high=d["ci"][1], n=d["n"])


def _shifted(d: dict, by: float) -> dict:
    return {**d, "estimate": d["estimate"] - by, "ci": [d["ci"][0] - by, d["ci"][1] - by]}


def _ci(d: dict | None, signed: bool = True) -> str:
    if d is None:
        return "n/a"
    est = f"{d['estimate']:+.3g}" if signed else f"{d['estimate']:.3g}"
    return f"{est} [{d['ci'][0]:.3g}, {d['ci'][1]:.3g}]"


# --------------------------------------------------------------------------- quant speed


def run_quant_speed(ctx) -> dict:
    """Forward time and next-token KL against fp32 of each precision copy, one at a time."""
    import torch

    from tlatlas.metrics import effects
    from tlatlas.steering.precision import forward_times, free_model, load_precision, pass_seconds
    from tlatlas.tokens import encode_batch

    examples = list(ctx.suite())
    release_models()
    out, ref = {}, None
    for label in ctx.params["precisions"]:
        ctx.say(f"precision {label}")
        model = load_precision(ctx.model_name, label)
        ctx.fingerprints.setdefault(ctx.model_name, model.fingerprint.to_dict())
        try:
            times = forward_times(model, examples, repeats=int(ctx.params["repeats"]))
            batch = encode_batch(examples, model.tokenizer)
            with torch.inference_mode():
                logits = model.hf_model(batch.tokens.to(model.device)).logits.float()
            scored = logits[torch.arange(len(examples)), batch.scored_pos.to(logits.device)].cpu()
        finally:
            del model
            free_model()
        ref = scored if ref is None else ref
        # a pass's time: the median over repeats; each batch's: its median (pairs by batch)
        out[label] = {"precision": label, "forward_s": pass_seconds(times),
                      "batch_s": times.median(0).values.tolist(),
                      "kl_vs_first": float(effects(ref, scored, batch.target).kl.mean()),
                      "top1_agreement": float((ref.argmax(-1) == scored.argmax(-1)).float().mean()),
                      "accuracy": float((scored.argmax(-1) == batch.target).float().mean())}
    first = ctx.params["precisions"][0]
    for label in out:
        out[label]["slowdown"] = out[label]["forward_s"] / out[first]["forward_s"]
    return {"reference": first, "n_examples": len(examples), "precisions": list(out.values())}


def summarize_quant_speed(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("quant-speed", [])).items():
        r = recs[0]
        p = {row["precision"]: row for row in r["value"]["precisions"]}
        n = r["value"]["n_examples"]
        out.append(_claim(
            f"{model} ({size}): forward time relative to {r['value']['reference']} on the same "
            f"{n} prompts: " + ", ".join(
                f"{k} {v['slowdown']:.2f}x (KL {v['kl_vs_first']:.4f} nats, top-1 agreement "
                f"{v['top1_agreement']:.0%})" for k, v in p.items()), n, size, (r["path"],)))
        if "nf4-fp32" in p and "int8" in p:
            nf4, int8 = p["nf4-fp32"], p["int8"]
            faster = "NF4" if nf4["forward_s"] < int8["forward_s"] else "int8"
            text = (f"{model} ({size}): {faster} is the faster quantized copy on this device "
                    f"(NF4/fp32-compute {nf4['forward_s']:.3f}s vs int8 {int8['forward_s']:.3f}s "
                    f"per pass, median of {r['params'].get('repeats', '?')} timings each; a CPU "
                    "timing says nothing of the CUDA kernels the origin report timed)")
            origin = {"origin": "nf4-vs-int8-speed", "model": model}
            if "batch_s" in nf4 and "batch_s" in int8:
                # the value is on the interval's scale: summed per-batch medians, ratio - 1
                iv = slowdown_interval(int8["batch_s"], nf4["batch_s"])
                out.append(judged(
                    text + f"; int8 time / NF4 time - 1 = {iv.estimate:+.3f} "
                    f"[{iv.ci_low:+.3f}, {iv.ci_high:+.3f}] over {iv.n} prompt batches",
                    iv, size=size, sources=(r["path"],),
                    value=f"int8 time / NF4 time - 1 = {iv.estimate:+.3f}", **origin))
            else:  # a result from before per-batch times were recorded
                out.append(_claim(text, n, size, (r["path"],),
                                  value=f"int8 / NF4 time {int8['forward_s'] / nf4['forward_s']:.2f}",
                                  **origin))
    return out


def slowdown_interval(slow: list[float], fast: list[float], *, replicates: int = 2000,
                      seed: int = 0):
    """``sum(slow) / sum(fast) - 1`` over paired per-batch times (the same batches timed
    on two copies), with a 95% percentile bootstrap over the batches; n = batches."""
    import torch

    from tlatlas.stats import Interval, percentile_interval, stratified_indices

    a = torch.tensor(slow, dtype=torch.float64)
    b = torch.tensor(fast, dtype=torch.float64)
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"need paired times of >= 2 batches, got {a.numel()} and {b.numel()}")
    idx = stratified_indices(torch.zeros(a.numel(), dtype=torch.long), replicates,
                             torch.Generator().manual_seed(seed))
    boot = a[idx].sum(1) / b[idx].sum(1) - 1
    lo, hi = percentile_interval(boot[:, None])
    return Interval(estimate=float(a.sum() / b.sum() - 1), ci_low=float(lo[0]),
                    ci_high=float(hi[0]), n=a.numel())


register_block(Block(
    id="quant-speed", priority=190, seeded=False, tags=("quant",),
    question="How much slower (and how different) are NF4 and int8 copies than full precision?",
    params=_sized({"per_family": 1, "precisions": list(QUANT_PRECISIONS), "repeats": 2},
                  {"per_family": 4, "precisions": list(QUANT_PRECISIONS), "repeats": 3},
                  {"per_family": 16, "precisions": list(QUANT_PRECISIONS), "repeats": 5}),
    cost=_cost(60, 150, 600), run=run_quant_speed, summarize=summarize_quant_speed))


# --------------------------------------------------------------------------- steering records


def _plain(x):
    """Tensors and nested lists as JSON: floats, NaN as None."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _iv(i) -> dict | None:
    return None if i is None else i.to_dict()


def _control(c) -> dict | None:
    return None if c is None else {"mean": c.mean, "std": c.std, "draws": c.draws}


def _layer_record(ls) -> dict:
    """One :class:`~tlatlas.steering.steerability.LayerSteerability` as JSON."""
    v = ls.vector
    return {"layer": ls.layer, "slope": _iv(v.mean), "median": v.median, "q25": v.q25,
            "q75": v.q75, "wrong_way": _iv(v.wrong_way), "random": _control(ls.random),
            "partition": _control(ls.partition), "over_random": _iv(ls.over_random),
            "over_partition": _iv(ls.over_partition), "specificity": ls.specificity,
            "fit_scales": list(ls.fit_scales), "linear": ls.linear}


def sign_scales(scales) -> dict[str, dict[str, float]]:
    """Per sign present in the grid: its ``extreme`` scale (the most negative, the largest
    positive) and its ``small`` one (the smallest |s| of that sign)."""
    out = {}
    for name, sign in (("negative", -1), ("positive", 1)):
        side = [s for s in scales if s * sign > 0]
        if side:
            out[name] = {"extreme": max(side, key=abs), "small": min(side, key=abs)}
    return out


def steering_value(result) -> dict:
    """What a steering block records of a :class:`~tlatlas.steering.SteeringResult`: KL
    grids of the vector and both controls, per-sign summaries, and for every precision
    row the per-layer slopes and specificity, the most steerable layer per family and
    over all families (all with 95% intervals and n), and for each row but the reference
    its amplification and drift."""
    from tlatlas.steering import (
        amplification_intervals,
        drift_stats,
        layer_steerability,
        most_steerable,
    )

    kl = result.mean_kl()  # [precision layer scale]
    rnd, rnd_std = result.random_kl()
    par, par_std = result.partition_kl()
    idx = {s: i for i, s in enumerate(result.scales)}
    per_sign = {}
    for name, cells in sign_scales(result.scales).items():
        per_sign[name] = dict(cells)
        for which, scale in cells.items():
            i = idx[scale]
            per_sign[name][f"{which}_kl_over_random"] = _plain(kl[..., i] / rnd[..., i])
            per_sign[name][f"{which}_kl_over_partition"] = _plain(kl[..., i] / par[..., i])
    steer, best, per_family, amp, drift = {}, {}, {}, {}, {}
    for p in result.precisions:
        rows = layer_steerability(result, p)
        steer[p] = [_layer_record(r) for r in rows]
        best[p] = _layer_record(max(rows, key=lambda r: r.specificity))
        per_family[p] = {f: _layer_record(b) for f, b in most_steerable(result, p).items()}
        if p == result.reference:
            continue
        a = amplification_intervals(result, p)
        amp[p] = {name: None if grid is None else [[_iv(c) for c in row] for row in grid]
                  for name, grid in (("vector", a.vector), ("random", a.random),
                                     ("partition", a.partition))}
        d = drift_stats(result, p)
        drift[p] = None if d is None else {"kl": d.kl.to_dict(),
                                           "top1_agreement": d.top1_agreement.to_dict()}
    return {"config": result.meta.config, "precisions": list(result.precisions),
            "reference": result.reference, "layers": list(result.layers),
            "scales": list(result.scales), "families": list(result.families),
            "n_examples": result.meta.n_examples, "n_train": int(result.train_ids.numel()),
            "heldout": result.heldout, "scored_suite_hash": result.meta.suite_hash,
            "random_draws": result.random_draws, "partition_draws": result.partition_draws,
            "mean_kl": _plain(kl), "random_kl": _plain(rnd), "random_kl_std": _plain(rnd_std),
            "partition_kl": _plain(par), "partition_kl_std": _plain(par_std),
            "per_sign": per_sign, "steerability": steer, "best_layer": best,
            "most_steerable": per_family, "amplification": amp, "drift": drift,
            "forward_s": _plain(result.tensors["forward_s"]),
            "slowdown": _plain(result.slowdown(result.reference))}


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _ratio(d: dict | None) -> str:
    """A ratio near 1 with its interval, three decimals (``1.004 [1.001, 1.007]``)."""
    return "n/a" if d is None else f"{d['estimate']:.3f} [{d['ci'][0]:.3f}, {d['ci'][1]:.3f}]"


def _pct(d: dict) -> str:
    return f"{d['estimate']:.0%} [{d['ci'][0]:.0%}, {d['ci'][1]:.0%}]"


def _current(records: list[dict]) -> tuple[list[dict], list[Statement]]:
    """The records of the current value format (with ``best_layer``), and a threat for
    each older one (recorded before held-out vectors and intervals: to be rerun)."""
    new = [r for r in records if "best_layer" in r["value"]]
    old = [Statement(kind="threat", sources=(r["path"],), text=(
        f"{r['block']} on {r['model']} ({r['size']}, seed {r['seed']}) was recorded before "
        "held-out vectors, the partition control and per-example intervals; it supports no "
        "claim: rerun it.")) for r in records if "best_layer" not in r["value"]]
    return new, old


SATURATION_NATS = 1.0
"""A random direction's KL at the grid's smallest |s| above which the grid is not read as
the linear regime on that model (a threat, not a verdict)."""


def _saturation(who: str, layer: int, kl_small: list[float | None], smallest: float,
                sources: tuple[str, ...]) -> list[Statement]:
    """A threat when a norm-matched random direction moves the prediction by more than
    :data:`SATURATION_NATS` already at the smallest |s| of a sign (``kl_small``): the
    slopes then average over saturation."""
    worst = max((k or 0.0) for k in kl_small)
    if worst <= SATURATION_NATS:
        return []
    return [Statement(kind="threat", sources=sources, text=(
        f"{who}: at L{layer} a norm-matched random direction already moves the next-token "
        f"distribution by {worst:.3g} nats at the smallest scales (±{smallest:g}): the grid "
        "is not in the linear regime on this model, so its slopes average over saturation."))]


def _smallest(scales) -> list[int]:
    """Indices of the smallest |s| of each sign."""
    return [list(scales).index(c["small"]) for c in sign_scales(scales).values()]


def _not_held_out(model, size, r) -> list[Statement]:
    v = r["value"]
    if v["heldout"]:
        return []
    return [Statement(kind="threat", sources=(r["path"],), text=(
        f"{model} ({size}, seed {r['seed']}): the steering vectors were scored on prompts "
        "they were estimated on (not held out); their slopes include those prompts' own "
        "noise."))]


# --------------------------------------------------------------------------- steering + controls


def run_steer_controls(ctx) -> dict:
    from tlatlas.steering import fit_vectors, steering_sweep

    model = ctx.model()
    config = _config(ctx.params, model.n_layers)
    split, vectors = fit_vectors(model, ctx.suite(), config)
    return steering_value(steering_sweep(model, split.heldout, vectors, config))


def summarize_steer_controls(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    records, out = _current(results.get("steer-controls", []))
    for (model, size), recs in by_model_size(records).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v, paths = r["value"], (r["path"],)
            ref = v["reference"]
            p, b = v["precisions"].index(ref), v["best_layer"][ref]
            head = (f"{model} ({size}, seed {r['seed']}, {v['n_examples']} held-out prompts, "
                    f"vectors from {v['n_train']} others, {v['random_draws']} random and "
                    f"{v['partition_draws']} partition draws, fit scales "
                    f"{', '.join(f'{s:+g}' for s in b['fit_scales'])})")
            li = v["layers"].index(b["layer"])
            kl = "; ".join(
                f"at s={c['extreme']:+g} its KL is "
                f"{_num(v['mean_kl'][p][li][v['scales'].index(c['extreme'])])} nats vs random "
                f"{_num(v['random_kl'][p][li][v['scales'].index(c['extreme'])])}"
                for c in sign_scales(v["scales"]).values())
            fams = ", ".join(f"{f} L{x['layer']} ({x['specificity']:+.3g})"
                             for f, x in v["most_steerable"][ref].items())
            where = (f"{head}: at L{b['layer']}, the most steerable of layers {v['layers']}, "
                     f"the family direction's slope is {_ci(b['slope'])} nats of log "
                     f"p(answer) per unit s ({_pct(b['wrong_way'])} of examples steered the "
                     f"wrong way); {kl}. Most steerable layer per family (specificity): {fams}")
            for name, key, origin in (("random", "over_random", "c4-steering-controls"),
                                      ("partition", "over_partition", None)):
                if b[key] is None:
                    continue
                what = ("a norm-matched random direction" if name == "random" else
                        "a partition direction (difference of means of random halves of the "
                        "family's own training prompts)")
                tags = {"origin": origin, "model": model,
                        "value": f"L{b['layer']}: {b[key]['estimate']:+.3g} nats/unit s"
                        } if origin else {}
                out.append(judged(
                    f"{where}. The direction raises the answer more than {what}: slope minus "
                    f"the {name} control's = {_ci(b[key])} nats per unit s.",
                    _interval(b[key]), size=size, sources=paths, **tags))
                where = f"{head}: at L{b['layer']}"  # the details once, in the first claim
            if len(v["layers"]) > 1:
                out.append(Statement(kind="threat", sources=paths, text=(
                    f"{model} ({size}, seed {r['seed']}): L{b['layer']} was chosen as the most "
                    f"steerable of {len(v['layers'])} layers on the same held-out prompts its "
                    "specificity is measured on; that interval is not corrected for the "
                    "choice.")))
            weak = [x["layer"] for x in v["steerability"][ref]
                    if x["over_random"] is not None and x["over_random"]["ci"][0] <= 0]
            if weak:
                out.append(Statement(kind="threat", sources=paths, text=(
                    f"{model} ({size}, seed {r['seed']}): at layers {weak} the family "
                    "direction's slope is not above a norm-matched random direction's (the "
                    "95% CI of the difference reaches 0): there its effect may be the norm, "
                    "not the direction.")))
            out += _saturation(f"{model} ({size}, seed {r['seed']})", b["layer"],
                               [v["random_kl"][p][li][i] for i in _smallest(v["scales"])],
                               min(abs(v["scales"][i]) for i in _smallest(v["scales"])), paths)
            out += _not_held_out(model, size, r)
    return out


register_block(Block(
    id="steer-controls", priority=200, tags=("steering",),
    question="Which layers' family directions steer the family's answer beyond norm-matched "
             "random and partition directions, on held-out prompts?",
    params=_sized({"per_family": 4, "regime": "linear", "scales": [-1, -0.25, 0, 0.25, 1],
                   "random_draws": 2, "partition_draws": 2, "heldout_fraction": 0.5,
                   "layer_stride": 3},
                  # small: 48 held-out prompts, 6-7 layers, 6 directions x 6 scales: about
                  # 12,000 steered rows, ~10 min for SmolLM2 on one CPU thread
                  {"per_family": 8, "regime": "linear", "random_draws": 4,
                   "partition_draws": 2, "heldout_fraction": 0.5, "layer_stride": 5},
                  {"per_family": 32, "regime": "linear", "random_draws": 8,
                   "partition_draws": 4, "heldout_fraction": 0.5}),
    cost=_cost(200, 700, 25000), run=run_steer_controls, summarize=summarize_steer_controls))


# --------------------------------------------------------------------------- quantized steering


def run_steer_quant(ctx) -> dict:
    from tlatlas.steering import fit_vectors
    from tlatlas.steering.precision import precision_sweep

    model = ctx.model()
    config = _config(ctx.params, model.n_layers)
    split, vectors = fit_vectors(model, ctx.suite(), config)
    del model
    release_models()  # one precision copy resident at a time
    result = precision_sweep(ctx.model_name, split.heldout, vectors, config,
                             precisions=tuple(ctx.params["precisions"]), on_precision=ctx.say)
    return steering_value(result)


def _amplification_cells(v: dict) -> list[tuple[str, float]]:
    """(label, scale) of the cells a quantization claim is made at: the smallest |s| of
    each sign, and the most negative scale when it is another one."""
    cells = [(f"smallest {name} |s|", c["small"]) for name, c in sign_scales(v["scales"]).items()]
    neg = sign_scales(v["scales"]).get("negative")
    if neg and neg["extreme"] != neg["small"]:
        cells.append(("most negative s", neg["extreme"]))
    return cells


def summarize_steer_quant(results: dict[str, list[dict]]) -> list[Statement]:
    records, out = _current(results.get("steer-quant", []))
    for (model, size), recs in by_model_size(records).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v, paths = r["value"], (r["path"],)
            ref = v["reference"]
            layer = v["best_layer"][ref]["layer"]
            li = v["layers"].index(layer)
            rows = {p: i for i, p in enumerate(v["precisions"])}
            head = (f"{model} ({size}, seed {r['seed']}, {v['n_examples']} held-out prompts, "
                    f"vectors and controls from {ref}, at {ref}'s most steerable layer "
                    f"L{layer})")
            amp_at: dict[str, dict[float, dict]] = {}
            for p, a in v["amplification"].items():
                d = v["drift"].get(p)
                drift = ("drift not measured" if d is None else
                         f"clean drift from {ref} KL {_ci(d['kl'], False)} nats, top-1 "
                         f"agreement {_pct(d['top1_agreement'])}")
                slow = v["slowdown"][rows[p]]
                for label, scale in _amplification_cells(v):
                    si = v["scales"].index(scale)
                    vec = a["vector"][li][si]
                    if vec is None:
                        continue
                    amp_at.setdefault(p, {})[scale] = vec
                    ref_kl = v["mean_kl"][rows[ref]][li][si]
                    controls = ", ".join(f"{name} control {_ratio(a[name][li][si])}"
                                         for name in ("random", "partition")
                                         if a[name] is not None and a[name][li][si] is not None)
                    tags = ({"origin": "nf4-amplifies", "model": model,
                             "value": f"KL ratio - 1 = {vec['estimate'] - 1:+.3g} at "
                                      f"s={scale:+g} (L{layer})"}
                            if p == "nf4-fp32" and label == "most negative s" else {})
                    out.append(judged(
                        f"{head}: {p} amplifies steering over {ref} at s={scale:+g} ({label}): "
                        f"KL ratio {_ratio(vec)} ({ref} KL {_num(ref_kl)} nats), {controls}; "
                        f"{drift}" + (f"; forward x{slow:.2f}" if slow is not None else "")
                        + f". Judged on ratio - 1 = {_ci(_shifted(vec, 1.0))}.",
                        _interval(_shifted(vec, 1.0)), size=size, sources=paths, **tags))
                    rnd = a["random"][li][si] if a["random"] is not None else None
                    if rnd is not None and vec["ci"][0] > 1 and vec["estimate"] <= rnd["ci"][1]:
                        out.append(Statement(kind="threat", sources=paths, text=(
                            f"{model} ({size}, seed {r['seed']}): at L{layer}, s={scale:+g} "
                            f"{p} amplifies the steering vector {_ratio(vec)}, no more "
                            f"than a random direction of the same norm ({_ratio(rnd)}): the "
                            "copy is more sensitive to any intervention, not to the "
                            "direction.")))
                    if d is not None and ref_kl is not None and d["kl"]["estimate"] >= ref_kl:
                        out.append(Statement(kind="threat", sources=paths, text=(
                            f"{model} ({size}, seed {r['seed']}): {p}'s clean drift from "
                            f"{ref} ({d['kl']['estimate']:.3g} nats) is as large as the "
                            f"steering KL it is compared with at L{layer}, s={scale:+g} "
                            f"({ref_kl:.3g} nats): it cannot support an amplification claim "
                            "there.")))
            if {"nf4-fp32", "nf4-bf16"} <= amp_at.keys():
                shared = [s for s in amp_at["nf4-fp32"] if s in amp_at["nf4-bf16"]]
                gaps = {s: abs(amp_at["nf4-fp32"][s]["estimate"] -
                               amp_at["nf4-bf16"][s]["estimate"]) for s in shared}
                if gaps:
                    s_max = max(gaps, key=gaps.get)
                    out.append(Statement(kind="threat", sources=paths, text=(
                        f"{model} ({size}, seed {r['seed']}): at L{layer}, NF4 with fp32 "
                        f"compute and NF4 with bf16 compute amplify by " + ", ".join(
                            f"s={s:+g}: {amp_at['nf4-fp32'][s]['estimate']:.3f} vs "
                            f"{amp_at['nf4-bf16'][s]['estimate']:.3f}" for s in shared) + "; "
                        + ("the compute dtype moves the amplification, so a quantization "
                           "claim must fix it." if gaps[s_max] > 0.1 else
                           f"the compute dtype changes it by at most {gaps[s_max]:.2f}, so "
                           "any difference from the reference is NF4's, not the dtype's."))))
            out += _not_held_out(model, size, r)
    return out


register_block(Block(
    id="steer-quant", priority=220, tags=("steering", "quant"),
    question="Do NF4/int8 copies amplify steering relative to fp32, beyond their amplification "
             "of random directions and apart from dtype effects?",
    params=_sized({"per_family": 4, "regime": "linear", "scales": [-4, -0.5, 0, 0.5, 4],
                   "random_draws": 1, "partition_draws": 1, "heldout_fraction": 0.5,
                   "layer_stride": 10, "precisions": list(QUANT_PRECISIONS)},
                  {"per_family": 8, "regime": "linear", "scales": [-4, -0.5, 0, 0.5, 4],
                   "random_draws": 2, "partition_draws": 2, "heldout_fraction": 0.5,
                   "layer_stride": 5, "precisions": list(QUANT_PRECISIONS)},
                  {"per_family": 16, "regime": "linear",
                   "scales": [-4, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4],
                   "random_draws": 4, "partition_draws": 4, "heldout_fraction": 0.5,
                   "precisions": list(QUANT_PRECISIONS)}),
    cost=_cost(400, 4000, 40000), run=run_steer_quant, summarize=summarize_steer_quant))


# --------------------------------------------------------------------------- transfer


def run_steer_transfer(ctx) -> dict:
    """Both directions, A -> B and B -> A, each with one model resident at a time."""
    from tlatlas.steering.transfer import steering_transfer

    release_models()  # the transfer loads A, then B, never both
    # the transfer scores the prompts its vectors come from: no split, no partition control
    sweep = _config({**ctx.params, "partition_draws": 0})
    out = []
    for a, b in ((ctx.models[0], ctx.models[1]), (ctx.models[1], ctx.models[0])):
        work = ctx.root / "artifacts" / "transfer" / f"{ctx.size}-seed{ctx.seed}-{len(out)}"
        result = steering_transfer(a, b, list(ctx.suite()), workdir=work, sweep=sweep,
                                   on_stage=lambda s, a=a, b=b: ctx.say(f"{a} -> {b}: {s}"))
        summary = result.summary()
        for name, key in ((a, "fingerprint_a"), (b, "fingerprint_b")):
            ctx.fingerprints[name] = summary["meta"][key]
        out.append(summary)
    return {"directions": out}


def summarize_steer_transfer(results: dict[str, list[dict]]) -> list[Statement]:
    """Per direction and layer pair: does A's mapped vector raise B's answer more than B's
    norm-matched random directions (slope difference, CI above 0: supported)? The text adds
    B's own vector against the same control, transferred − own, the map's held-out R² and
    the KL at the extreme scales; a grid whose smallest scale already moves a random
    direction by more than 1 nat on B is a threat (not the linear regime there)."""
    out = []
    for r in results.get("steer-transfer", []):
        paths = (r["path"],)
        for v in r["value"].get("directions", []):
            a, b = v["meta"]["model_a"], v["meta"]["model_b"]
            cells = [(c["extreme"], v["scales"].index(c["extreme"]))
                     for c in sign_scales(v["scales"]).values()]
            small = _smallest(v["scales"])
            head = (f"steering transfer {a} -> {b} ({r['size']}, seed {r['seed']}, "
                    f"{v['slopes'][0]['own']['n']} prompts scored, the prompts the vectors "
                    "were estimated on)")
            for k, ((la, lb), r2, own, tr, rnd, sl) in enumerate(zip(
                    v["pairs"], v["r2"], v["own_kl"], v["transferred_kl"], v["random_kl"],
                    v["slopes"], strict=True)):
                kl = ", ".join(f"at s={s:+g} {own[i]:.3f} / {tr[i]:.3f} / {rnd[i]:.3f}"
                               for s, i in cells)
                cos = [row[k] for row in v["cosine"]]
                text = (f"{head}: L{la} -> L{lb}, map held-out R² {r2:.2f} (n = "
                        f"{v['n_test'][k]} held-out samples), cosine of the mapped and {b}'s "
                        f"own direction {sum(cos) / len(cos):.2f} (mean over "
                        f"{len(cos)} families). Slopes (nats of log p(answer) per unit s, over "
                        f"s = {', '.join(f'{s:+g}' for s in sl['fit_scales'])}): own "
                        f"{_ci(sl['own'])}, transferred {_ci(sl['transferred'])}, random "
                        f"{sl['random']['mean']:+.3f} (sd {sl['random']['std']:.3f} over "
                        f"{sl['random']['draws']} draws); transferred − own "
                        f"{_ci(sl['transferred_minus_own'])}; own − random "
                        f"{_ci(sl['own_over_random'])}. KL own / transferred / random {kl} "
                        f"nats. The transferred direction raises {b}'s answer more than a "
                        f"norm-matched random direction: transferred − random = "
                        f"{_ci(sl['transferred_over_random'])}.")
                out.append(judged(text, _interval(sl["transferred_over_random"]),
                                  size=r["size"], sources=paths, origin="g1-steering-transfer",
                                  model=f"{a} -> {b}",
                                  value=f"L{la}->L{lb}: transferred − random "
                                        f"{sl['transferred_over_random']['estimate']:+.3g} "
                                        "nats/unit s"))
                out += _saturation(f"steering transfer {a} -> {b} ({r['size']}, seed "
                                   f"{r['seed']}), on {b}", lb, [rnd[i] for i in small],
                                   min(abs(v["scales"][i]) for i in small), paths)
    return out


register_block(Block(
    id="steer-transfer", priority=230, models=2, tags=("steering",),
    question="Do one model's steering vectors, carried by a linear map, steer another model?",
    params=_sized({"per_family": 2, "regime": "linear", "scales": [-1, 0, 1],
                   "random_draws": 2},
                  {"per_family": 8, "regime": "linear", "random_draws": 4},
                  {"per_family": 32, "regime": "linear", "random_draws": 8}),
    cost=_cost(200, 1500, 9000, memory=4.0), run=run_steer_transfer,
    summarize=summarize_steer_transfer))
