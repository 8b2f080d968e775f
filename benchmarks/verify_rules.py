"""Which order and which stopping rule should estimate-then-verify use? Replayed on saved maps.

    python benchmarks/verify_rules.py --exact EXACT.atlas.json [--estimate ATTR.atlas.json] \
        [--screen 1 2] [--rules patience:10 patience:5 bound:5 either:5]

Takes an exact layer map (per-example effects) and replays verify on it, reading each
verified entry's exact value from the map; no model is loaded. Two sources of the order:

- **a gradient estimate** (``--estimate``): an ``attribution`` atlas of the same model,
  ablation, suite and seed (``tlatlas atlas --method attribution --estimator bound``, the
  estimate verify ranks by today); entries ordered as verify orders them (family-averaged
  estimate, ``|KL|`` or ``|dlogp|`` where it gives no KL); it costs ``3 n`` layer-rows per
  example (a forward and a backward);
- **an exact screen** (``--screen J``): the exact map on the first ``J`` examples of each
  family, an unbiased estimate of every entry's family-averaged effect; it costs the exact
  map's rows times ``J / examples per family``, a share that shrinks as the atlas grows.

Rules (each on verify's two pooled rankings: every entry, top ``k``; ``block`` layers,
top 1, the hub):

- ``patience:P``: verify's rule (:func:`tlatlas.atlas.verify.settle`): stop when none of
  the last ``P`` verified entries is in the exact top ``k``;
- ``bound:W``: verify ``k + W`` entries, then ``W`` at a time; after each round take the
  largest ratio ``exact / estimate`` among the ranking's verified entries and stop when
  that ratio times the largest unverified estimate is below the ``k``-th exact value (an
  estimated bound: nothing unverified enters the top ``k`` unless the estimate
  under-states it more than it did every entry checked);
- ``either:W``: ``bound:W``, also stopping where ``patience:2k`` would.

Reported per order and rule: entries verified, recall of the exact top ``k`` (share
returned), whether the exact hub is returned, and the speed-up over the exact map in the
cost model of ``benchmarks/verify_floor.py`` (layer-rows), at the atlas's size and, for a
screen, without its cost (``verify only``: what the speed-up approaches as examples per
family grow). Intervals: a bootstrap over examples (resampled within each family; each
replicate re-ranks and replays); ``recall 1.0 in`` / ``hub`` give the shares of replicates
that return the whole exact top ``k`` / the exact hub.
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tlatlas.atlas.config import COMPONENTS
from tlatlas.atlas.store import load_atlas
from tlatlas.atlas.verify import Settled, bound_rule, family_average, patience_rule, settle
from tlatlas.metrics import METRICS
from tlatlas.stats import DEFAULT_REPLICATES, percentile_interval, stratified_indices

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verify_floor import layer_rows  # noqa: E402  (a sibling script, not a package)


def either_rule(score: torch.Tensor, patience: int) -> Settled:
    """``either``: verify's bound rule, or its patience rule with ``patience``."""
    bound, wait = bound_rule(score), patience_rule(patience)
    return lambda *a: wait(*a) or bound(*a)


