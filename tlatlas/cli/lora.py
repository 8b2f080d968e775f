"""`tlatlas export-lora | train | study`: from an atlas to PEFT adapters and the adapter studies."""

import argparse
import json
import sys

from tlatlas.cli.common import (
    add_model_arg,
    atlas_stem,
    fail,
    family,
    family_or_any,
    non_negative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    run_bar,
)
from tlatlas.cli.common import device as device_type

STRATEGIES = ["atlas", "random", "all-linear"]
STUDY_STEPS, STUDY_HELDOUT, STUDY_DRAWS = 60, 32, 3
"""The studies' defaults (bridges.studies.DEFAULT_TRAIN / DEFAULT_DRAWS; a test keeps them
equal, and the parser does not import torch to read them)."""
STUDY_MAX_SETS = 100
"""bridges.skip_sets.DEFAULT_MAX_SETS."""


def _check_size(args: argparse.Namespace, atlas_sums) -> None:
    """--budget / --top-k against the strategy and the atlas, before the model loads."""
    if args.strategy == "all-linear":
        return
    if args.budget is None and args.top_k is None:
        fail(f"--strategy {args.strategy} needs --budget P or --top-k K")
    if args.top_k is not None:
        _check_top_k(args.top_k, atlas_sums)


def _check_top_k(top_k: int, atlas_sums) -> None:
    """--top-k against the layers the export may rank: the exact ones (all but for an
    estimate-then-verify atlas)."""
    from tlatlas.atlas.hubs import verified_layers

    n, total = len(verified_layers(atlas_sums)), len(atlas_sums.layers)
    if top_k > n:
        what = "layers than the atlas has" if n == total else \
            f"layers than the atlas verified ({n} of {total} are exact)"
        fail(f"--top-k {top_k} is more {what} ({n}); use 1..{n}")


def _modules(model, text: str) -> list[str]:
    from bridges.names import leaf_to_short

    modules = [leaf_to_short(model, m.strip()) for m in text.split(",") if m.strip()]
    if not modules:
        fail(f"--modules {text!r} names no module; e.g. o or q,k,v,o")
    return modules


