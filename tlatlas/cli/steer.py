"""`tlatlas steer | steer-transfer`: steering sweeps over layers, scales and precisions."""

import argparse
import re
import sys
from pathlib import Path


def _layers(text: list[str] | None):
    if not text or text == ["all"]:
        return None
    try:
        return tuple(int(x) for x in text)
    except ValueError:
        raise SystemExit(f"tlatlas: error: --layers wants 'all' or layer numbers, got {text}") from None


def _read_prompts(path: str) -> list[str]:
    from tlatlas.errors import TlatlasError

    p = Path(path)
    if not p.exists():
        raise TlatlasError(f"prompt file {p} does not exist")
    prompts = [line.rstrip("\n") for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise TlatlasError(f"prompt file {p} holds no prompts (one per line)")
    return prompts


def _suite(args, per_family):
    from tlatlas.tasks import build_suite

    return build_suite(args.suite, seed=args.seed, per_family=per_family,
                       families=list(args.families) if args.families else None)


def _once():
    import logging

    seen: set[str] = set()

    def keep(record: logging.LogRecord) -> bool:
        new = record.msg not in seen
        seen.add(str(record.msg))
        return new

    return keep


def cmd_steer(args: argparse.Namespace) -> int:
    import logging

    import torch
    from tqdm import tqdm

    from tlatlas.io import atomic_write
    from tlatlas.models import load_model
    from tlatlas.steering import contrastive_vectors, steering_vectors
    from tlatlas.steering.precision import check_precision, free_model, precision_sweep
    from tlatlas.steering.result import SteeringConfig, parse_scales, save_steering
    from tlatlas.steering.tables import full_report, summary_lines

    precisions = [check_precision(p.strip(), args.device) for p in args.precision.split(",")]
    # LLM.int8 casts activations to fp16 on every matmul and logs it each time: say it once
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_once())
    config = SteeringConfig(scales=parse_scales(args.scales), layers=_layers(args.layers),
                            random_draws=args.random_draws, random_seed=args.random_seed,
                            batch_size=args.batch_size, max_rows=args.max_rows)
    suite = _suite(args, args.per_family)
    out = Path(args.out)
    model = load_model(args.model, device=args.device, dtype=torch.float32)
    layers = config.layers
    with tqdm(desc="vectors (fp32)", unit="prompt", file=sys.stderr) as bar:
        if args.contrast:
            pos, neg = (_read_prompts(f) for f in args.contrast)
            vectors = contrastive_vectors(model, pos, neg, layers=layers,
                                          batch_size=args.batch_size, on_batch=bar.update)
        else:
            vsuite = _suite(args, args.vector_per_family or args.per_family)
            vectors = steering_vectors(model, list(vsuite), layers=layers,
                                       batch_size=args.batch_size, on_batch=bar.update)
    del model
    free_model()
    with tqdm(total=len(suite) * len(precisions), unit="ex", file=sys.stderr) as bar:
        result = precision_sweep(args.model, suite, vectors, config, precisions,
                                 device=args.device, on_batch=bar.update,
                                 on_precision=lambda p: bar.set_description(f"steer {p}"),
                                 command=args.command_line)
    paths = save_steering(result, out / "steering")
    report = full_report(result)
    atomic_write(out / "steering-table.txt", lambda p: Path(p).write_text(report + "\n"))
    print(f"wrote {paths[1]} and {out / 'steering-table.txt'}", file=sys.stderr)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from tlatlas.viz.steering_plots import plot_steering

        fig = plot_steering(result)
        atomic_write(Path(args.plot), lambda p: fig.savefig(p, format="png", dpi=110))
        print(f"wrote {args.plot}", file=sys.stderr)
    print(report if args.full_table else "\n".join(report.split("\n")[:3]))
    print("\n".join(summary_lines(result)))
    return 0


