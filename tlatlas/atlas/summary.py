"""What ``tlatlas show`` reports about an atlas, as plain data (the CLI prints it).

:func:`seed_entry` is the machine-readable contract of ``tlatlas show RUN_DIR --json``:
one entry per seed with the hub, P(hub = L) for every layer, the hub's margin over the
runner-up and family agreement with their 95% intervals, each layer's effect with its
interval, and beside them what the effects rest on: the examples scored per family and
the clean model's accuracy on them (an effect on a family the model gets wrong is an
effect on failures).
"""

from collections.abc import Sequence
from typing import Any

from tlatlas.atlas.hubs import hub_evidence, hub_summary, verified_layers
from tlatlas.atlas.store import Atlas
from tlatlas.stats import DEFAULT_REPLICATES


def clean_accuracy(atlas: Atlas) -> dict[str, dict[str, float | int]]:
    """Per family: examples seen, the clean model's top-1 accuracy on them, examples scored."""
    t, fams = atlas.sums.tensors, atlas.sums.families
    seen = t.get("seen.count", t["count"])
    correct = t.get("seen.correct", t["clean.correct"])
    return {f: {"seen": int(seen[i]), "accuracy": float(correct[i] / seen[i]) if seen[i] else
                float("nan"), "scored": int(t["count"][i])} for i, f in enumerate(fams)}


def seed_entry(atlas: Atlas, *, metric: str = "kl", component: str = "block",
               families: Sequence[str] | None = None, replicates: int = DEFAULT_REPLICATES,
               seed: int = 0) -> dict[str, Any]:
    """One seed's hub with its evidence (``hub_probability`` etc. are None, with a note,
    for a format-1 atlas, which keeps sums only)."""
    m = atlas.meta
    min_n = m.min_family_examples
    point = hub_summary(atlas.sums, metric=metric, component=component, families=families,
                        min_examples=min_n)
    entry: dict[str, Any] = {
        "seed": m.seed, "n_examples": m.n_examples, "ablation": m.ablation,
        "positions_ablated": m.positions_ablated, "method": m.method, "dtype": m.dtype,
        "correct_only": m.correct_only, "metric": metric, "component": component,
        # the layers the hub and the effects below are over: the exact ones (all layers
        # but for an estimate-then-verify atlas); ``swept_layers``: every layer mapped
        "layers": list(verified_layers(atlas.sums, component)),
        "swept_layers": list(atlas.sums.layers), "hub_layer": point.hub_layer,
        "family_argmax": point.family_argmax, "excluded_families": point.excluded,
        "clean": clean_accuracy(atlas),
    }
    if not atlas.sums.has_examples:
        return {**entry, "hub_probability": None, "hub_margin": None, "family_agreement": {
            "estimate": point.family_agreement, "ci": None},
            "layer_effect": {"estimate": list(point.layer_effect), "ci_low": None,
                             "ci_high": None},
            "note": "format-1 atlas: sums only, no per-example effects, no intervals"}
    ev = hub_evidence(atlas.sums, metric=metric, component=component, families=families,
                      min_examples=min_n, replicates=replicates, seed=seed)
    return {**entry, "hub_layer": ev.hub_layer, "runner_up": ev.runner_up,
            "n_used": ev.n_examples, "replicates": replicates,
            "hub_probability": list(ev.hub_probability),
            "hub_margin": {"estimate": ev.hub_margin.estimate,
                           "ci": [ev.hub_margin.ci_low, ev.hub_margin.ci_high]},
            "layer_effect": {"estimate": list(ev.layer_estimate), "ci_low": list(ev.layer_ci_low),
                             "ci_high": list(ev.layer_ci_high)},
            "family_agreement": {"estimate": ev.family_agreement.estimate,
                                 "ci": [ev.family_agreement.ci_low, ev.family_agreement.ci_high]}}