def replay(kl: torch.Tensor, score: torch.Tensor, layers: list[int], n_layers: int,
           top_k: int, rule: str, p: int, estimate_rows: float | None = None) -> dict:
    """One rule on one map: ``kl`` [component layer] exact, ``score`` [component layer]
    the order's score, ``estimate_rows`` what computing it cost (default ``3 n``)."""
    n_c, n_l = kl.shape
    flat_kl, flat_s = kl.flatten(), score.flatten().nan_to_num(nan=-torch.inf)
    block = COMPONENTS.index("block")
    order = torch.sort(flat_s, descending=True, stable=True).indices.tolist()
    block_order = (block * n_l + torch.sort(flat_s.view(n_c, n_l)[block], descending=True,
                                            stable=True).indices).tolist()

    def exact(ids: list[int]) -> torch.Tensor:
        return flat_kl[ids]

    stop = {"patience": None, "bound": bound_rule(flat_s),
            "either": either_rule(flat_s, 2 * top_k)}[rule]
    got, rounds = settle([(order, top_k, 0), (block_order, 1, 0)], exact, p, stop)
    ids = torch.tensor(sorted(got))
    chosen = ids[torch.sort(flat_kl[ids], descending=True, stable=True).indices[:top_k]]
    truth = torch.sort(flat_kl, descending=True, stable=True).indices[:top_k]
    blocks = [e for e in got if e // n_l == block]
    hub = max(blocks, key=lambda e: (flat_kl[e].item(), -e))
    true_hub = block * n_l + int(torch.argmax(kl[block]))
    rows = layer_rows([e % n_l for e in got], rounds, layers, n_layers, n_c, estimate_rows)
    free = layer_rows([e % n_l for e in got], rounds, layers, n_layers, n_c, 0.0)
    return {"entries": len(got), "recall": len(set(chosen.tolist()) & set(truth.tolist())) / top_k,
            "hub_ok": hub == true_hub, **rows, "speedup_verify_only": free["speedup"]}


def family_mean(values: torch.Tensor, family: torch.Tensor, n_f: int,
                 idx: torch.Tensor) -> torch.Tensor:
    """Family-averaged mean of per-example ``values [... example]`` over examples ``idx``."""
    onehot = torch.nn.functional.one_hot(family[idx], n_f).double()
    return family_average(torch.einsum("...e,ef->...f", values[..., idx].double(), onehot),
                          onehot.sum(0))


def _score(est_mean: torch.Tensor) -> torch.Tensor:
    """verify's rank score of a family-averaged estimate ``[metric component layer]``."""
    m = METRICS.index("kl")
    return est_mean[METRICS.index("dlogp")].abs() if torch.isnan(est_mean[m]).all() \
        else est_mean[m].abs()


def screened(idx: torch.Tensor, family: torch.Tensor, n_f: int, j: int) -> torch.Tensor:
    """The first ``j`` examples of each family among ``idx``."""
    f = family[idx]
    return torch.cat([idx[f == k][:j] for k in range(n_f)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exact", nargs="+", required=True, help="exact *.atlas.json files")
    ap.add_argument("--estimate", nargs="*", default=[],
                    help="attribution *.atlas.json files, one per exact file (same order)")
    ap.add_argument("--screen", type=int, nargs="*", default=[],
                    help="order by the exact map on J examples per family (each J given)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--rules", nargs="+", default=["patience:10", "patience:5", "bound:5",
                                                     "either:5"])
    ap.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.estimate and len(args.exact) != len(args.estimate):
        ap.error("give one --estimate file per --exact file")
    for i, ex_path in enumerate(args.exact):
        try:
            rows = atlas_rows(ex_path, args.estimate[i] if args.estimate else None, args.screen,
                              args.rules, args.top_k, args.replicates)
        except ValueError as err:
            ap.error(str(err))
        for row in rows:
            print(json.dumps(row) if args.json else _line(row))
    return 0


def atlas_rows(ex_path: str, es_path: str | None, screens: list[int], rules: list[str],
               top_k: int, replicates: int) -> list[dict]:
    """Every (order, rule) row for one exact atlas (and its gradient estimate, if given)."""
    ex = load_atlas(str(ex_path).removesuffix(".atlas.json"))
    if ex.meta.method != "exact" or tuple(ex.meta.components) != COMPONENTS:
        raise ValueError(f"{ex_path}: need an exact map of every component")
    t = ex.sums.tensors
    exact_ex = t["example.layer"][METRICS.index("kl")]  # [component layer example]
    family = t["example.family"].long()
    n_f, layers = len(ex.sums.families), list(ex.sums.layers)
    n_layers, n = ex.meta.fingerprint.n_layers, family.numel()
    per_family = int(torch.bincount(family, minlength=n_f).min())
    exact_rows = layer_rows([], 0, layers, n_layers, len(COMPONENTS))["exact_layer_rows"]
    orders: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], float]] = []
    if es_path is not None:
        es = load_atlas(str(es_path).removesuffix(".atlas.json"))
        for what in ("model", "ablation", "suite_hash", "seed", "n_examples"):
            if getattr(ex.meta, what) != getattr(es.meta, what):
                raise ValueError(f"{ex_path} and {es_path} differ in {what}")
        if es.meta.method != "attribution" or \
                not torch.equal(t["example.id"], es.sums.tensors["example.id"]):
            raise ValueError(f"{es_path}: need an attribution atlas of the same examples")
        est_ex = es.sums.tensors["example.layer"]
        orders.append((es.meta.estimate["estimator"]["name"],
                       lambda idx: _score(family_mean(est_ex, family, n_f, idx)),
                       3.0 * n_layers))
    for j in screens:
        if not 1 <= j < per_family:
            raise ValueError(f"--screen {j}: need 1 <= J < {per_family} (examples per family)")
        orders.append((f"screen {j}/family",
                       lambda idx, j=j: family_mean(exact_ex, family, n_f,
                                                     screened(idx, family, n_f, j)),
                       exact_rows * j / per_family))
    reps = stratified_indices(family, replicates, torch.Generator().manual_seed(0))
    out = []
    for name, order, est_rows in orders:
        for spec in rules:
            rule, p = spec.split(":")

            def one(idx: torch.Tensor, rule=rule, p=p, order=order, est_rows=est_rows):
                return replay(family_mean(exact_ex, family, n_f, idx), order(idx),
                              layers, n_layers, top_k, rule, int(p), est_rows)

            boot = [one(r) for r in reps]
            row = {"model": ex.meta.model, "ablation": ex.meta.ablation, "n": n,
                   "per_family": per_family, "order": name, "rule": spec, "top_k": top_k,
                   "of": exact_ex.shape[0] * exact_ex.shape[1], **one(torch.arange(n)),
                   "replicates": len(boot)}
            for key in ("speedup", "speedup_verify_only"):
                vals = torch.tensor([b[key] for b in boot], dtype=torch.float64)
                lo, hi = percentile_interval(vals[:, None])
                row[f"{key}_ci"] = [float(lo[0]), float(hi[0])]
            row["recall_1_share"] = sum(b["recall"] == 1.0 for b in boot) / len(boot)
            row["hub_ok_share"] = sum(b["hub_ok"] for b in boot) / len(boot)
            out.append(row)
    return out


def _line(r: dict) -> str:
    line = (f"{r['model']:13s} {r['ablation']:4s} n={r['n']:<3} {r['order']:15s} {r['rule']:11s} "
            f"{r['entries']:>2}/{r['of']} entries, speed-up {r['speedup']:.2f}x "
            f"[{r['speedup_ci'][0]:.2f}, {r['speedup_ci'][1]:.2f}]")
    if r["order"].startswith("screen"):
        line += (f" (verify only {r['speedup_verify_only']:.2f}x "
                 f"[{r['speedup_verify_only_ci'][0]:.2f}, {r['speedup_verify_only_ci'][1]:.2f}])")
    return (line + f", recall {r['recall']:.1f} (1.0 in {100 * r['recall_1_share']:.0f}%), "
            f"hub {'ok' if r['hub_ok'] else 'WRONG'} ({100 * r['hub_ok_share']:.0f}%)")


if __name__ == "__main__":
    sys.exit(main())
