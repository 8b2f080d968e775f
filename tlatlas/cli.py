"""The ``tlatlas`` command. The only place (with notebooks and reports) that prints."""

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence

from tlatlas.errors import TlatlasError


def _add_suite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nl", action="store_true", help="the natural-language suite")
    p.add_argument("--seed", type=int, default=None, help="suite seed (default 42)")
    p.add_argument("--per-family", type=int, default=None, help="stratified sample size")


def _suite_from_args(args: argparse.Namespace):
    from tlatlas.tasks import DEFAULT_SEED, build_suite

    seed = DEFAULT_SEED if args.seed is None else args.seed
    return build_suite("nl" if args.nl else "synthetic", seed=seed, per_family=args.per_family)


def cmd_models(args: argparse.Namespace) -> int:
    from tlatlas.models import MODELS, model_availability

    available = model_availability()
    if args.json:
        print(json.dumps({n: {"available": available[n] is not None, "path": available[n]}
                          for n in MODELS}))
        return 0
    print(f"{'name':38} {'here':5} description / how to get it")
    for name, spec in MODELS.items():
        here = "yes" if available[name] else "no"
        extra = spec.description if available[name] else f"{spec.description}\n{'':45}-> {spec.install_hint}"
        print(f"{name:38} {here:5} {extra}")
    return 0


def cmd_suite(args: argparse.Namespace) -> int:
    suite = _suite_from_args(args)
    counts = suite.counts()
    if args.json:
        print(json.dumps({
            "kind": suite.kind, "seed": suite.seed, "total": len(suite),
            "families": len(counts), "counts": counts, "content_hash": suite.content_hash,
        }))
        return 0
    print(f"suite {suite.kind}  seed {suite.seed}  hash {suite.content_hash[:16]}")
    for family, n in counts.items():
        print(f"  {family:14} {n:5d}")
    print(f"  {'total':14} {len(suite):5d}  ({len(counts)} families)")
    if not args.stats:
        for ex in list(suite)[:3]:
            print(f"  e.g. [{ex.family}] {ex.prompt!r} -> {ex.answer!r}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tlatlas.evaluate import family_accuracy
    from tlatlas.models import load_model

    suite = _suite_from_args(args)
    model = load_model(args.model)
    with tqdm(total=len(suite), desc=f"eval {args.model}", unit="ex", file=sys.stderr) as bar:
        result = family_accuracy(model, list(suite), batch_size=args.batch_size,
                                 on_batch=bar.update)
    if args.json:
        print(json.dumps({
            "model": args.model, "fingerprint": model.fingerprint.to_dict(),
            "suite": suite.kind, "seed": suite.seed, "suite_hash": suite.content_hash,
            "families": {f: {"correct": r.correct, "total": r.total, "accuracy": r.accuracy,
                             "mean_logp": r.mean_logp} for f, r in result.items()},
        }))
        return 0
    print(f"model {args.model}  ({model.fingerprint.short})")
    print(f"suite {suite.kind} seed {suite.seed} hash {suite.content_hash[:16]}  n={len(suite)}")
    print(f"{'family':14} {'top-1':>7} {'n':>5} {'mean log p':>11}")
    correct = total = 0
    for f, r in result.items():
        print(f"{f:14} {r.accuracy:7.1%} {r.total:5d} {r.mean_logp:11.3f}")
        correct, total = correct + r.correct, total + r.total
    print(f"{'all':14} {correct / total:7.1%} {total:5d}")
    return 0


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"tlatlas: error: --shard wants i/n (e.g. 0/4), got {text!r}") from None
    return i, n


def _hub_table(rows: list[tuple[int, object]]) -> None:
    """Print hub, agreement and flatness per seed, then the spread across seeds."""
    from tlatlas.hubs import seed_spread

    print(f"{'seed':>6} {'hub':>4} {'effect':>9} {'agree':>6} {'least':>6} {'effect':>9}")
    for seed, h in rows:
        print(f"{seed:>6} {h.hub_layer:>4} {h.hub_effect:>9.4f} {h.family_agreement:>6.0%} "
              f"{h.least_layer:>6} {h.least_effect:>9.4f}")
    spread = seed_spread([s for s, _ in rows], [h for _, h in rows])
    print(f"hub per seed {list(spread.hubs)}  mode L{spread.mode}  std {spread.std:.2f}  "
          f"(metric {rows[0][1].metric}, component {rows[0][1].component}; kl and dlogp in nats)")
    fam = rows[0][1].family_argmax
    print("per-family argmax (first seed): " + ", ".join(f"{f} L{layer}" for f, layer in fam.items()))


