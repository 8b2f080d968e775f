"""Text tables of a steering result (pure functions returning strings; the CLI prints them).

- :func:`header_lines`: model, suite, split (held out or not), controls, grid, slope
  definition, and each row's precision with its weights' provenance;
- :func:`precision_tables`: per precision and layer, KL at the smallest |s| of both signs
  for the vector and both controls, amplification over the reference with intervals,
  and the slope distribution with the vector's specificity over each control;
- :func:`layer_scale_table`: a layer x scale grid of one quantity (every scale, both regimes);
- :func:`full_report`: all of it; :func:`summary_lines`: the closing summary.

Every KL is KL(p_clean ‖ p_steered) within one precision copy (its own clean run against
its own steered run); a copy's drift from the reference is its own line.
"""

import json
import math

import torch

from tlatlas.models import Fingerprint
from tlatlas.stats import Interval
from tlatlas.steering.config import LINEAR_MAX
from tlatlas.steering.provenance import describe_weights
from tlatlas.steering.result import SteeringResult
from tlatlas.steering.steerability import (
    SLOPE_FIT,
    amplification_intervals,
    drift_stats,
    layer_steerability,
    most_steerable,
)


def _g(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _ci(i: Interval | None, signed: bool = False) -> str:
    if i is None:
        return "-"
    est = f"{i.estimate:+.3g}" if signed else _g(i.estimate)
    return f"{est} [{_g(i.ci_low)}, {_g(i.ci_high)}]"


def _pct(i: Interval) -> str:
    return f"{100 * i.estimate:.0f}% [{100 * i.ci_low:.0f}, {100 * i.ci_high:.0f}]"


def small_scales(result: SteeringResult) -> tuple[int, ...]:
    """Indices of the smallest |s| > 0 on each side (both signs when the grid has them)."""
    out = []
    for sign in (-1, 1):
        side = [(abs(s), i) for i, s in enumerate(result.scales) if s * sign > 0]
        if side:
            out.append(min(side)[1])
    return tuple(out)


def _linear_max(result: SteeringResult) -> float:
    return float(result.meta.config.get("linear_max", LINEAR_MAX))


def header_lines(result: SteeringResult) -> list[str]:
    """What was steered, on which prompts, against which controls, on which weights."""
    m = result.meta
    lm = _linear_max(result)
    lin = [s for s in result.scales if 0 < abs(s) <= lm]
    sat = [s for s in result.scales if abs(s) > lm]
    out = [f"model {m.model} ({m.fingerprints[0].short})  suite {m.suite_kind} "
           f"{m.suite_hash[:12]}  {m.n_examples} scored examples, families "
           f"{', '.join(result.families)}",
           f"vectors: {m.vectors.get('origin')} on "
           f"{Fingerprint.from_dict(m.vectors['fingerprint']).short}"]
    if not result.has_examples:
        out.append("format 1 result: family sums only -- no per-example slopes, no intervals, "
                   "no partition control, train/scored split unknown")
    else:
        n_train = int(result.train_ids.numel())
        if result.heldout:
            out.append(f"split: vectors estimated on {n_train} training prompts, scored on "
                       f"{m.n_examples} held-out prompts (disjoint ids)")
        elif n_train == 0:
            out.append("split: the vectors' training prompts are unknown (not held out)")
        else:
            out.append(f"split: NOT held out -- {result.overlap} of {m.n_examples} scored "
                       f"prompts are among the vectors' {n_train} training prompts")
    out.append(f"controls: {result.random_draws} norm-matched isotropic random directions; "
               f"{result.partition_draws} partition directions (difference of means of random "
               "halves of each family's training prompts, norm-matched)")
    out.append(f"scales (s x the layer's typical resid norm): linear regime |s| <= {lm:g}: "
               f"{', '.join(f'{s:+g}' for s in lin) or 'none'}; saturation: "
               f"{', '.join(f'{s:+g}' for s in sat) or 'none'}")
    if result.has_examples:
        out.append(f"slope: {SLOPE_FIT}; > 0 raises the family's answer")
    out.append("KL: KL(p_clean || p_steered) at the scored position, both runs in the row's "
               "own precision")
    for prec, spec in zip(result.precisions, m.precision_specs, strict=True):
        role = "reference" if prec == result.reference else "row"
        bnb = spec.get("bitsandbytes")
        what = json.dumps(bnb) if bnb else spec.get("dtype", "?")
        out.append(f"{role} {prec}: {what}; {describe_weights(spec.get('weights'))}")
    if m.command:
        out.append(f"command: {m.command}")
    return out


def layer_scale_table(result: SteeringResult, precision: str, what: str = "kl") -> str:
    """A layer x scale text table for one precision row, every scale of the grid.

    ``what``: ``kl`` (steering vectors, family mean), ``dlogp``, ``random`` / ``partition``
    (the control: mean ± std over draws) or ``amplification`` (KL / reference KL).
    """
    p = result.row(precision)
    wide = what in ("random", "partition")
    head = f"{'layer':>5} |" + "".join(f"{s:>{13 if wide else 8}.2f}" for s in result.scales)
    lines = [head, "-" * len(head)]
    if wide:
        mean, std = (t[p] for t in (result.random_kl() if what == "random" else result.partition_kl()))
        for li, layer in enumerate(result.layers):
            lines.append(f"{layer:>5} |" + "".join(
                f"{float(a):>7.3f}±{float(d):<5.3f}" for a, d in zip(mean[li], std[li], strict=True)))
        return "\n".join(lines)
    table = {"kl": lambda: result.mean_kl()[p], "dlogp": lambda: result.dlogp()[p].mean(-1),
             "amplification": lambda: result.amplification(result.reference)[p]}[what]()
    for li, layer in enumerate(result.layers):
        lines.append(f"{layer:>5} |" + "".join(f"{float(v):>8.3f}" for v in table[li]))
    return "\n".join(lines)


def drift_line(result: SteeringResult, precision: str) -> str:
    """The row's clean drift from the reference, with n."""
    if precision == result.reference:
        return f"drift: {precision} is the reference"
    d = drift_stats(result, precision)
    if d is None:
        return f"drift from {result.reference}: not measured"
    return (f"drift from {result.reference} (clean next-token distribution, n={d.kl.n}): "
            f"KL {_ci(d.kl)} nats, top-1 agreement {_pct(d.top1_agreement)}")


def kl_small_table(result: SteeringResult, precision: str) -> str:
    """Per layer: KL at the smallest |s| of each sign, vector / random / partition, and
    (for a non-reference row with examples) the vector's amplification with its interval."""
    p = result.row(precision)
    cols = small_scales(result)
    vec = result.mean_kl()[p]
    (rm, rs), (pm, ps) = (t[p] for t in result.random_kl()), (t[p] for t in result.partition_kl())
    amp = None
    if precision != result.reference and result.has_examples:
        amp = amplification_intervals(result, precision)
    head = f"{'layer':>5}"
    for i in cols:
        head += f" | {f'vector s={result.scales[i]:+g}':>15} {'random':>15} {'partition':>15}"
        if amp is not None:
            head += f" {'amplification [CI]':>24}"
    lines = [head, "-" * len(head)]
    for li, layer in enumerate(result.layers):
        row = f"{layer:>5}"
        for i in cols:
            row += (f" | {_g(float(vec[li, i])):>15} "
                    f"{_g(float(rm[li, i])) + '±' + _g(float(rs[li, i])):>15} "
                    f"{_g(float(pm[li, i])) + '±' + _g(float(ps[li, i])):>15}")
            if amp is not None:
                row += f" {_ci(amp.vector[li][i]):>24}"
        lines.append(row)
    return "\n".join(lines)


def slope_table(result: SteeringResult, precision: str) -> str:
    """Per layer: the vector's slope distribution, the controls' slopes (mean ± spread over
    draws) and the vector's specificity over each control, with intervals."""
    rows = layer_steerability(result, precision)
    fit = ", ".join(f"{s:+g}" for s in rows[0].fit_scales)
    note = "" if rows[0].linear else "  (NO linear-regime scale in the grid: fitted over saturation)"
    head = (f"{'layer':>5} | {'slope mean [95% CI]':>26} {'median':>8} {'IQR':>16} "
            f"{'wrong way':>16} | {'random':>14} {'partition':>14} | "
            f"{'vector-random':>28} {'vector-partition':>28}")
    lines = [f"fit scales {fit}; nats of log p(answer) per unit s{note}", head, "-" * len(head)]
    for r in rows:
        ctrl = [f"{r_.mean:+.3g}±{r_.std:.2g}" if r_ else "-" for r_ in (r.random, r.partition)]
        lines.append(f"{r.layer:>5} | {_ci(r.vector.mean, True):>26} {r.vector.median:>+8.3g} "
                     f"{f'[{r.vector.q25:+.2g}, {r.vector.q75:+.2g}]':>16} "
                     f"{_pct(r.vector.wrong_way):>16} | {ctrl[0]:>14} {ctrl[1]:>14} | "
                     f"{_ci(r.over_random, True):>28} {_ci(r.over_partition, True):>28}")
    return "\n".join(lines)


def precision_tables(result: SteeringResult, precision: str) -> str:
    """Drift, KL at small |s| with controls and amplification, and slopes of one row."""
    out = [f"=== {precision}", drift_line(result, precision)]
    amp = (f"; amplification: KL / {result.reference} KL at the same scale and sign, 95% CI "
           "over examples" if precision != result.reference else "")
    out += [f"-- KL at the smallest |s| of each sign (nats; controls: mean±std over draws){amp}",
            kl_small_table(result, precision)]
    if result.has_examples:
        out += ["-- per-example slopes and specificity over the controls (95% CI over examples "
                "and control draws)", slope_table(result, precision)]
    return "\n".join(out)


def full_report(result: SteeringResult) -> str:
    """Every table: header, then per precision the small-|s| table, slopes, and the
    layer x scale grids (KL, controls, dlogp, amplification) over every scale."""
    out = header_lines(result) + [""]
    slow = result.slowdown(result.reference)
    ref = result.reference
    for i, prec in enumerate(result.precisions):
        out.append(precision_tables(result, prec))
        if math.isfinite(float(result.tensors["forward_s"][i])):
            out.append(f"forward {float(result.tensors['forward_s'][i]):.3f} s "
                       f"(x{float(slow[i]):.2f} vs {ref})")
        out.append("")
        sections = [("kl", "KL(p_clean || p_steered), nats, mean over families, every scale"),
                    ("random", "random control KL, mean ± std over draws"),
                    ("partition", "partition control KL, mean ± std over draws"),
                    ("dlogp", "dlogp of the answer (log p_clean - log p_steered), nats")]
        if prec != ref:
            sections.append(("amplification", f"amplification: KL / {ref} KL (point estimates)"))
        for what, title in sections:
            if what == "partition" and result.partition_draws == 0:
                continue
            out += [f"-- {title}", layer_scale_table(result, prec, what), ""]
    return "\n".join(out)


def summary_lines(result: SteeringResult) -> list[str]:
    """Closing summary: most steerable layer per family (by specificity over the controls),
    and per precision: drift, KL at the smallest |s| against the controls, amplification."""
    lines = []
    ref = result.reference
    if result.has_examples:
        best = most_steerable(result, ref)
        lines.append(f"most steerable layer per family ({ref}, specificity = vector slope minus "
                     "control slope, the smaller over random/partition, nats per unit s): "
                     + ", ".join(f"{f} L{b.layer} ({b.specificity:+.3g}; over random "
                                 f"{_ci(b.over_random, True)})" for f, b in best.items()))
    else:
        best_kl = result.most_disruptive(ref)
        lines.append(f"most steerable layer per family: unknown for a format-1 result (no "
                     f"per-example slopes); largest mean KL ({ref}): " + ", ".join(
                         f"{f} L{layer} ({kl:.2f})" for f, (layer, kl) in best_kl.items()))
    cols = small_scales(result)
    vec = result.mean_kl()
    rnd, _ = result.random_kl()
    par, _ = result.partition_kl()
    for i, prec in enumerate(result.precisions):
        kl = ", ".join(f"s={result.scales[c]:+g} vector {float(vec[i, :, c].mean()):.3g} / random "
                       f"{_g(float(rnd[i, :, c].mean()))} / partition {_g(float(par[i, :, c].mean()))}"
                       for c in cols)
        line = f"{prec:>9}: mean KL over layers {kl}"
        if math.isfinite(float(result.slowdown(ref)[i])):
            line += (f"; forward {float(result.tensors['forward_s'][i]):.3f} s "
                     f"x{float(result.slowdown(ref)[i]):.2f}")
        if prec != ref:
            amp = result.amplification(ref)[i]
            meds = []
            for c in cols:
                a = amp[:, c][~torch.isnan(amp[:, c])]
                if a.numel():
                    meds.append(f"s={result.scales[c]:+g} {float(a.median()):.2f} "
                                f"[{float(a.min()):.2f}, {float(a.max()):.2f}]")
            if meds:
                line += "; amplification median over layers [range] " + ", ".join(meds)
            line += f"; {drift_line(result, prec)}"
        lines.append(line)
    return lines
