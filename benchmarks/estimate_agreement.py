"""How well does each estimate rank like the exact map? Spearman with bootstrap intervals.

    python benchmarks/estimate_agreement.py layer EXACT.atlas.json [EST.atlas.json ...] \
        [--base bound] [--screen 1]
    python benchmarks/estimate_agreement.py cells CELLS.pt [CELLS.pt ...] \
        [--estimators bound:1 fisher_bound:1 fisher:1 first_order:1] [--base bound:1]

``layer``: an exact atlas and attribution atlases of the same examples (``tlatlas atlas
--method attribution --estimator E``); Spearman over the family-averaged layer map
[component layer] (families weighted equally, as verify ranks it); ``--screen J`` adds
verify's default order, the exact map of the first ``J`` examples of each family, against
the whole map it is part of, with its spread over random draws of ``J`` per family. ``cells``: dumps of
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
from pathlib import Path

import torch

from tlatlas.atlas.store import Atlas, load_atlas
from tlatlas.atlas.verify import rank_scores
from tlatlas.metrics import METRICS
from tlatlas.stats import DEFAULT_REPLICATES, percentile_interval, spearman, stratified_indices

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verify_rules import family_mean, screened  # noqa: E402  (a sibling script)

KL = METRICS.index("kl")


def _label(estimator: dict) -> str:
    """An estimate's name in the tables: its method's, with ``/K`` where a Fisher estimate
    takes other than the default outcome count (``fisher/32``)."""
    from tlatlas.atlas.estimate_spec import Estimator

    k = estimator.get("outcomes", Estimator.outcomes)
    return estimator["name"] + (f"/{k}" if k != Estimator.outcomes else "")


def layer_sources(ex: Atlas, est_paths: list[str]
                  ) -> tuple[dict[str, Callable[[torch.Tensor], tuple]], torch.Tensor, str]:
    """``(name -> replicate -> (exact, score) vectors, families, label)`` for ``layer``,
    from the exact atlas ``ex`` and attribution atlases of its examples."""
    t = ex.sums.tensors
    family, n_f = t["example.family"].long(), len(ex.sums.families)
    exact_kl = t["example.layer"][KL]
    sources = {}
    for path in est_paths:
        es = load_atlas(path.removesuffix(".atlas.json"))
        if es.meta.method != "attribution" or not torch.equal(t["example.id"],
                                                            es.sums.tensors["example.id"]):
            raise SystemExit(f"{path}: need an attribution atlas of the exact atlas's examples")
        est = es.sums.tensors["example.layer"]

        def pair(idx, est=est):
            return (family_mean(exact_kl, family, n_f, idx).flatten(),
                    rank_scores(family_mean(est, family, n_f, idx), "kl").flatten())

        sources[_label(es.meta.estimate["estimator"])] = pair
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


def screen_rhos(kl: torch.Tensor, family: torch.Tensor, n_f: int, picked: torch.Tensor
                ) -> tuple[float, float]:
    """Spearman of the family-averaged map of the examples ``picked`` (a screen) with that of
    every example, and with that of the examples not picked. ``kl`` [component layer
    example]."""
    every = torch.arange(family.numel())
    screen = family_mean(kl, family, n_f, picked).flatten()
    full = family_mean(kl, family, n_f, every).flatten()
    rest = family_mean(kl, family, n_f, every[~torch.isin(every, picked)]).flatten()
    return float(spearman(screen, full)), float(spearman(screen, rest))


def screen_agreement(ex: Atlas, j: int, draws: int) -> str:
    """The exact screen of ``j`` examples per family (verify's default order of the layer
    map) against the exact map: against the whole map, which includes the screen (what
    verify faces; the overlap flatters it where the screen is a large share), and against
    the map of the other examples (no overlap, but a noisier truth). For the first ``j``
    of each family (what verify takes), and the spread over ``draws`` random choices of
    ``j`` per family (which examples the screen takes; a bootstrap would repeat examples
    inside it)."""
    t = ex.sums.tensors
    family, n_f = t["example.family"].long(), len(ex.sums.families)
    kl, every = t["example.layer"][KL], torch.arange(family.numel())
    g = torch.Generator().manual_seed(0)
    members = [torch.nonzero(family == f)[:, 0] for f in range(n_f)]
    spread = torch.tensor([screen_rhos(kl, family, n_f, torch.cat(
        [m[torch.randperm(m.numel(), generator=g)[:j]] for m in members]))
        for _ in range(draws)], dtype=torch.float64)
    lo, hi = percentile_interval(spread)
    med = spread.median(0).values
    first = screen_rhos(kl, family, n_f, screened(every, family, n_f, j))
    return (f"  screen {j}/family ({j * n_f / family.numel():.0%} of the examples): spearman "
            f"vs the whole map {first[0]:.3f}, vs the rest {first[1]:.3f} (first {j} of each "
            f"family); over {draws} random draws, median {med[0]:.3f} [{float(lo[0]):.3f}, "
            f"{float(hi[0]):.3f}] and {med[1]:.3f} [{float(lo[1]):.3f}, {float(hi[1]):.3f}]")


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
    lay.add_argument("--screen", type=int, nargs="*", default=[], metavar="J",
                     help="also the exact screen of J examples per family")
    cells = sub.add_parser("cells")
    cells.add_argument("dumps", nargs="+")
    cells.add_argument("--estimators", nargs="+",
                       default=["bound:1", "fisher_bound:1", "fisher:1", "first_order:1"])
    cells.add_argument("--base", default="bound:1")
    for p in (lay, cells):
        p.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES)
    args = ap.parse_args()
    if args.cmd == "layer":
        exact = load_atlas(args.exact.removesuffix(".atlas.json"))
        report(*layer_sources(exact, args.estimates), args.base, args.replicates)
        for j in args.screen:
            print(screen_agreement(exact, j, args.replicates))
    else:
        for path in args.dumps:
            report(*cell_sources(path, args.estimators), args.base, args.replicates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