def cmd_steer_transfer(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from tlatlas.steering.result import SteeringConfig, parse_scales
    from tlatlas.steering.transfer import TransferConfig, save_transfer, steering_transfer

    pairs = None
    if args.pairs:
        try:
            pairs = tuple(tuple(int(x) for x in p.split(":")) for p in args.pairs)
        except ValueError:
            raise SystemExit(f"tlatlas: error: --pairs wants LA:LB items, got {args.pairs}") from None
    config = TransferConfig(layer_pairs=pairs, ridge=args.ridge, positions=args.positions,
                            batch_size=args.batch_size)
    sweep = SteeringConfig(scales=parse_scales(args.scales), random_draws=args.random_draws,
                           random_seed=args.random_seed, batch_size=args.batch_size,
                           max_rows=args.max_rows)
    suite = _suite(args, args.per_family)
    from tlatlas.tasks import build_suite

    map_suite = build_suite(args.suite, seed=args.seed + 1, per_family=args.map_per_family)
    out = Path(args.out)
    with tqdm(unit="prompt", file=sys.stderr) as bar:
        result = steering_transfer(args.from_model, args.to_model, suite, workdir=out / "cache",
                                   config=config, sweep=sweep,
                                   map_prompts=[e.prompt for e in map_suite],
                                   on_stage=bar.set_description, on_batch=bar.update,
                                   command=args.command_line)
    path = save_transfer(result, out / "transfer")
    print(f"wrote {path}", file=sys.stderr)
    s = result.summary()
    print(f"{args.from_model} -> {args.to_model}: maps fitted on {s['meta']['n_map_prompts']} "
          f"paired prompts ({s['positions']} positions)")
    for i, (la, lb) in enumerate(result.pairs):
        print(f"L{la} -> L{lb}: held-out R2 {s['r2'][i]:.4f} (train {s['n_train'][i]}, "
              f"test {s['n_test'][i]}); cosine(transferred, own) per family: " + ", ".join(
                  f"{f} {c[i]:.2f}" for f, c in zip(s["families"], s["cosine"], strict=True)))
        print(f"  KL by scale {s['scales']}")
        for name, key in (("own", "own_kl"), ("transferred", "transferred_kl"), ("random", "random_kl")):
            print(f"  {name:>12}: " + " ".join(f"{v:7.3f}" for v in s[key][i]))
    if args.json:
        print(json.dumps({k: v for k, v in s.items() if k != "meta"}))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=["synthetic", "nl"], default="synthetic")
    p.add_argument("--seed", type=int, default=42, help="suite seed")
    p.add_argument("--per-family", type=int, default=4, help="steered examples per family")
    p.add_argument("--families", nargs="+", default=None, help="restrict to these families")
    p.add_argument("--scales", default="-4:4:9", help="lo:hi:n or a comma list (default -4:4:9)")
    p.add_argument("--random-draws", type=int, default=4, help="K random norm-matched directions")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-rows", type=int, default=256, help="steered rows per forward")
    p.add_argument("--out", required=True, help="output directory")


# ``--scales -4:4:9`` must read as a value, not an option: extend argparse's test for
# negative numbers (which only knows -4 and -.5) to ranges and lists.
_NEGATIVE = re.compile(r"^-\d*\.?\d+([:,][-\d.:,]*)?$")


def register(sub) -> None:
    p = sub.add_parser("steer", help="steering sweep: every layer x scale x precision, random control")
    p._negative_number_matcher = _NEGATIVE
    p.add_argument("--model", default="smollm2-135m")
    _common(p)
    p.add_argument("--vector-per-family", type=int, default=None,
                   help="examples per family the vectors are computed on (default --per-family)")
    p.add_argument("--layers", nargs="+", default=None, help="'all' (default) or layer numbers")
    p.add_argument("--precision", default="fp32",
                   help="comma list: fp32,bf16,fp16 (CUDA),nf4 (= nf4-fp32),nf4-bf16,int8")
    p.add_argument("--contrast", nargs=2, metavar=("POS_FILE", "NEG_FILE"), default=None,
                   help="one concept from two prompt files (one prompt a line) instead of families")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--plot", default=None, help="also write plot_steering's figure to this PNG")
    p.add_argument("--full-table", action="store_true", help="print every table, not only the summary")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("steer-transfer", help="carry steering vectors from model A to model B")
    p._negative_number_matcher = _NEGATIVE
    p.add_argument("--from", dest="from_model", required=True, help="model A (vectors' source)")
    p.add_argument("--to", dest="to_model", required=True, help="model B (steered)")
    _common(p)
    p.add_argument("--pairs", nargs="+", default=None,
                   help="LA:LB layer pairs (default: A's middle layer -> B's same depth)")
    p.add_argument("--map-per-family", type=int, default=40,
                   help="paired prompts per family for the map (suite seed + 1)")
    p.add_argument("--ridge", type=float, default=1e-4, help="relative ridge strength")
    p.add_argument("--positions", choices=["auto", "all", "last"], default="auto")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.set_defaults(func=cmd_steer_transfer)
