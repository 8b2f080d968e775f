"""Argument helpers and tables shared by several commands."""

import argparse


def add_suite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nl", action="store_true", help="the natural-language suite")
    p.add_argument("--seed", type=int, default=None, help="suite seed (default 42)")
    p.add_argument("--per-family", type=int, default=None, help="stratified sample size")


def suite_from_args(args: argparse.Namespace):
    from tlatlas.tasks import DEFAULT_SEED, build_suite

    seed = DEFAULT_SEED if args.seed is None else args.seed
    return build_suite("nl" if args.nl else "synthetic", seed=seed, per_family=args.per_family)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"tlatlas: error: --shard wants i/n (e.g. 0/4), got {text!r}") from None
    return i, n


def hub_table(rows: list[tuple[int, object]]) -> None:
    """Print hub, agreement and flatness per seed, then the spread across seeds."""
    from tlatlas.atlas.hubs import seed_spread

    print(f"{'seed':>6} {'hub':>4} {'effect':>9} {'agree':>6} {'least':>6} {'effect':>9}")
    for seed, h in rows:
        print(f"{seed:>6} {h.hub_layer:>4} {h.hub_effect:>9.4f} {h.family_agreement:>6.0%} "
              f"{h.least_layer:>6} {h.least_effect:>9.4f}")
    spread = seed_spread([s for s, _ in rows], [h for _, h in rows])
    print(f"hub per seed {list(spread.hubs)}  mode L{spread.mode}  std {spread.std:.2f}  "
          f"(metric {rows[0][1].metric}, component {rows[0][1].component}; kl and dlogp in nats)")
    fam = rows[0][1].family_argmax
    print("per-family argmax (first seed): " + ", ".join(f"{f} L{layer}" for f, layer in fam.items()))


def role_table(sums, metric: str) -> None:
    """Effect of ablating one position of each role, per layer (position bias)."""
    from tlatlas.atlas.sums import role_effect
    from tlatlas.tokens import ROLES

    for comp in ("resid", "block"):
        eff = role_effect(sums, metric, comp)  # [layer role]
        print(f"position roles, {comp} ablated at one position ({metric}, mean over layers): "
              + ", ".join(f"{r} {float(eff[:, i].mean()):.3f}" for i, r in enumerate(ROLES)))
        top = {r: sums.layers[int(eff[:, i].argmax())] for i, r in enumerate(ROLES)}
        print("  layer of largest effect per role: "
              + ", ".join(f"{r} L{layer}" for r, layer in top.items()))
