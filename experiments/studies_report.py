"""``studies-results.md``: the adapter studies' measured tables, from the result files.

The LoRA blocks (``lora-strategies``, ``module-sweep``, ``layer-skip``,
``checkpoint-lockin``; :mod:`experiments.blocks.lora_blocks`) answer their questions in
``claims.md`` one sentence at a time. This module lays the same records out as the tables
a reader compares: every strategy with its layers, parameters and held-out loss, its
paired difference to atlas-guided with a 95% interval and n; the module sweep per budget;
every skip set's KL, percentile and recovery; the hub at each training checkpoint. Each
table names its result file and the design it was run at; a ``smoke`` table says it is
not evidence.

Written by ``python -m experiments.claims`` beside ``findings.md``. Nothing here computes
a statistic: every interval is the one the study recorded.
"""

from collections.abc import Callable

from experiments.blocks.base import by_model_size

BLOCKS = ("lora-strategies", "module-sweep", "layer-skip", "checkpoint-lockin")
"""The blocks whose records this report lays out, in its section order."""

TITLES = {
    "lora-strategies": "(a) Strategies at a matched budget",
    "module-sweep": "(b) Module sweep at equal parameters",
    "layer-skip": "(c) Layer skip against every same-size set, and distillation recovery",
    "checkpoint-lockin": "(d) Atlas stability during training (lock-in)",
}


def _ci(d: dict | None, digits: int = 3) -> str:
    """``+0.123 [+0.050, +0.200]`` from a recorded interval (``–`` when absent)."""
    if not d or d.get("estimate") is None:
        return "–"
    lo, hi = d["ci"]
    return f"{d['estimate']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _layers(layers: list[int] | None) -> str:
    return "–" if layers is None else (", ".join(f"L{x}" for x in layers) or "none")


def _chooser(v: dict) -> str:
    c = v.get("chooser") or {}
    if not c:
        return ""
    powered = "powered" if c.get("powered") else "**not powered**: fewer than 16 in some family"
    return (f"Layer-choosing atlas: {c.get('ablation')} ablation, positions "
            f"`{c.get('positions_ablated')}`, {len(c.get('families', []))} families, at least "
            f"{c.get('min_per_family')} examples each ({powered}), suite seed {c.get('seed')}.")


def _strategies(v: dict) -> list[str]:
    d = v["design"]
    by: dict[str, list[dict]] = {}
    for row in v["rows"]:
        by.setdefault(row["strategy"], []).append(row)
    before = _mean([r["heldout_loss_before"] for r in v["rows"]])
    lines = [f"Design: families {', '.join(d['families'])}; training seeds {d['seeds']}; "
             f"{d['random_draws']} random layer draws; {d['steps']} steps, {d['n_train']} "
             f"training and {d['n_heldout']} held-out prompts per family; rank {v.get('rank')}; "
             f"modules {', '.join(d['modules'])}. Held-out answer loss before training: "
             f"{before:.3f} nats.", "",
             "| strategy | layers (first run) | trainable params | runs | held-out loss after "
             "(mean) | loss: strategy − atlas (nats) | exact match: atlas − strategy | n |",
             "|---|---|---|---|---|---|---|---|"]
    order = sorted(by, key=lambda k: (k != "atlas", _mean([r["heldout_loss_after"]
                                                           for r in by[k]])))
    for name in order:
        rows, c = by[name], v["comparisons"].get(name, {})
        lines.append(
            f"| {name} | {_layers(rows[0].get('layers'))} | {rows[0]['trainable_params']:,} | "
            f"{len(rows)} | {_mean([r['heldout_loss_after'] for r in rows]):.3f} | "
            f"{'reference' if name == 'atlas' else _ci(c.get('loss'))} | "
            f"{'reference' if name == 'atlas' else _ci(c.get('exact_match'))} | "
            f"{c.get('n', '–') if name != 'atlas' else '–'} |")
    for name, why in (v.get("skipped") or {}).items():
        lines += ["", f"{name}: {why}."]
    return lines


