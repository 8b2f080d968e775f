"""Which order and rule should verify use on the position map? Replayed on saved cells.

    python benchmarks/verify_positions_replay.py dump --model M --ablation A \
        --families factual ioi induction --per-family 4 --out CELLS.pt [--add]
    python benchmarks/verify_positions_replay.py replay CELLS.pt [CELLS.pt ...] \
        [--orders bound bound-nofront first_order fisher fisher_bound] [--patience 10 5]
    python benchmarks/verify_positions_replay.py diagnose CELLS.pt [...] [--order bound] \
        [--patience 10] [--seed 42]

``dump`` computes, for every example, the exact position map (every cell [pcomp layer
position], the exact fast path) and the cheap estimates of it (``--estimators``; by
default ``bound``, first order, ``fisher`` and ``fisher_bound``),
and saves them with the model's layer count (``--add``: into an existing dump of the same
prompts, adding the estimates it lacks, the exact map kept); ``replay`` loads no model: it runs verify's
rule (:func:`tlatlas.atlas.verify.settle`) on each (example, component) ranking in each
order, reading a verified cell's exact KL from the dump, and reports per order and rule:
cells verified, recall of the exact top ``k`` (the share of the exact top-``k`` cells
returned; ties with the ``k``-th value count), the share of rankings with recall 1.0, and
the verified cells' cost as a share of the exact map's in the cost model of layer-tokens
(a cell at layer ``L`` and position ``p`` runs ``n_layers - L`` layers over the ``s - p +
1`` positions up to the scored one ``s``; per-forward overhead is left out). Intervals:
1,000 bootstrap replicates over the examples. ``diagnose`` loads the dump's model and runs
each cell the order leaves unverified among its ranking's exact top ``k`` again, exactly,
as it is and with every later layer's attention pattern held at its clean value: how much
of its effect runs through attention patterns (and the clean p(answer)).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _setup(model_name: str, ablation: str, seed: int, families, per_family: int,
           threads: int | None):
    """``(model, examples, means)`` of a dump: the suite's prompts at ``seed``, and for mean
    ablation the reference means (``REFERENCE_SEED_OFFSET``, 4 per family)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from atlas_speed import POS_HOOKS  # a sibling

    from tlatlas.atlas.pipeline import REFERENCE_SEED_OFFSET
    from tlatlas.atlas.sweep import reference_stats
    from tlatlas.hooks import hook_name
    from tlatlas.models import load_model
    from tlatlas.tasks import build_suite

    if threads:
        torch.set_num_threads(threads)
    model = load_model(model_name)
    examples = list(build_suite("synthetic", seed=seed, per_family=per_family,
                                families=families))
    means = None
    if ablation == "mean":
        ref = build_suite("synthetic", seed=seed + REFERENCE_SEED_OFFSET, per_family=4,
                          families=families)
        means = reference_stats(model, list(ref), [hook_name(layer, h) for layer in
                                                   range(model.n_layers) for h in POS_HOOKS])
    return model, examples, means


def dump(args) -> None:
    from atlas_speed import parse_estimator, swept_cells  # a sibling

    from tlatlas.atlas.config import AtlasConfig

    model, examples, means = _setup(args.model, args.ablation, args.seed, args.families,
                                    args.per_family, args.threads)
    config = AtlasConfig(ablation=args.ablation, batch_size=args.batch_size, positions=True)
    out = {"model": args.model, "ablation": args.ablation, "n_layers": model.n_layers,
           "uids": [ex.uid for ex in examples], "families": [ex.family for ex in examples]}
    if args.add:
        old = torch.load(args.out)
        if {k: old[k] for k in out} != out:
            raise SystemExit(f"{args.out} holds other prompts, another model or ablation")
        out = old
    else:
        _, out["exact"] = swept_cells(model, examples, config, means)
    for spec in args.estimators:
        if spec not in out:
            _, out[spec] = swept_cells(model, examples, config, means, parse_estimator(spec))
    torch.save(out, args.out)


def ranking_cells(exact: torch.Tensor, score: torch.Tensor, front: bool):
    """One (example, component) ranking: ``(order of the valid flat cell ids, n_front,
    exact KL [flat], cost [flat])`` from its exact KL and score [layer pos]."""
    n_l, width = exact.shape
    valid = ~torch.isnan(exact)
    at = int(valid.any(0).nonzero().max())  # the scored position: the last valid one
    lay = torch.arange(n_l)[:, None].expand(n_l, width)
    pos = torch.arange(width)[None, :].expand(n_l, width)
    cost = ((n_l - lay) * (at - pos + 1)).double().clamp_min(0) * valid
    s = score.double().nan_to_num(nan=-torch.inf).clone()
    s[~valid] = -torch.inf
    n_front = 0
    if front:
        s[:, at] = torch.where(valid[:, at], torch.inf, -torch.inf)
        n_front = int(valid[:, at].sum())
    order = torch.sort(s.flatten(), descending=True, stable=True).indices
    order = order[:int(valid.sum())]
    return order.tolist(), n_front, exact.flatten(), cost.flatten()


