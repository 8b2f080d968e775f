"""`tlatlas models | suite | eval`: what is here, the task suite, clean accuracy."""

import argparse
import json
import sys

from tlatlas.cli.common import add_batch_size, add_model_arg, add_suite_args, suite_from_args


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
    suite = suite_from_args(args)
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

    suite = suite_from_args(args)  # before the model: a bad suite argument fails fast
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


def register(sub) -> None:
    p = sub.add_parser("models", help="known model names and whether they are here",
                       description="Known model names, whether their weights are on this "
                                   "machine, and how to get them.")
    p.add_argument("--json", action="store_true",
                   help="print {name: {available, path}} as JSON instead of the table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("suite", help="the task suite: per-family counts and content hash",
                       description="The task suite: per-family counts, content hash and a "
                                   "few examples.")
    add_suite_args(p, per_family_help="examples per family (a stratified sample)")
    p.add_argument("--stats", action="store_true",
                   help="counts and hash only (no example prompts)")
    p.add_argument("--json", action="store_true",
                   help="print kind, seed, total, per-family counts and hash as JSON")
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser("eval", help="clean per-family top-1 accuracy on the scored token",
                       description="Clean (unablated) per-family top-1 accuracy and mean log "
                                   "probability of the answer's scored token.")
    add_model_arg(p)
    add_suite_args(p, per_family_help="examples per family scored (a stratified sample)")
    add_batch_size(p, 16)
    p.add_argument("--json", action="store_true",
                   help="print the per-family results as JSON instead of the table")
    p.set_defaults(func=cmd_eval)