def _module_sweep(v: dict) -> list[str]:
    lines = [f"Layers held fixed at {_layers(v['layers'])}; ranks chosen per module set so the "
             f"trainable counts agree within {v.get('tolerance', 0):.0%} (PEFT's own count).", ""]
    for point in v["budgets"]:
        budget = point["requested"]
        losses: dict[str, list[float]] = {}
        for row in v["rows"]:
            if row["budget"] == budget:
                losses.setdefault(row["module_set"], []).append(row["heldout_loss_after"])
        comparisons = v["comparisons"].get(str(budget), {})
        lines += [f"Budget {budget:,} parameters (spread {point['spread']:.1%}):", "",
                  "| module set | rank | trainable params | runs | held-out loss after (mean) | "
                  "loss: set − o (nats) | exact match: o − set | n |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, xs in losses.items():
            c = comparisons.get(name, {})
            ref = name == "o"
            lines.append(
                f"| {name} | {point['ranks'].get(name, '–')} | "
                f"{point['trainable_params'].get(name, 0):,} | {len(xs)} | {_mean(xs):.3f} | "
                f"{'reference' if ref else _ci(c.get('loss'))} | "
                f"{'reference' if ref else _ci(c.get('exact_match'))} | "
                f"{'–' if ref else c.get('n', '–')} |")
        lines.append("")
    return lines[:-1]


def _layer_skip(v: dict) -> list[str]:
    dist = v["distribution"]
    where = (f"all {dist['n_sets']}" if dist["exhaustive"]
             else f"{dist['n_sets']} random (of {dist['total_sets']:,})")
    full = v.get("full") or {}
    rec = v.get("recovery") or {}
    recovered = {r["skip_set"]: r for r in v["rows"]}
    lines = [f"Skipping k = {v['k']} blocks, scored on {v['n_prompts']} held-out prompts "
             f"(KL(full ‖ skipped) at the scored position, nats); percentile among {where} "
             f"same-size skip sets (0: no set is safer). Full model: held-out loss "
             f"{full.get('heldout_loss', float('nan')):.3f}. Recovery: {rec.get('objective')}, "
             f"{rec.get('steps')} steps, LoRA rank {rec.get('rank')} on the kept layers, "
             f"{rec.get('n_train')} training prompts per family.", "",
             "| skip set | layers skipped | KL | percentile [95% CI] | top-5 overlap before → "
             "after recovery | KL after recovery | recovery: before − after (nats) | n |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in v["sets"].items():
        p, r = s["percentile"], recovered.get(name)
        overlap = (f"{r['before']['top5_overlap']:.2f} → {r['after']['top5_overlap']:.2f}"
                   if r else "–")
        after = f"{r['after']['kl']:.3f}" if r else "–"
        lines.append(
            f"| {name} | {_layers(s['layers'])} | {s['kl']:.3f} | {p['estimate']:.0f} "
            f"[{p['ci'][0]:.0f}, {p['ci'][1]:.0f}] | {overlap} | {after} | "
            f"{_ci(r['recovery']) if r else '–'} | {p['n']} |")
    c = v["comparisons"]
    lines += ["", f"Mean over the same-size sets − atlas: {_ci(c['random_sets_minus_atlas'])} "
              f"nats (n = {c['random_sets_minus_atlas']['n']}); Block Influence − atlas: "
              f"{_ci(c['block_influence_minus_atlas'])} nats."]
    return lines


def _lockin(v: dict) -> list[str]:
    suite = v.get("atlas_suite") or {}
    lines = [f"Atlas-guided LoRA on {v['family']} (layers {_layers(v['plan']['layers'])}, "
             f"{v['plan']['trainable_params']:,} parameters, {v['train']['steps']} steps); at "
             f"each checkpoint the adapted model's atlas ({suite.get('per_family')} examples per "
             "family, block ablation). Margin: the step-0 hub's block KL minus the best other "
             "layer's (positive: the step-0 hub is still the hub).", "",
             "| step | hub | Spearman vs step 0 | step-0 hub margin (nats) | family agreement | "
             "held-out loss | n |", "|---|---|---|---|---|---|---|"]
    for row in v["rows"]:
        m = row.get("step0_hub_margin")
        lines.append(f"| {row['steps']} | L{row['hub_layer']} | {row['spearman_vs_step0']:.3f} "
                     f"| {_ci(m)} | {row['family_agreement']:.2f} | {row['heldout_loss']:.3f} | "
                     f"{m['n'] if m else '–'} |")
    return lines


RENDER: dict[str, Callable[[dict], list[str]]] = {
    "lora-strategies": _strategies, "module-sweep": _module_sweep,
    "layer-skip": _layer_skip, "checkpoint-lockin": _lockin}


def render_studies(results: dict[str, list[dict]], command: str) -> str:
    """The studies' tables (markdown) from finished records (``results[block_id]``, each
    record with its ``path``), one table per model, size and seed."""
    lines = ["# Adapter studies: measured tables", "",
             f"_Generated by `{command}` from the result files; do not edit by hand. What each "
             "study measures and how its intervals are computed: [studies.md](studies.md); the "
             "claims these tables support, with their verdicts: [findings.md](findings.md) and "
             "`experiments/claims.md`. Intervals are 95% paired bootstrap intervals recorded by "
             "the study; n counts (training seed × held-out prompt) pairs, or held-out prompts "
             "(layer skip), or atlas examples (lock-in)._"]
    for block in BLOCKS:
        lines += ["", f"## {TITLES[block]}", ""]
        groups = by_model_size(results.get(block, []))
        if not groups:
            lines.append(f"Not run yet (`{block}`).")
            continue
        for (model, size), recs in sorted(groups.items()):
            for r in sorted(recs, key=lambda r: r["seed"]):
                smoke = " — **smoke: not evidence**" if size == "smoke" else ""
                chooser = _chooser(r["value"])
                lines += [f"### {model}, `{size}`, seed {r['seed']}{smoke}", "",
                          f"Result: `{r['path']}`; wall time {r.get('wall_s', 0):.0f} s.",
                          *([chooser] if chooser else []), "",
                          *RENDER[block](r["value"]), ""]
        lines.pop()
    return "\n".join(lines) + "\n"
