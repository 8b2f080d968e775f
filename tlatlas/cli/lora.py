"""`tlatlas export-lora | train | study`: from an atlas to PEFT adapters and the adapter studies."""

import argparse
import json
import sys


def cmd_export_lora(args: argparse.Namespace) -> int:
    from bridges.export import plan_lora, write_adapter_config
    from bridges.names import leaf_to_short
    from tlatlas.atlas.store import load_atlas
    from tlatlas.models import load_model, weights_dir

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
    from bridges.train import TrainConfig, train_lora
    from tlatlas.atlas.store import load_atlas
    from tlatlas.models import load_model
    from tlatlas.models.quant import parse_precision

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


def _train_rows(out: dict, key: str) -> None:
    print(f"{key:16} {'family':10} {'seed':>4} {'params':>9} {'loss before':>11} "
          f"{'loss after':>10} {'EM after':>8}")
    for r in out["rows"]:
        print(f"{r[key]:16} {r['family']:10} {r['seed']:>4} {r['trainable_params']:>9} "
              f"{r['heldout_loss_before']:>11.4f} {r['heldout_loss_after']:>10.4f} "
              f"{r['exact_match_after']:>8.1%}")
    for r in out["rows"]:
        if "initial_params" in r:
            print(f"adalora {r['family']} seed {r['seed']}: {r['initial_params']} params at the "
                  f"start (init_r {r['rank']}), {r['trainable_params']} at the end (target_r "
                  f"{r['target_r']}; PEFT's saved adapter: {r['peft_final_params']}), "
                  f"budget {r['budget']}")


def _skip_rows(out: dict) -> None:
    full = out["full"]
    print(f"{out['n_prompts']} held-out prompts; full model: loss {full['heldout_loss']:.4f}, "
          f"exact match {full['exact_match']:.1%}")
    print(f"{'skip set':9} {'layers':20} {'top5 before':>11} {'KL before':>9} "
          f"{'top5 after':>10} {'KL after':>8} {'loss before':>11} {'loss after':>10}")
    for r in out["rows"]:
        b, a = r["before"], r.get("after", {"top5_overlap": float("nan"), "kl": float("nan")})
        print(f"{r['skip_set']:9} {str(r['layers_skipped']):20} {b['top5_overlap']:>11.3f} "
              f"{b['kl']:>9.4f} {a['top5_overlap']:>10.3f} {a['kl']:>8.4f} "
              f"{r.get('heldout_loss_before', float('nan')):>11.4f} "
              f"{r.get('heldout_loss_after', float('nan')):>10.4f}")


def _stability_rows(out: dict) -> None:
    print(f"LoRA on {out['family']}, layers {list(out['plan']['layers'])}, modules "
          f"{list(out['plan']['modules'])}")
    print(f"{'step':>5} {'hub':>4} {'effect':>8} {'agree':>6} {'spearman':>8} {'loss':>8}  "
          "per-family argmax")
    for r in out["rows"]:
        fam = ", ".join(f"{f} L{layer}" for f, layer in r["family_argmax"].items())
        print(f"{r['steps']:>5} {r['hub_layer']:>4} {r['hub_effect']:>8.4f} "
              f"{r['family_agreement']:>6.0%} {r['spearman_vs_step0']:>8.3f} "
              f"{r['heldout_loss']:>8.4f}  {fam}")
    print(f"hub per checkpoint {out['hubs']}: " + ("it moved" if out["hub_moved"] else
                                                  "it did not move"))


def cmd_study(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bridges.export import rank_layers
    from bridges.train import TrainConfig
    from tlatlas.atlas.store import load_atlas
    from tlatlas.io import atomic_write
    from tlatlas.models import load_model

    model = load_model(args.model, device=args.device)
    atlas = load_atlas(args.atlas, fingerprint=model.fingerprint, force=args.force)
    train = TrainConfig(steps=args.steps, n_train=args.n_train, n_heldout=args.n_heldout,
                        lr=args.lr)
    say = lambda what: print(f"  {what}", file=sys.stderr, flush=True)  # noqa: E731
    if args.study == "strategies":
        from bridges.studies import strategy_study

        out = strategy_study(args.model, model, atlas.sums, families=args.families,
                             seeds=args.seeds, top_k=args.top_k, rank=args.rank, train=train,
                             on_run=say)
    elif args.study == "modules":
        from bridges.studies import module_sweep

        layers = sorted(rank_layers(atlas.sums)[: args.top_k])
        out = module_sweep(args.model, model, layers, family=args.families[0], seeds=args.seeds,
                           rank=args.rank, train=train, on_run=say)
    elif args.study == "skip":
        from dataclasses import replace

        from bridges.names import MODULES
        from bridges.skip import layer_skip_study

        modules = MODULES if args.recovery_modules == "all" else tuple(
            m.strip() for m in args.recovery_modules.split(","))
        out = layer_skip_study(args.model, model, atlas.sums, k=args.k, seed=args.seeds[0],
                               recovery=replace(train, family=args.recovery_family),
                               modules=modules, rank=args.rank, device=args.device,
                               on_run=say)
    else:
        from bridges.stability import stability_study
        from tlatlas.atlas.config import AtlasConfig
        from tlatlas.atlas.pipeline import SuiteSpec

        fams = tuple(args.atlas_families) if args.atlas_families else atlas.sums.families
        out = stability_study(args.model, model, atlas.sums, family=args.families[0],
                              checkpoints=args.checkpoints, top_k=args.top_k, rank=args.rank,
                              seed=args.seeds[0], train=train,
                              spec=SuiteSpec(per_family=args.atlas_per_family, families=fams),
                              atlas_config=AtlasConfig(batch_size=8), on_run=say)
    out.update({"kind": f"tlatlas.study.{args.study}", "model": args.model,
                "fingerprint": model.fingerprint.to_dict(), "atlas": str(args.atlas),
                "command": args.command_line})
    path = Path(args.out)
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(out, indent=1)))
    if args.study in ("strategies", "modules"):
        _train_rows(out, "strategy" if args.study == "strategies" else "module_set")
    elif args.study == "skip":
        _skip_rows(out)
    else:
        _stability_rows(out)
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

    p = sub.add_parser("study", help="adapter studies: strategies at matched budget, module "
                                     "sweep, layer skip, atlas stability during training")
    p.add_argument("study", choices=["strategies", "modules", "skip", "stability"])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--atlas", required=True)
    p.add_argument("--families", nargs="+", default=["json", "factual", "code"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-heldout", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--k", type=int, default=4, help="skip: blocks skipped per set")
    p.add_argument("--recovery-family", default="any", help="skip: recovery fine-tune family")
    p.add_argument("--recovery-modules", default="all",
                   help="skip: modules of the recovery LoRA (all, or a comma list such as o)")
    p.add_argument("--checkpoints", type=int, nargs="+", default=[0, 10, 20],
                   help="stability: optimizer steps at which the atlas is rebuilt")
    p.add_argument("--atlas-families", nargs="+", default=None,
                   help="stability: families of each checkpoint's atlas (default: the atlas's)")
    p.add_argument("--atlas-per-family", type=int, default=2,
                   help="stability: examples per family of each checkpoint's atlas")
    p.add_argument("--device", default=None, help="default: CUDA if present, else CPU")
    p.add_argument("--force", action="store_true")
    p.add_argument("--out", required=True, help="result JSON file")
    p.set_defaults(func=cmd_study)
