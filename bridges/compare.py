"""Rows of the adapter studies and their paired comparisons (DESIGN §10).

Every run row keeps its per-prompt held-out values (``heldout_uids``, ``heldout_losses``,
``heldout_hits``), so two conditions trained with the same seeds on the same split are
compared on shared observations: a *pair* is one (training seed, family, held-out prompt),
and :func:`tlatlas.stats.paired_difference` resamples pairs within each family. Where a
condition has several runs per seed and family (random layer draws), its values are first
averaged over them, so a pair compares the reference with the condition's mean over draws.

Signs are chosen so that a positive difference favours the *reference*:
``loss = loss(other) - loss(reference)`` (nats) and ``exact_match = hit(reference) -
hit(other)``.
"""

from collections import defaultdict
from collections.abc import Sequence

import torch

from bridges.train import TrainResult, flattening
from tlatlas.stats import paired_difference


def run_row(result: TrainResult, **extra) -> dict:
    """One training run as a study row: its plan, budget, pooled and per-prompt measures."""
    return {**extra, "trainable_params": result.trainable_params,
            "layers": list(result.plan["layers"]), "modules": list(result.plan["modules"]),
            "rank": result.plan["rank"],
            "heldout_loss_before": result.heldout_loss_before,
            "heldout_loss_after": result.heldout_loss_after,
            "exact_match_before": result.exact_match_before,
            "exact_match_after": result.exact_match_after,
            "train_losses": list(result.losses), "flattening": flattening(result.losses),
            "heldout_uids": list(result.heldout_uids),
            "heldout_losses": list(result.heldout_losses),
            "heldout_hits": [bool(h) for h in result.heldout_hits]}


def per_prompt(rows: Sequence[dict], key: str, value: str
               ) -> dict[tuple[int, str, int], tuple[float, float]]:
    """``(seed, family, uid) -> (mean loss, mean hit)`` over the rows whose ``key`` is
    ``value`` (several runs of one seed and family, e.g. random draws, are averaged)."""
    acc: dict[tuple[int, str, int], list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if row[key] != value:
            continue
        for uid, loss, hit in zip(row["heldout_uids"], row["heldout_losses"],
                                  row["heldout_hits"], strict=True):
            acc[(row["seed"], row["family"], uid)].append((loss, float(hit)))
    return {k: (sum(x[0] for x in v) / len(v), sum(x[1] for x in v) / len(v))
            for k, v in acc.items()}


def _interval(ref: dict, other: dict, keys: list, families: list[str]) -> dict:
    fam_index = {f: i for i, f in enumerate(sorted(set(families)))}
    strata = torch.tensor([fam_index[k[1]] for k in keys])
    def values(table: dict, i: int) -> torch.Tensor:
        return torch.tensor([table[k][i] for k in keys], dtype=torch.float64)

    loss_ref, loss_other, hit_ref, hit_other = (values(ref, 0), values(other, 0),
                                                values(ref, 1), values(other, 1))
    return {"loss": paired_difference(loss_other, loss_ref, strata=strata).to_dict(),
            "exact_match": paired_difference(hit_ref, hit_other, strata=strata).to_dict()}


def compare_to(rows: Sequence[dict], key: str, reference: str, other: str) -> dict:
    """``reference`` vs ``other`` (values of ``rows[i][key]``) over their shared
    (seed, family, prompt) pairs: pooled over families (stratified) and per family.

    Returns ``{"n", "seeds", "loss", "exact_match", "by_family"}``; each interval is a
    :meth:`tlatlas.stats.Interval.to_dict`. Empty (``{"n": 0}``) when they share nothing.
    """
    ref, oth = per_prompt(rows, key, reference), per_prompt(rows, key, other)
    keys = sorted(ref.keys() & oth.keys())
    if not keys:
        return {"n": 0}
    families = [k[1] for k in keys]
    out = {"n": len(keys), "seeds": sorted({k[0] for k in keys}),
           **_interval(ref, oth, keys, families), "by_family": {}}
    for fam in sorted(set(families)):
        sub = [k for k in keys if k[1] == fam]
        out["by_family"][fam] = {"n": len(sub), **_interval(ref, oth, sub, [fam] * len(sub))}
    return out