def cmd_export_lora(args: argparse.Namespace) -> int:
    from bridges.export import plan_lora, write_adapter_config
    from tlatlas.atlas.store import load_atlas
    from tlatlas.models import load_model, weights_dir

    atlas = load_atlas(atlas_stem(args.atlas))
    _check_size(args, atlas.sums)
    source = args.model or atlas.meta.model
    model = load_model(source)
    if not args.force:
        model.fingerprint.check_matches(atlas.meta.fingerprint, what=f"atlas {args.atlas}")
    modules = _modules(model, args.modules)
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
    from bridges.train import TrainConfig, train_lora
    from tlatlas.atlas.store import load_atlas
    from tlatlas.models import load_model
    from tlatlas.models.quant import parse_precision

    # everything that can be checked without the model is checked first
    quantization = parse_precision(args.precision)
    config = TrainConfig(family=args.family, steps=args.steps, lr=args.lr, seed=args.seed,
                         batch_size=args.batch_size, n_train=args.n_train, n_heldout=args.n_heldout)
    atlas = None
    if args.strategy != "all-linear":
        if not args.atlas:
            fail(f"--strategy {args.strategy} needs --atlas (an atlas of the model)")
        atlas = load_atlas(atlas_stem(args.atlas))
        _check_size(args, atlas.sums)
    model = load_model(args.model)
    if atlas is not None and not args.force:
        model.fingerprint.check_matches(atlas.meta.fingerprint, what=f"atlas {args.atlas}")
    modules = _modules(model, args.modules)
    plan = plan_lora(model, args.strategy, atlas=atlas.sums if atlas else None,
                     budget=args.budget, top_k=args.top_k, modules=modules, rank=args.rank,
                     seed=args.seed)
    del model  # training loads its own plain HF copy
    with tqdm(total=config.steps, desc=f"LoRA {args.strategy} on {args.family}", unit="step",
              file=sys.stderr) as bar:
        result = train_lora(args.model, plan, config, quantization=quantization,
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
    from bridges.export import rank_layers
    from bridges.names import MODULES
    from bridges.studies import chooser_record
    from bridges.train import TrainConfig
    from tlatlas.atlas.store import load_atlas
    from tlatlas.models import load_model

    # everything that can be checked without the model is checked first
    train = TrainConfig(steps=args.steps, n_train=args.n_train, n_heldout=args.n_heldout,
                        lr=args.lr)
    atlas = load_atlas(atlas_stem(args.atlas))
    n = len(atlas.sums.layers)
    if args.study != "skip":
        _check_top_k(args.top_k, atlas.sums)
    if args.study == "skip" and args.k > n:
        fail(f"--k {args.k} is more blocks than the atlas has ({n}); use 1..{n}")
    recovery_modules = MODULES if args.recovery_modules == "all" else tuple(
        m.strip() for m in args.recovery_modules.split(",") if m.strip())
    bad = [m for m in recovery_modules if m not in MODULES]
    if bad or not recovery_modules:
        fail(f"--recovery-modules {args.recovery_modules!r}: want all or a comma list of "
             f"{', '.join(MODULES)}")
    model = load_model(args.model, device=args.device)
    if not args.force:
        model.fingerprint.check_matches(atlas.meta.fingerprint, what=f"atlas {args.atlas}")
    if args.study == "strategies":
        from bridges.studies import strategy_study

        # per family and seed: the random draws and at most 7 other strategies (two may be
        # skipped at a small budget)
        bar, on_run, finish = run_bar(len(args.seeds) * len(args.families)
                                      * (7 + args.random_draws), "study strategies")
        with bar:
            out = strategy_study(args.model, model, atlas, families=args.families,
                                 seeds=args.seeds, random_draws=args.random_draws,
                                 top_k=args.top_k, rank=args.rank, train=train, on_run=on_run)
            finish()
    elif args.study == "modules":
        from bridges.module_sweep import MODULE_SETS, module_sweep, rank_costs

        layers = sorted(rank_layers(atlas.sums)[: args.top_k])
        budgets = None
        if args.all_ranks:  # what every module costs at these ranks of `all`
            grain = max(rank_costs(model, layers).values())
            budgets = [grain * r for r in args.all_ranks]
        n_budgets = len(args.all_ranks) if args.all_ranks else 3
        bar, on_run, finish = run_bar(len(args.seeds) * len(MODULE_SETS) * n_budgets,
                                      "study modules")
        with bar:
            out = module_sweep(args.model, model, layers, family=args.families[0],
                               seeds=args.seeds, rank=args.rank, budgets=budgets, train=train,
                               on_run=on_run)
            finish()
    elif args.study == "skip":
        from dataclasses import replace

        from bridges.skip import layer_skip_study

        bar, on_run, finish = run_bar(2, "study skip")  # the atlas's set and a random one
        with bar:
            out = layer_skip_study(args.model, model, atlas.sums, k=args.k, seed=args.seeds[0],
                                   recovery=replace(train, family=args.recovery_family),
                                   modules=recovery_modules, rank=args.rank,
                                   device=args.device, max_sets=args.max_sets,
                                   objective=args.objective, on_run=on_run)
            finish()
    else:
        from bridges.stability import stability_study
        from tlatlas.atlas.config import AtlasConfig
        from tlatlas.atlas.pipeline import SuiteSpec

        fams = tuple(args.atlas_families) if args.atlas_families else atlas.sums.families
        bar, on_run, finish = run_bar(len(set(args.checkpoints)), "study stability")
        with bar:
            out = stability_study(args.model, model, atlas.sums, family=args.families[0],
                                  checkpoints=args.checkpoints, top_k=args.top_k,
                                  rank=args.rank, seed=args.seeds[0], train=train,
                                  spec=SuiteSpec(per_family=args.atlas_per_family,
                                                 families=fams),
                                  atlas_config=AtlasConfig(batch_size=8), on_run=on_run)
            finish()
    out.setdefault("chooser", chooser_record(atlas))
    out.update({"kind": f"tlatlas.study.{args.study}", "model": args.model,
                "fingerprint": model.fingerprint.to_dict(), "atlas": str(args.atlas),
                "command": args.command_line})
    from pathlib import Path

    from tlatlas.io import atomic_write

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


def _add_size(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=positive_int, default=None, metavar="P",
                      help="adapt the atlas's top layers while the LoRA parameters fit in P "
                           "(trainable parameters, >= 1); atlas/random need this or --top-k")
    size.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                      help="adapt the atlas's K most important layers (1 .. the atlas's "
                           "layer count)")


def _add_lora(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=STRATEGIES, default="atlas",
                   help="atlas: the atlas's most important layers; random: as many random "
                        "layers; all-linear: every linear module of every layer (default atlas)")
    _add_size(p)
    p.add_argument("--modules", default="o", metavar="LIST",
                   help="comma list of block modules to adapt: q,k,v,o,gate,in,out or their "
                        "HF leaf names such as o_proj (default o)")
    p.add_argument("--rank", type=positive_int, default=8, metavar="R",
                   help="LoRA rank (default 8)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random strategy's layers (and, for train, of the adapter "
                        "init and data order) (default 0)")