def replay_one(exact, score, front, top_k, patience):
    """``(cells verified, recall, cost verified, cost of all)`` for one ranking."""
    from atlas_speed import recall_at_k  # a sibling: the timed benchmark's recall

    from tlatlas.atlas.verify import settle

    order, n_front, ex, cost = ranking_cells(exact, score, front)
    got, _ = settle([(order, top_k, n_front)], lambda ids: ex[ids], patience)
    ids = torch.tensor(sorted(got))
    verified = torch.zeros_like(ex, dtype=torch.bool)
    verified[ids] = True
    recall = recall_at_k(ex[order], ex[order], verified[order], top_k)
    return len(got), recall, float(cost[ids].sum()), float(cost[order].sum())


def missed_cells(exact, score, front, top_k, patience) -> list[tuple[int, int, int]]:
    """The exact top-``top_k`` cells one ranking leaves unverified, as ``(layer, position,
    rank in the order)``."""
    from tlatlas.atlas.verify import settle

    order, n_front, ex, _ = ranking_cells(exact, score, front)
    got, _ = settle([(order, top_k, n_front)], lambda ids: ex[ids], patience)
    rank = {c: i for i, c in enumerate(order)}
    top = torch.tensor(order)[torch.sort(ex[order], descending=True, stable=True).indices[:top_k]]
    width = exact.shape[1]
    return [(c // width, c % width, rank[c]) for c in top.tolist() if c not in got]


def order_score(d: dict, est: str, uid: int) -> torch.Tensor:
    """One example's ranking score [pcomp layer pos] under estimate ``est`` of a dump: the
    magnitude of its KL where it gives one, else of its Delta-logp."""
    from tlatlas.metrics import METRICS

    sc = d[est if ":" in est else f"{est}:1"][uid]
    kl = METRICS.index("kl")
    return sc[kl if not torch.isnan(sc[kl]).all() else METRICS.index("dlogp")].abs()


def replay(args) -> None:
    from tlatlas.metrics import METRICS
    from tlatlas.stats import percentile_interval

    kl = METRICS.index("kl")
    print(f"# top_k {args.top_k}; 1000 bootstrap replicates over examples; cost in layer-tokens "
          "(per-forward overhead left out)")
    for path in args.cells:
        d = torch.load(path)
        n = len(d["uids"])
        print(f"# {path}")
        for order_name in args.orders:
            est, _, mode = order_name.partition("-")
            front = mode != "nofront"
            for patience in args.patience:
                per = []  # per example: (cells, recalls, cost, total)
                for u in d["uids"]:
                    e, sc = d["exact"][u], order_score(d, est, u)
                    rows = [replay_one(e[kl, p], sc[p], front, args.top_k, patience)
                            for p in range(e.shape[1])]
                    per.append(torch.tensor(rows, dtype=torch.float64))
                per_t = torch.stack(per)  # [example pcomp 4]
                cells = per_t[..., 0].sum()
                total_cells = sum(int((~torch.isnan(d["exact"][u][kl])).sum()) for u in d["uids"])

                def stat(idx, per_t=per_t):
                    p = per_t[idx]
                    return torch.stack([p[..., 1].mean(), (p[..., 1] == 1).double().mean(),
                                        p[..., 3].sum() / p[..., 2].sum()])

                point = stat(torch.arange(n))
                g = torch.Generator().manual_seed(0)
                boot = torch.stack([stat(torch.randint(0, n, (n,), generator=g))
                                    for _ in range(1000)])
                lo_hi = [percentile_interval(boot[:, i]) for i in range(3)]
                if args.misses:
                    for u in d["uids"]:
                        e, sc = d["exact"][u], order_score(d, est, u)
                        for p in range(e.shape[1]):
                            miss = missed_cells(e[kl, p], sc[p], front, args.top_k, patience)
                            if miss:
                                print(f"  missed, prompt {u}, component {p}: "
                                      + ", ".join(f"L{la} pos {po} (rank {r})"
                                                  for la, po, r in miss))
                print(f"{d['model']:13} {d['ablation']:4} n={n:3} {order_name:16} patience {patience:2}: "
                      f"{int(cells)}/{total_cells} cells, recall {point[0]:.3f} "
                      f"[{lo_hi[0][0]:.3f}, {lo_hi[0][1]:.3f}], recall 1.0 in "
                      f"{100 * point[1]:.0f}% of {per_t.shape[0] * per_t.shape[1]} rankings, "
                      f"speed-up {point[2]:.2f}x [{lo_hi[2][0]:.2f}, {lo_hi[2][1]:.2f}]")


def diagnose(args) -> None:
    """Each cell the order leaves unverified among its ranking's exact top ``k``, run again
    exactly (the naive path: one full forward) as it is and with every later layer's
    attention pattern held at its clean value, with the clean model's p(answer)."""
    from atlas_speed import POS_HOOKS  # a sibling

    from tlatlas.atlas.ablation import write_hook
    from tlatlas.atlas.config import COMPONENT_HOOKS, POS_COMPONENTS, AtlasConfig
    from tlatlas.atlas.engine import clean_batches
    from tlatlas.atlas.estimators import estimate_hooks
    from tlatlas.atlas.sweep import ablation_batch
    from tlatlas.hooks import hook_name
    from tlatlas.metrics import METRICS, effects

    kl = METRICS.index("kl")
    print(f"# order {args.order}, patience {args.patience}, top_k {args.top_k}; KL in nats at "
          "the scored position; 'patterns frozen': every attention pattern after the "
          "ablated layer held at its clean value")
    for path in args.cells:
        d = torch.load(path)
        model, examples, means = _setup(d["model"], d["ablation"], args.seed, args.families,
                                        args.per_family, args.threads)
        if [ex.uid for ex in examples] != d["uids"]:
            raise SystemExit(f"{path} holds other prompts than seed {args.seed}")
        misses = {}
        for u in d["uids"]:
            e, sc = d["exact"][u], order_score(d, args.order, u)
            for p in range(e.shape[1]):
                for la, po, rank in missed_cells(e[kl, p], sc[p], True, args.top_k,
                                                 args.patience):
                    misses.setdefault(u, []).append((p, la, po, rank, float(e[kl, p, la, po])))
        layers = tuple(range(model.n_layers))
        patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
        _, cached = estimate_hooks(layers, True)
        config = AtlasConfig(ablation=d["ablation"], batch_size=args.batch_size, positions=True)
        kept, total = [], 0
        for cb in clean_batches(model, examples, cached + patterns, batch_size=args.batch_size):
            ctx = ablation_batch(model, cb, config, means, layers, POS_HOOKS)
            batch, clean = cb.batch, cb.clean
            p_answer = clean.scored_logits.float().softmax(-1).gather(
                -1, batch.target.to(clean.scored_logits.device)[:, None])[:, 0]
            for row, ex in enumerate(cb.examples):
                for comp, layer, pos, rank, dumped in misses.get(ex.uid, []):
                    mask = torch.zeros(batch.tokens.shape, dtype=torch.bool)
                    mask[row, pos] = True
                    mask = mask.to(model.device)
                    hooks = [(n, write_hook(ctx.values[n], mask)) for n in
                             (hook_name(layer, h) for h in COMPONENT_HOOKS[POS_COMPONENTS[comp]])]
                    frozen = [(n, (lambda act, hook, v=clean.acts[n]: v.to(act.dtype)))
                              for n in patterns[layer + 1:]]
                    out = []
                    for extra in ([], frozen):
                        with torch.inference_mode():
                            logits = model.bridge.run_with_hooks(batch.tokens.to(model.device),
                                                                 fwd_hooks=hooks + extra)
                        s = int(batch.scored_pos[row])
                        out.append(float(effects(clean.scored_logits[row:row + 1],
                                                 logits[row:row + 1, s],
                                                 batch.target[row:row + 1]).kl[0]))
                    kept.append(out[1] / out[0])
                    total += 1
                    print(f"{d['model']:13} {d['ablation']:4} {ex.family:9} prompt {ex.uid} "
                          f"{POS_COMPONENTS[comp]:5} L{layer:<2} pos {pos:2} (rank {rank:3}, scored "
                          f"{int(batch.scored_pos[row])}): KL {out[0]:.3f} (dump {dumped:.3f}), "
                          f"patterns frozen {out[1]:.3f} ({100 * out[1] / out[0]:.0f}%); "
                          f"p(answer) {float(p_answer[row]):.2f}")
        half = sum(k >= 0.5 for k in kept)
        print(f"# {path}: {total} missed cells; {half} keep at least half their KL with the "
              f"patterns frozen, {total - half} lose more than half")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--model", required=True)
    d.add_argument("--ablation", choices=["zero", "mean"], default="zero")
    d.add_argument("--families", nargs="+", default=["factual", "ioi", "induction"])
    d.add_argument("--per-family", type=int, default=4)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--estimators", nargs="+",
                   default=["bound:1", "first_order:1", "fisher:1", "fisher_bound:1"])
    d.add_argument("--add", action="store_true",
                   help="add the estimates --out lacks to it (same prompts; exact map kept)")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--out", required=True)
    r = sub.add_parser("replay")
    r.add_argument("cells", nargs="+")
    r.add_argument("--orders", nargs="+",
                   default=["bound", "bound-nofront", "first_order", "fisher", "fisher_bound"])
    r.add_argument("--patience", type=int, nargs="+", default=[10, 5])
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--misses", action="store_true",
                   help="list each ranking's unverified exact top cells (layer, position, rank)")
    g = sub.add_parser("diagnose", help="run verify's missed cells again, with the later "
                       "attention patterns frozen")
    g.add_argument("cells", nargs="+")
    g.add_argument("--order", default="bound")
    g.add_argument("--patience", type=int, default=10)
    g.add_argument("--top-k", type=int, default=5)
    g.add_argument("--seed", type=int, default=42, help="the dump's suite seed")
    g.add_argument("--families", nargs="+", default=["factual", "ioi", "induction"])
    g.add_argument("--per-family", type=int, default=4)
    g.add_argument("--batch-size", type=int, default=8, help="the dump's batch size")
    g.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    {"dump": dump, "replay": replay, "diagnose": diagnose}[args.cmd](args)


if __name__ == "__main__":
    main()