def cmd_atlas(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from tlatlas.atlas import AtlasConfig
    from tlatlas.hubs import hub_summary
    from tlatlas.models import load_model
    from tlatlas.pipeline import SuiteSpec, build_atlas
    from tlatlas.store import save_atlas

    shard = _parse_shard(args.shard)
    config = AtlasConfig(ablation=args.ablation, positions=args.positions,
                         batch_size=args.batch_size,
                         method="naive" if args.method == "naive" else "exact",
                         layers=tuple(args.layers) if args.layers else None)
    model = load_model(args.model)
    out = Path(args.out)
    command = args.command_line
    rows = []
    for seed in args.seeds:
        spec = SuiteSpec(kind=args.suite, seed=seed, per_family=args.per_family,
                         families=tuple(args.families) if args.families else None, shard=shard)
        with tqdm(desc=f"atlas seed {seed}", unit="ex", file=sys.stderr) as bar:
            atlas = build_atlas(model, spec, config, method=args.method, command=command,
                                on_batch=bar.update)
        stem = out / (f"seed{seed}" + (f".shard{shard[0]}of{shard[1]}" if shard else ""))
        paths = save_atlas(atlas, stem)
        print(f"wrote {paths[1]}  ({atlas.meta.n_examples} examples, "
              f"{atlas.meta.timings.get('sweep', 0):.1f}s)", file=sys.stderr)
        # attribution estimates dlogp only (first-order KL is zero at the clean point)
        metric = "dlogp" if args.method == "attribution" else "kl"
        rows.append((seed, hub_summary(atlas.sums, metric=metric)))
    print(f"model {args.model} ({model.fingerprint.short})  suite {args.suite}  "
          f"ablation {args.ablation}  method {args.method}")
    _hub_table(rows)
    if config.positions:
        _role_table(atlas.sums, metric)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from tlatlas.hubs import hub_summary
    from tlatlas.store import find_atlases, load_atlas

    stems = find_atlases(args.dir)
    if not stems:
        print(f"tlatlas: error: no *.atlas.json in {args.dir}", file=sys.stderr)
        return 2
    atlases = [load_atlas(s) for s in stems]
    whole = [a for a in atlases if a.meta.shard is None]
    if not whole:
        print("only shards here: run `tlatlas merge` first", file=sys.stderr)
        return 2
    m = whole[0].meta
    print(f"model {m.model} ({m.fingerprint.short})  suite {m.suite_kind} "
          f"{m.suite_hash[:12]}  ablation {m.ablation}  method {m.method}")
    metric = "dlogp" if m.method == "attribution" and args.metric == "kl" else args.metric
    rows = [(a.meta.seed, hub_summary(a.sums, metric=metric, component=args.component,
                                      families=args.families)) for a in whole]
    _hub_table(rows)
    if whole[0].sums.has_positions:
        _role_table(whole[0].sums, metric)
    return 0


def _role_table(sums, metric: str) -> None:
    """Effect of ablating one position of each role, per layer (position bias)."""
    from tlatlas.atlas import role_effect
    from tlatlas.tokens import ROLES

    for comp in ("resid", "block"):
        eff = role_effect(sums, metric, comp)  # [layer role]
        print(f"position roles, {comp} ablated at one position ({metric}, mean over layers): "
              + ", ".join(f"{r} {float(eff[:, i].mean()):.3f}" for i, r in enumerate(ROLES)))
        top = {r: sums.layers[int(eff[:, i].argmax())] for i, r in enumerate(ROLES)}
        print("  layer of largest effect per role: "
              + ", ".join(f"{r} L{layer}" for r, layer in top.items()))


def cmd_merge(args: argparse.Namespace) -> int:
    from tlatlas.store import load_atlas, merge_atlases, save_atlas

    merged = merge_atlases([load_atlas(s) for s in args.shards])
    paths = save_atlas(merged, args.out)
    print(f"merged {len(args.shards)} shards ({merged.meta.n_examples} examples) -> {paths[1]}")
    return 0


def cmd_export_lora(args: argparse.Namespace) -> int:
    from bridges.export import plan_lora, write_adapter_config
    from bridges.names import leaf_to_short
    from tlatlas.models import load_model, weights_dir
    from tlatlas.store import load_atlas

    atlas = load_atlas(args.atlas)
    source = args.model or atlas.meta.model
    model = load_model(source)
    if not args.force:
        model.fingerprint.check_matches(atlas.meta.fingerprint, what=f"atlas {args.atlas}")
    modules = [leaf_to_short(model, m.strip()) for m in args.modules.split(",") if m.strip()]
    plan = plan_lora(model, args.strategy, atlas=atlas.sums, budget=args.budget,
                     top_k=args.top_k, modules=modules, rank=args.rank, seed=args.seed)
    path = write_adapter_config(plan, args.out, base_model=str(weights_dir(source)))
    print(f"{plan.strategy}: layers {list(plan.layers)}, modules {list(plan.modules)}, rank {plan.rank}")
    print(f"{plan.trainable_params} trainable parameters"
          + (f" (budget {plan.budget})" if plan.budget is not None else ""))
    print(f"wrote {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from bridges.export import plan_lora
    from bridges.names import leaf_to_short
    from bridges.quant import parse_precision
    from bridges.train import TrainConfig, train_lora
    from tlatlas.models import load_model
    from tlatlas.store import load_atlas

    model = load_model(args.model)
    atlas = None
    if args.strategy != "all-linear":
        if not args.atlas:
            print("tlatlas: error: --strategy atlas/random needs --atlas", file=sys.stderr)
            return 2
        atlas = load_atlas(args.atlas, fingerprint=model.fingerprint, force=args.force).sums
    modules = [leaf_to_short(model, m.strip()) for m in args.modules.split(",") if m.strip()]
    plan = plan_lora(model, args.strategy, atlas=atlas, budget=args.budget, top_k=args.top_k,
                     modules=modules, rank=args.rank, seed=args.seed)
    config = TrainConfig(family=args.family, steps=args.steps, lr=args.lr, seed=args.seed,
                         batch_size=args.batch_size, n_train=args.n_train, n_heldout=args.n_heldout)
    del model  # training loads its own plain HF copy
    with tqdm(total=config.steps, desc=f"LoRA {args.strategy} on {args.family}",
              file=sys.stderr) as bar:
        result = train_lora(args.model, plan, config, quantization=parse_precision(args.precision),
                            out=Path(args.out),
                            on_step=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
    print(f"{args.strategy}: layers {list(plan.layers)}, modules {list(plan.modules)}, "
          f"rank {plan.rank}, {result.trainable_params} trainable parameters")
    print(f"held-out loss {result.heldout_loss_before:.4f} -> {result.heldout_loss_after:.4f}   "
          f"exact match {result.exact_match_before:.1%} -> {result.exact_match_after:.1%}")
    print(f"adapter and result.json in {args.out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bridges.export import rank_layers
    from bridges.studies import module_sweep, strategy_study
    from bridges.train import TrainConfig
    from tlatlas.models import load_model
    from tlatlas.store import atomic_write, load_atlas

    model = load_model(args.model)
    atlas = load_atlas(args.atlas, fingerprint=model.fingerprint, force=args.force)
    train = TrainConfig(steps=args.steps, n_train=args.n_train, n_heldout=args.n_heldout)
    say = lambda what: print(f"  training {what}", file=sys.stderr, flush=True)  # noqa: E731
    if args.study == "strategies":
        out = strategy_study(args.model, model, atlas.sums, families=args.families,
                             seeds=args.seeds, top_k=args.top_k, rank=args.rank, train=train,
                             on_run=say)
        key = "strategy"
    else:
        layers = sorted(rank_layers(atlas.sums)[: args.top_k])
        out = module_sweep(args.model, model, layers, family=args.families[0], seeds=args.seeds,
                           rank=args.rank, train=train, on_run=say)
        key = "module_set"
    out.update({"kind": f"tlatlas.study.{args.study}", "model": args.model,
                "fingerprint": model.fingerprint.to_dict(), "atlas": str(args.atlas),
                "command": args.command_line})
    path = Path(args.out)
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(out, indent=1)))
    print(f"{key:16} {'family':10} {'seed':>4} {'params':>9} {'loss before':>11} "
          f"{'loss after':>10} {'EM after':>8}")
    for r in out["rows"]:
        print(f"{r[key]:16} {r['family']:10} {r['seed']:>4} {r['trainable_params']:>9} "
              f"{r['heldout_loss_before']:>11.4f} {r['heldout_loss_after']:>10.4f} "
              f"{r['exact_match_after']:>8.1%}")
    for name, why in out.get("skipped", {}).items():
        print(f"skipped {name}: {why}")
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlatlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="known model names and whether they are here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("suite", help="the task suite: per-family counts and content hash")
    _add_suite_args(p)
    p.add_argument("--stats", action="store_true", help="counts and hash only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("eval", help="clean per-family top-1 accuracy on the scored token")
    p.add_argument("--model", default="smollm2-135m")
    _add_suite_args(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("atlas", help="causal atlas: ablation effects by layer/component/family")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--suite", choices=["synthetic", "nl"], default="synthetic")
    p.add_argument("--per-family", type=int, default=None)
    p.add_argument("--families", nargs="+", default=None, help="restrict to these families")
    p.add_argument("--ablation", choices=["zero", "mean", "resample"], default="zero")
    p.add_argument("--positions", action="store_true", help="also the position-resolved maps")
    p.add_argument("--method", choices=["exact", "naive", "attribution"], default="exact")
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument("--layers", type=int, nargs="+", default=None)
    p.add_argument("--shard", default=None, help="i/n: only this disjoint slice of the suite")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_atlas)

    p = sub.add_parser("show", help="the hub table of the atlases in a directory")
    p.add_argument("dir")
    p.add_argument("--metric", choices=["kl", "dlogp", "acc_drop"], default="kl")
    p.add_argument("--component", choices=["attn", "mlp", "block"], default="block")
    p.add_argument("--families", nargs="+", default=None,
                   help="hub over these families only (e.g. the first four: suite breadth)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("merge", help="merge shards 0..n-1 into the whole-suite atlas")
    p.add_argument("shards", nargs="+", help="shard stems or .atlas.json files")
    p.add_argument("--out", required=True, help="output stem, e.g. out/seed42")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("export-lora", help="PEFT LoRA config targeting atlas-chosen modules")
    p.add_argument("atlas", help="atlas stem or .atlas.json")
    p.add_argument("--strategy", choices=["atlas", "random", "all-linear"], default="atlas")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, default=None, help="max trainable parameters")
    size.add_argument("--top-k", type=int, default=None, help="number of layers")
    p.add_argument("--modules", default="o", help="comma list: q,k,v,o,gate,in,out or HF leaves")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="default: the model the atlas records")
    p.add_argument("--force", action="store_true", help="allow an atlas of another model")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export_lora)

    p = sub.add_parser("train", help="LoRA fine-tune on a family with a fixed held-out split")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--family", default="json", help="a family name, or any")
    p.add_argument("--strategy", choices=["atlas", "random", "all-linear"], default="atlas")
    p.add_argument("--atlas", default=None, help="atlas stem (for atlas/random)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=int, default=None)
    size.add_argument("--top-k", type=int, default=None)
    p.add_argument("--modules", default="o")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-heldout", type=int, default=16)
    p.add_argument("--precision", default="fp32", help="fp32, or nf4 / nf4-bf16 / int8 (QLoRA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("study", help="adapter studies: strategies at matched budget, module sweep")
    p.add_argument("study", choices=["strategies", "modules"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--atlas", required=True)
    p.add_argument("--families", nargs="+", default=["json", "factual", "code"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-heldout", type=int, default=16)
    p.add_argument("--force", action="store_true")
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=cmd_study)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tlatlas never downloads
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "tlatlas " + shlex.join(argv)  # recorded in every result
    try:
        return int(args.func(args))
    except TlatlasError as err:
        print(f"tlatlas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