def cmd_pool(args: argparse.Namespace) -> int:
    """Strategy studies of one design at other training seeds, compared as one study."""
    from pathlib import Path

    from bridges.compare import compare_to
    from bridges.pool import pooled, seed_differences, study_design, study_rows

    results = []
    for path in args.results:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            fail(f"cannot read study result {path}: {err}")
    if any(study_design(r) != study_design(results[0]) for r in results[1:]):
        fail("the files' designs differ (other than their training seeds): their runs are "
             "not one study")
    try:
        rows = pooled([study_rows(r) for r in results])
    except ValueError as err:
        fail(str(err))
    others = [s for s in dict.fromkeys(r["strategy"] for r in rows) if s != args.reference]
    print(f"# {len(results)} file(s), {len(rows)} runs; difference = other - {args.reference} "
          f"(held-out loss, nats; positive favours {args.reference}), 95% paired bootstrap "
          "over (seed, family, prompt) pairs")
    for name in others:
        c = compare_to(rows, "strategy", args.reference, name)
        if not c["n"]:
            continue
        loss, em = c["loss"], c["exact_match"]
        per_seed = ", ".join(f"{s}: {d:+.3f}" for s, d in
                             seed_differences(rows, "strategy", args.reference, name).items())
        print(f"{name:16} n = {c['n']:4} ({len(c['seeds'])} seeds)  loss "
              f"{loss['estimate']:+.3f} [{loss['ci'][0]:+.3f}, {loss['ci'][1]:+.3f}]  exact "
              f"match {em['estimate']:+.3f} [{em['ci'][0]:+.3f}, {em['ci'][1]:+.3f}]  per "
              f"seed: {per_seed}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export-lora", help="PEFT LoRA config targeting atlas-chosen modules",
                       description="Write a PEFT adapter_config.json whose target modules are "
                                   "the layers an atlas ranks most important, with the "
                                   "trainable-parameter count.")
    p.add_argument("atlas", help="atlas stem (out/seed42), either of its files, or a directory "
                                 "holding one atlas")
    _add_lora(p)
    add_model_arg(p, default=None, help="the model the adapter is for (default: the model "
                                        "the atlas records)")
    p.add_argument("--force", action="store_true",
                   help="use the atlas even if it was built on another model")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR",
                   help="output directory (created if missing): adapter_config.json and the "
                        "plan")
    p.set_defaults(func=cmd_export_lora)

    p = sub.add_parser("train", help="LoRA fine-tune on a family with a fixed held-out split",
                       description="LoRA or QLoRA fine-tune on one task family (or all) with a "
                                   "fixed held-out split; prints held-out loss and greedy "
                                   "exact match before and after.")
    add_model_arg(p)
    p.add_argument("--family", type=family_or_any, default="json",
                   help="task family to train on, or any (all twelve) (default json)")
    p.add_argument("--atlas", default=None, metavar="STEM",
                   help="atlas of the model (stem, file, or a directory holding one), needed "
                        "by --strategy atlas/random")
    _add_lora(p)
    p.add_argument("--steps", type=non_negative_int, default=30,
                   help="optimizer steps (default 30; 0: only the before numbers)")
    p.add_argument("--lr", type=positive_float, default=2e-3,
                   help="AdamW learning rate (default 2e-3)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="training examples per step (default 8)")
    p.add_argument("--n-train", type=positive_int, default=64, metavar="N",
                   help="training examples (per family for --family any) (default 64)")
    p.add_argument("--n-heldout", type=positive_int, default=16, metavar="N",
                   help="held-out examples (per family for --family any) (default 16)")
    p.add_argument("--precision", default="fp32",
                   help="base weights: fp32, or nf4 / nf4-bf16 / int8 for QLoRA (CUDA and "
                        "bitsandbytes) (default fp32)")
    p.add_argument("--force", action="store_true",
                   help="use the atlas even if it was built on another model")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR",
                   help="output directory (created if missing): the adapter and result.json")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("study", help="adapter studies: strategies at matched budget, module "
                                     "sweep, layer skip, atlas stability during training",
                       description="Adapter studies. strategies: atlas vs random, first-k, "
                                   "last-k, Block Influence, uniform, all-linear, AdaLoRA at a "
                                   "matched budget; modules: module sets at the atlas's "
                                   "layers; skip: skip the atlas's least important blocks "
                                   "vs random ones, then recover; stability: the atlas of "
                                   "the adapted model at training checkpoints.")
    p.add_argument("study", choices=["strategies", "modules", "skip", "stability"],
                   help="which study to run")
    add_model_arg(p)
    p.add_argument("--atlas", required=True, metavar="STEM",
                   help="atlas of the model: stem (out/seed42), file, or a directory holding "
                        "one")
    p.add_argument("--families", type=family, nargs="+", default=["json", "factual", "code"],
                   metavar="FAMILY",
                   help="families to fine-tune on; modules and stability use the first "
                        "(default json factual code)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], metavar="SEED",
                   help="training seeds, one run each; skip and stability use the first "
                        "(default 0 1)")
    p.add_argument("--top-k", type=positive_int, default=4, metavar="K",
                   help="layers adapted by the atlas strategy and its baselines (1 .. the "
                        "atlas's layer count) (default 4)")
    p.add_argument("--rank", type=positive_int, default=8, metavar="R",
                   help="LoRA rank (default 8)")
    p.add_argument("--steps", type=non_negative_int, default=STUDY_STEPS,
                   help=f"optimizer steps per fine-tune (default {STUDY_STEPS})")
    p.add_argument("--n-train", type=positive_int, default=64, metavar="N",
                   help="training examples per fine-tune (default 64)")
    p.add_argument("--n-heldout", type=positive_int, default=STUDY_HELDOUT, metavar="N",
                   help=f"held-out examples per fine-tune (default {STUDY_HELDOUT})")
    p.add_argument("--lr", type=positive_float, default=2e-3,
                   help="AdamW learning rate (default 2e-3)")
    p.add_argument("--random-draws", type=positive_int, default=STUDY_DRAWS, metavar="M",
                   help="strategies: random layer sets drawn per family and seed, each "
                        f"compared with the atlas's (default {STUDY_DRAWS})")
    p.add_argument("--all-ranks", type=positive_int, nargs="+", default=None, metavar="R",
                   help="modules: the budgets of the loss-vs-parameters curve, as the "
                        "parameters of LoRA on all modules at these ranks; every module set "
                        "gets (nearly) that many (default: --rank / 2, --rank, 2 --rank)")
    p.add_argument("--objective", choices=["distill", "lm"], default="distill",
                   help="skip: recovery trains towards the full model's next-token "
                        "distribution (distill) or on the language-model loss (lm) "
                        "(default distill)")
    p.add_argument("--max-sets", type=positive_int, default=STUDY_MAX_SETS, metavar="N",
                   help="skip: same-size skip sets the atlas's set is ranked against (all "
                        f"of them when there are at most N) (default {STUDY_MAX_SETS})")
    p.add_argument("--k", type=positive_int, default=4,
                   help="skip: blocks skipped per set (default 4)")
    p.add_argument("--recovery-family", type=family_or_any, default="any", metavar="FAMILY",
                   help="skip: family of the recovery fine-tune, or any (default any)")
    p.add_argument("--recovery-modules", default="all", metavar="LIST",
                   help="skip: modules of the recovery LoRA: all, or a comma list such as o "
                        "or q,k,v,o (default all)")
    p.add_argument("--checkpoints", type=non_negative_int, nargs="+", default=[0, 10, 20],
                   metavar="STEP",
                   help="stability: optimizer steps at which the atlas is rebuilt "
                        "(default 0 10 20)")
    p.add_argument("--atlas-families", type=family, nargs="+", default=None, metavar="FAMILY",
                   help="stability: families of each checkpoint's atlas (default: the atlas's)")
    p.add_argument("--atlas-per-family", type=positive_int, default=2, metavar="N",
                   help="stability: examples per family of each checkpoint's atlas (default 2)")
    p.add_argument("--device", type=device_type, default=None,
                   help="cpu, cuda or cuda:N (default: CUDA if present, else CPU)")
    p.add_argument("--force", action="store_true",
                   help="use the atlas even if it was built on another model")
    p.add_argument("--out", type=output_file, required=True, metavar="FILE",
                   help="result JSON file to write")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("pool", help="strategy studies of one design at other training seeds, "
                                    "compared as one",
                       description="Pool the runs of `tlatlas study strategies` files (or "
                                   "lora-strategies block results) that share a design and "
                                   "differ in training seeds, and compare every strategy "
                                   "with the reference over all their pairs, with each "
                                   "seed's mean difference.")
    p.add_argument("results", nargs="+", metavar="RESULT.json", help="study result files")
    p.add_argument("--reference", default="atlas",
                   help="the strategy the others are compared with (default atlas)")
    p.set_defaults(func=cmd_pool)
