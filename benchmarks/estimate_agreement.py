"""How well does each estimate rank like the exact map? Spearman with bootstrap intervals.

    python benchmarks/estimate_agreement.py layer EXACT.atlas.json EST.atlas.json [EST ...] \
        [--base bound]
    python benchmarks/estimate_agreement.py cells CELLS.pt [CELLS.pt ...] \
        [--estimators bound:1 fisher_bound:1 fisher:1 first_order:1] [--base bound:1]

``layer``: an exact atlas and attribution atlases of the same examples (``tlatlas atlas
--method attribution --estimator E``); Spearman over the family-averaged layer map
[component layer] (families weighted equally, as verify ranks it). ``cells``: dumps of
``verify_positions_replay.py dump``; Spearman over every example's valid cells [pcomp layer
position], pooled. Both rank each estimate by the score verify ranks by
(:func:`tlatlas.atlas.verify.rank_scores`: ``|KL|``, or ``|Delta-logp|`` without a KL
estimate) against the exact KL. Intervals: 1,000 bootstrap replicates over the examples
(within family for ``layer``), each recomputing every estimate's Spearman; the paired
difference against ``--base`` uses the same replicates. No model is loaded.
"""

import argparse
import sys
from collections.abc import Callable

import torch

from tlatlas.atlas.store import load_atlas
from tlatlas.atlas.verify import rank_scores
from tlatlas.metrics import METRICS
from tlatlas.stats import DEFAULT_REPLICATES, percentile_interval, spearman, stratified_indices

KL = METRICS.index("kl")


def family_mean(ex: torch.Tensor, family: torch.Tensor, n_f: int, idx: torch.Tensor
                ) -> torch.Tensor:
    """[metric component layer example] -> the family-averaged map [metric component layer]
    of the examples ``idx`` (families weighted equally)."""
    fam = family[idx]
    per = torch.stack([ex[..., idx[fam == f]].mean(-1) for f in range(n_f)], -1)
    return per.mean(-1)


def layer_sources(exact_path: str, est_paths: list[str]
                  ) -> tuple[dict[str, Callable[[torch.Tensor], tuple]], torch.Tensor, str]:
    """``(name -> replicate -> (exact, score) vectors, families, label)`` for ``layer``."""
    ex = load_atlas(exact_path.removesuffix(".atlas.json"))
    t = ex.sums.tensors
    family, n_f = t["example.family"].long(), len(ex.sums.families)
    sources = {}
    for path in est_paths:
        es = load_atlas(path.removesuffix(".atlas.json"))
        if es.meta.method != "attribution" or not torch.equal(t["example.id"],
                                                            es.sums.tensors["example.id"]):
            raise SystemExit(f"{path}: need an attribution atlas of {exact_path}'s examples")
        est = es.sums.tensors["example.layer"]

        def pair(idx, est=est):
            e = family_mean(t["example.layer"], family, n_f, idx)[KL]
            return e.flatten(), rank_scores(family_mean(est, family, n_f, idx), "kl").flatten()

        sources[es.meta.estimate["estimator"]["name"]] = pair
    return sources, family, f"{ex.meta.model} {ex.meta.ablation} layer map, n = {family.numel()}"


def cell_sources(path: str, estimators: list[str]
                 ) -> tuple[dict[str, Callable[[torch.Tensor], tuple]], torch.Tensor, str]:
    """The same for one cells dump (every example its own stratum)."""
    d = torch.load(path)
    uids = d["uids"]

    def pair(idx, spec):
        ex, sc = [], []
        for i in idx.tolist():
            e, s = d["exact"][uids[i]][KL], rank_scores(d[spec][uids[i]], "kl")
            valid = ~torch.isnan(e)
            ex.append(e[valid])
            sc.append(s[valid])
        return torch.cat(ex), torch.cat(sc)

    sources = {spec: (lambda idx, spec=spec: pair(idx, spec)) for spec in estimators if spec in d}
    return sources, torch.zeros(len(uids), dtype=torch.long), \
        f"{path}: {d['model']} {d['ablation']} cells, n = {len(uids)}"


def report(sources, family, label, base: str | None, replicates: int) -> None:
    reps = [torch.arange(family.numel()),
            *stratified_indices(family, replicates, torch.Generator().manual_seed(0))]
    rho = {name: torch.tensor([float(spearman(*f(idx))) for idx in reps], dtype=torch.float64)
           for name, f in sources.items()}
    print(f"{label} ({replicates} replicates)")
    for name, r in rho.items():
        lo, hi = percentile_interval(r[1:, None])
        line = f"  {name:16s} spearman {r[0]:.3f} [{float(lo[0]):.3f}, {float(hi[0]):.3f}]"
        if base in rho and name != base:
            d = r - rho[base]
            dlo, dhi = percentile_interval(d[1:, None])
            line += f"; minus {base}: {d[0]:+.3f} [{float(dlo[0]):+.3f}, {float(dhi[0]):+.3f}]"
        print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    lay = sub.add_parser("layer")
    lay.add_argument("exact")
    lay.add_argument("estimates", nargs="+")
    lay.add_argument("--base", default="bound")
    cells = sub.add_parser("cells")
    cells.add_argument("dumps", nargs="+")
    cells.add_argument("--estimators", nargs="+",
                       default=["bound:1", "fisher_bound:1", "fisher:1", "first_order:1"])
    cells.add_argument("--base", default="bound:1")
    for p in (lay, cells):
        p.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES)
    args = ap.parse_args()
    if args.cmd == "layer":
        report(*layer_sources(args.exact, args.estimates), args.base, args.replicates)
    else:
        for path in args.dumps:
            report(*cell_sources(path, args.estimators), args.base, args.replicates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
