"""`tlatlas steer | steer-transfer`: steering sweeps over layers, scales and precisions."""

import argparse
import re
import sys
from pathlib import Path

from tlatlas.cli.common import (
    add_batch_size,
    add_model_arg,
    add_suite_args,
    fail,
    non_negative_float,
    non_negative_int,
    output_dir,
    output_file,
    positive_int,
    suite_from_args,
)
from tlatlas.cli.common import device as device_type


def layer_or_all(text: str) -> int | str:
    """``all`` or a layer number (>= 0)."""
    return text if text == "all" else non_negative_int(text)


def layer_pair(text: str) -> tuple[int, int]:
    """``LA:LB``: a layer of model A and one of model B."""
    try:
        la, lb = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants LA:LB (e.g. 10:14), got {text!r}") from None
    if la < 0 or lb < 0:
        raise argparse.ArgumentTypeError(f"wants layers >= 0, got {text!r}")
    return la, lb


def _layers(values: list | None) -> tuple[int, ...] | None:
    if not values or values == ["all"]:
        return None
    if "all" in values:
        fail(f"--layers wants 'all' or layer numbers, not both: {' '.join(map(str, values))}")
    return tuple(values)


def _read_prompts(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        fail(f"prompt file {p} does not exist" if not p.exists() else f"{p} is not a file")
    prompts = [line.rstrip("\n") for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        fail(f"prompt file {p} holds no prompts (one per line)")
    return prompts


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
    from tlatlas.models import check_layers, load_model
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
    suite = suite_from_args(args)
    if args.contrast:
        pos, neg = (_read_prompts(f) for f in args.contrast)
        n_vector_prompts = len(pos) + len(neg)
    else:
        vsuite = suite_from_args(args, args.vector_per_family or args.per_family)
        n_vector_prompts = len(vsuite)
    out = Path(args.out)
    model = load_model(args.model, device=args.device, dtype=torch.float32)
    layers = check_layers(model, config.layers) if config.layers else None
    with tqdm(total=n_vector_prompts, desc="vectors (fp32)", unit="prompt",
              file=sys.stderr) as bar:
        if args.contrast:
            vectors = contrastive_vectors(model, pos, neg, layers=layers,
                                          batch_size=args.batch_size, on_batch=bar.update)
        else:
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

    pairs = tuple(args.pairs) if args.pairs else None
    config = TransferConfig(layer_pairs=pairs, ridge=args.ridge, positions=args.positions,
                            batch_size=args.batch_size)
    sweep = SteeringConfig(scales=parse_scales(args.scales), random_draws=args.random_draws,
                           random_seed=args.random_seed, batch_size=args.batch_size,
                           max_rows=args.max_rows)
    from tlatlas.tasks import build_suite

    suite = suite_from_args(args)
    # the map is fitted on every family (not only --families), drawn with seed + 1
    map_suite = build_suite(args.suite, seed=args.seed + 1, per_family=args.map_per_family)
    out = Path(args.out)
    # A's vectors, then B's sweep with its own vectors and with the transferred ones
    with tqdm(total=3 * len(suite), unit="ex", file=sys.stderr) as bar:
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
    add_suite_args(p, per_family_default=4,
                   per_family_help="steered examples per family (a stratified sample)",
                   families_help="steer only these families")
    p.add_argument("--scales", default="-4:4:9", metavar="SCALES",
                   help="steering scales in units of the layer's typical residual norm: "
                        "lo:hi:n (n evenly spaced, ends included) or a comma list such as "
                        "-2,0,2 (default -4:4:9)")
    p.add_argument("--random-draws", type=non_negative_int, default=4, metavar="K",
                   help="random norm-matched directions per layer, the control (default 4; "
                        "0: none)")
    p.add_argument("--random-seed", type=int, default=0, metavar="SEED",
                   help="seed of the random directions (default 0)")
    add_batch_size(p, 8, what="prompts")
    p.add_argument("--max-rows", type=positive_int, default=256, metavar="N",
                   help="steered rows (prompt x scale x direction) per forward pass; lower it "
                        "to save memory (default 256)")


# ``--scales -4:4:9`` must read as a value, not an option: extend argparse's test for
# negative numbers (which only knows -4 and -.5) to ranges and lists.
_NEGATIVE = re.compile(r"^-\d*\.?\d+([:,][-\d.:,]*)?$")


def register(sub) -> None:
    p = sub.add_parser("steer", help="steering sweep: every layer x scale x precision, random control",
                       description="Steering sweep: each family's difference-of-means "
                                   "direction added at every layer and scale, at each "
                                   "precision, against norm-matched random directions. "
                                   "Writes the result and a table to --out.")
    p._negative_number_matcher = _NEGATIVE
    add_model_arg(p)
    _common(p)
    p.add_argument("--vector-per-family", type=positive_int, default=None, metavar="N",
                   help="examples per family the vectors are computed on (default: "
                        "--per-family)")
    p.add_argument("--layers", type=layer_or_all, nargs="+", default=None, metavar="L",
                   help="layers to steer, 0-based, or all (default all)")
    p.add_argument("--precision", default="fp32", metavar="LIST",
                   help="comma list of precisions to sweep: fp32, bf16, fp16 (CUDA), nf4 "
                        "(= nf4-fp32), nf4-bf16, int8 (default fp32)")
    p.add_argument("--contrast", nargs=2, metavar=("POS_FILE", "NEG_FILE"), default=None,
                   help="one concept from two prompt files (one prompt a line) instead of "
                        "the families' directions")
    p.add_argument("--device", type=device_type, default=None,
                   help="cpu, cuda or cuda:N (default: CUDA if present, else CPU)")
    p.add_argument("--plot", type=output_file, default=None, metavar="PNG",
                   help="also write plot_steering's figure to this PNG file")
    p.add_argument("--full-table", action="store_true",
                   help="print every table, not only the summary")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR",
                   help="output directory (created if missing): steering.* and "
                        "steering-table.txt")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("steer-transfer", help="carry steering vectors from model A to model B",
                       description="Carry model A's steering vectors to model B through a "
                                   "ridge map fitted on paired prompts (held-out R2), and "
                                   "compare them with B's own vectors and random ones.")
    p._negative_number_matcher = _NEGATIVE
    p.add_argument("--from", dest="from_model", required=True, metavar="MODEL_A",
                   help="model A, the vectors' source (a name, directory or hub id)")
    p.add_argument("--to", dest="to_model", required=True, metavar="MODEL_B",
                   help="model B, the steered one (a name, directory or hub id)")
    _common(p)
    p.add_argument("--pairs", type=layer_pair, nargs="+", default=None, metavar="LA:LB",
                   help="layer pairs, A's layer : B's layer (default: A's middle layer -> "
                        "B's layer at the same relative depth)")
    p.add_argument("--map-per-family", type=positive_int, default=40, metavar="N",
                   help="paired prompts per family for fitting the map, drawn with suite "
                        "seed + 1 (default 40)")
    p.add_argument("--ridge", type=non_negative_float, default=1e-4,
                   help="ridge strength, relative to the mean variance of A's activations "
                        "(default 1e-4)")
    p.add_argument("--positions", choices=["auto", "all", "last"], default="auto",
                   help="token positions the map is fitted on: every position, the last "
                        "only, or auto (all when the tokenizers agree) (default auto)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR",
                   help="output directory (created if missing): transfer.* and cache/")
    p.set_defaults(func=cmd_steer_transfer)
