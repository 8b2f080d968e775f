"""How fast could estimate-then-verify be with a *perfect* estimate? The stopping rule's floor.

    python benchmarks/verify_floor.py experiments/artifacts/*/atlas-*.atlas.json

Reads exact layer maps (every atlas file given that holds ``attn``, ``mlp`` and ``block``
and ``method = exact``), ranks each map's entries by their own exact family-averaged KL
(an oracle estimate: the order a perfect estimator would give), and runs verify's stopping
rule (:func:`tlatlas.atlas.verify.settle`, the same rankings as ``layer_ranking="pooled"``)
on that order. What it reports per atlas and ``patience``:

- ``entries``: how many (component, layer) entries the rule verifies even so (with a
  perfect order it stops after its first round: ``top_k + patience`` of the pooled
  ranking, united with ``1 + patience`` of the ``block`` ranking);
- ``layer_rows``: the cost model of the exact fast path, in layer-rows per example. The
  exact map runs one clean forward (``n`` layers) and, per layer ``L``, one forward from
  ``L`` with its three components stacked (``3 (n - L)``); a verify round runs one clean
  forward and a forward from ``L`` for each verified entry (``n - L`` each); the estimate
  (``bound``: a forward and a backward) is counted as ``3 n``;
- ``ceiling``: exact layer-rows / verify layer-rows, the largest speed-up the rule allows
  where compute is proportional to rows (per-forward overhead and the unembedding, a
  constant per row, are left out: both favour the exact map's fewer, larger forwards),
  with a 95% interval from a bootstrap over the atlas's examples (resampled within each
  family; each replicate re-ranks its own map).

No model is loaded: this is arithmetic on saved maps. With a real estimate the rule verifies
at least as many entries (``docs/estimate-verify.md``).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from tlatlas.atlas.config import COMPONENTS
from tlatlas.atlas.store import load_atlas
from tlatlas.atlas.verify import family_average, settle
from tlatlas.metrics import METRICS
from tlatlas.stats import DEFAULT_REPLICATES, Interval, percentile_interval, stratified_indices


def oracle_floor(layer_sum: torch.Tensor, count: torch.Tensor, layers: list[int],
                 n_layers: int, top_k: int, patience: int) -> dict:
    """The rule on a perfect order of one exact layer map ``[metric component layer family]``."""
    kl = family_average(layer_sum[METRICS.index("kl")].double(), count.double())  # [comp layer]
    n_c, n_l = kl.shape
    block = COMPONENTS.index("block")
    order = torch.sort(kl.flatten(), descending=True, stable=True).indices
    block_order = block * n_l + torch.sort(kl[block], descending=True, stable=True).indices
    got, rounds = settle([(order.tolist(), top_k, 0), (block_order.tolist(), 1, 0)],
                         lambda ids: kl.flatten()[ids], patience)
    rows = layer_rows([e % n_l for e in got], rounds, layers, n_layers, n_c)
    return {"entries": len(got), "of": n_c * n_l, "rounds": rounds,
            "layers": len({e % n_l for e in got}), "layer_rows": rows["layer_rows"],
            "exact_layer_rows": rows["exact_layer_rows"], "ceiling": rows["speedup"]}


def layer_rows(verified: list[int], rounds: int, layers: list[int], n_layers: int,
               n_components: int, estimate_rows: float | None = None) -> dict:
    """The cost model: layer-rows per example of a verify run that verified entries at the
    layer indices ``verified`` (one per entry) in ``rounds`` rounds after an estimate
    costing ``estimate_rows`` (default ``3 n``: a forward and a backward), of the exact
    map, and their ratio (``speedup``)."""
    exact_rows = n_layers + n_components * sum(n_layers - layer for layer in layers)
    est = 3 * n_layers if estimate_rows is None else estimate_rows
    verify_rows = est + rounds * n_layers + sum(n_layers - layers[i] for i in verified)
    return {"layer_rows": verify_rows, "exact_layer_rows": exact_rows,
            "speedup": exact_rows / verify_rows}


def ceiling_interval(example_layer: torch.Tensor, family: torch.Tensor, n_families: int,
                     layers: list[int], n_layers: int, top_k: int, patience: int, *,
                     replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Interval:
    """The ceiling with its bootstrap interval, from per-example effects ``[metric
    component layer example]`` (examples resampled within each family)."""
    def ceiling(idx: torch.Tensor) -> float:
        onehot = torch.nn.functional.one_hot(family[idx], n_families).double()
        sums = torch.einsum("mcle,ef->mclf", example_layer[..., idx].double(), onehot)
        return oracle_floor(sums, onehot.sum(0), layers, n_layers, top_k, patience)["ceiling"]

    n = family.numel()
    reps = stratified_indices(family, replicates, torch.Generator().manual_seed(seed))
    values = torch.tensor([ceiling(r) for r in reps], dtype=torch.float64)
    lo, hi = percentile_interval(values[:, None])
    return Interval(estimate=ceiling(torch.arange(n)), ci_low=float(lo[0]), ci_high=float(hi[0]),
                    n=n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("atlases", nargs="+", help="*.atlas.json files (others are skipped)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--patience", type=int, nargs="+", default=[10, 5])
    ap.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES,
                    help="bootstrap replicates of the ceiling's interval (0: none)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args(argv)
    rows = []
    for path in sorted(args.atlases):
        stem = str(path).removesuffix(".atlas.json")
        atlas = load_atlas(stem)
        meta, t = atlas.meta, atlas.sums.tensors
        if meta.method != "exact" or tuple(meta.components) != COMPONENTS:
            continue
        n_layers = meta.fingerprint.n_layers
        for patience in args.patience:
            layers = list(atlas.sums.layers)
            r = oracle_floor(t["layer.sum"], t["count"], layers, n_layers, args.top_k, patience)
            if args.replicates and "example.layer" in t:
                ci = ceiling_interval(t["example.layer"], t["example.family"].long(),
                                      len(atlas.sums.families), layers, n_layers, args.top_k,
                                      patience, replicates=args.replicates)
                r["ceiling_ci"] = [ci.ci_low, ci.ci_high]
            rows.append({"atlas": Path(path).name, "model": meta.model, "ablation": meta.ablation,
                         "seed": meta.seed, "n": meta.n_examples, "top_k": args.top_k,
                         "patience": patience, **r})
    if not rows:
        print("no exact three-component layer map among the files given", file=sys.stderr)
        return 1
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['model']:14s} {r['ablation']:9s} seed {r['seed']:>3} n={r['n']:<4} "
                  f"patience {r['patience']:>2}: {r['entries']:>2}/{r['of']} entries on "
                  f"{r['layers']:>2} layers, {r['layer_rows']:>4} / {r['exact_layer_rows']} "
                  f"layer-rows, ceiling {r['ceiling']:.2f}x"
                  + (" [{:.2f}, {:.2f}]".format(*r["ceiling_ci"]) if "ceiling_ci" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
