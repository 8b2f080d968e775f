"""Which of an atlas's values are exact: ``tlatlas show`` and the report say so.

An exact or naive atlas holds exact values only; an attribution atlas holds estimates
only; an estimate-then-verify atlas (:mod:`tlatlas.atlas.verify`) holds exact values at
its verified entries and estimates elsewhere, and its hub is taken over the exact ones.
"""

from tlatlas.atlas.config import COMPONENTS
from tlatlas.atlas.hubs import verified_layers


def exactness(atlas, component: str = "block") -> dict:
    """Which of an atlas's values are exact, as plain data (``show --json``'s ``values``).

    ``exact``: ``all`` (exact, naive), ``none`` (attribution: every value is the
    estimate) or ``verified`` (estimate then verify: the verified entries are exact, the
    others hold the estimate). With ``verified``: the layer entries exact out of how many,
    the exact layers of each component, ``hub_layers`` (those of ``component``: the only
    layers the hub and its evidence are taken over), position cells exact out of how many,
    and the settings (top_k, patience, ...) from the metadata. Counts come from the
    tensors, so they stay right when shards merge. ``estimated``: what an unverified value
    holds."""
    m, sums = atlas.meta, atlas.sums
    record = m.estimate or {}
    if m.method != "attribution" and not sums.has_verified:
        return {"exact": "all", "method": m.method}
    estimator = record.get("estimator")
    estimated = (f"the screen: each family's exact mean over its first {record.get('screen')} "
                 "examples" if record.get("filled_by") == "screen" else _estimated_values(estimator))
    out = {"exact": "verified" if sums.has_verified else "none", "method": m.method,
           "estimator": estimator, "estimated": estimated}
    if not sums.has_verified:
        return out
    exact = {c: list(verified_layers(sums, c)) for c in COMPONENTS}
    out.update(entries=len(COMPONENTS) * len(sums.layers),
               entries_verified=sum(len(v) for v in exact.values()), exact_layers=exact,
               component=component, hub_layers=exact[component])
    t = sums.tensors
    if "role.verified" in t:  # role.verified [pcomp layer role family], role.count [role family]
        pcomp, n_l = t["role.verified"].shape[:2]
        out.update(cells=int(pcomp * n_l * t["role.count"].sum()),
                   cells_verified=int(t["role.verified"].sum()))
    out.update({k: record[k] for k in ("top_k", "patience", "rank_metric", "layer_ranking",
                                       "layer_rounds", "stopping", "screen", "filled_by", "rule",
                                       "ordered_by")
                if k in record})
    return out


def _estimated_values(estimator: dict | None) -> str:
    """What an estimated entry holds, for an estimator's record (method, steps, name)."""
    from tlatlas.atlas.estimate_spec import FISHER_METHODS, MAGNITUDE_METHODS

    if not estimator:
        return "the estimate"
    if estimator["method"] in FISHER_METHODS:
        kind = "an upper bound on" if estimator["method"] == "fisher_bound" else ""
        return (f"{estimator['name']} ({estimator.get('outcomes', '?')} outcomes): "
                f"{kind + ' ' if kind else ''}the second-order estimate of kl; dlogp and "
                "acc_drop NaN")
    if estimator["method"] in MAGNITUDE_METHODS:
        return (f"{estimator['name']}: a magnitude score in the dlogp slot (not a signed "
                "dlogp); kl and acc_drop NaN")
    if int(estimator["steps"]) == 1:
        return "first_order: the estimate of dlogp; kl and acc_drop NaN"
    return f"{estimator['name']} ({estimator['steps']} steps): estimates of kl and dlogp; acc_drop NaN"


def exactness_line(e: dict) -> str:
    """:func:`exactness` in a line or two for the tables."""
    if e["exact"] == "all":
        return f"values: all exact ({e['method']})"
    if e["exact"] == "none":
        return f"values: all estimated, none exact ({e['estimated']})"
    layers = "; ".join(f"{c} " + (",".join(f"L{x}" for x in v) or "none")
                       for c, v in e["exact_layers"].items())
    text = (f"values: {e['entries_verified']}/{e['entries']} layer entries exact ({layers}; "
            f"top {e.get('top_k', '?')} settled, {e.get('stopping', 'patience')} rule, "
            f"patience {e.get('patience', '?')}"
            + (f", ordered by a screen of {e['screen']} per family"
               if e.get("ordered_by", "screen") == "screen" and e.get("screen") else
               ", ordered by the estimate")
            + ")")
    if "cells" in e:
        text += f", position cells {e['cells_verified']}/{e['cells']} exact"
    return (text + f"\n  the rest estimated by {e['estimated']}\n  hub over the exact "
            f"{e['component']} layers only")
