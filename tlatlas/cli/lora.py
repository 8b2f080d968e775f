"""`tlatlas export-lora | train | study`: from an atlas to PEFT adapters and the adapter studies."""

import argparse
import json
import sys


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


def register(sub) -> None:
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
