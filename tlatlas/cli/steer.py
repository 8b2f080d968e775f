"""`tlatlas steer | steer-transfer`: steering sweeps over layers, scales and precisions.

``steer`` splits each family's examples (``--heldout-fraction``, ``--split-seed``),
estimates the vectors and the partition control on the training part
(:func:`tlatlas.steering.heldout.fit_vectors`) and sweeps the held-out part at every
precision (:func:`tlatlas.steering.precision.precision_sweep`); the tables come from
:mod:`tlatlas.steering.tables`. Split problems (too few examples per family) are found
here, before any model is loaded.
"""

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
    positive_float,
    positive_int,
    suite_from_args,
)
from tlatlas.cli.common import device as device_type


def layer_or_all(text: str) -> int | str:
    """``all`` or a layer number (>= 0)."""
    return text if text == "all" else non_negative_int(text)


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1 (the held-out fraction)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"wants a number in (0, 1), got {text!r}")
    return value


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


def _scales(args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    """``{"scales": ...}`` from ``--scales``, or nothing (the config takes the regime's grid)."""
    from tlatlas.steering import parse_scales

    return {"scales": parse_scales(args.scales)} if args.scales else {}


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


def _split(suite, args: argparse.Namespace):
    """The held-out split ``fit_vectors`` will make, checked before any model is loaded:
    at least one training and one held-out example per family, and two training examples
    per family when the partition control splits them in halves."""
    from tlatlas.errors import InvalidInputError
    from tlatlas.steering.heldout import heldout_split

    try:
        split = heldout_split(suite, fraction=args.heldout_fraction, seed=args.split_seed)
    except InvalidInputError as err:
        fail(f"{err}: use --per-family 2 or more")
    short = {f: n for f, (n, _) in split.counts().items() if n < 2}
    if args.partition_draws and short:
        fail(f"the partition control splits each family's training prompts in two halves; "
             f"with --per-family {args.per_family} and --heldout-fraction "
             f"{args.heldout_fraction:g} too few are left for training in {short}: use a "
             "larger --per-family (4 at the default fraction), a smaller --heldout-fraction, "
             "or --partition-draws 0")
    return split


def cmd_steer(args: argparse.Namespace) -> int:
    import logging
    from dataclasses import replace

    import torch
    from tqdm import tqdm

    from tlatlas.io import atomic_write
    from tlatlas.models import load_model
    from tlatlas.steering import SteeringConfig, contrastive_vectors, fit_vectors
    from tlatlas.steering.precision import check_precision, free_model, precision_sweep
    from tlatlas.steering.result import save_steering
    from tlatlas.steering.tables import full_report, header_lines, precision_tables, summary_lines

    if args.vector_per_family is not None:
        fail("--vector-per-family is gone: the vectors are estimated on the training part of "
             "--per-family examples per family (--heldout-fraction sets the held-out share)")
    precisions = [check_precision(p.strip(), args.device) for p in args.precision.split(",")]
    # LLM.int8 casts activations to fp16 on every matmul and logs it each time: say it once
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_once())
    config = SteeringConfig(
        regime=args.regime, **_scales(args), linear_max=args.linear_max, layers=_layers(args.layers),
        random_draws=args.random_draws, partition_draws=args.partition_draws,
        random_seed=args.random_seed, heldout_fraction=args.heldout_fraction,
        split_seed=args.split_seed, batch_size=args.batch_size, max_rows=args.max_rows)
    suite = suite_from_args(args)
    if args.contrast:
        # a concept from two prompt files: the suite is not split (none of it estimated the
        # vector), and there is no partition control
        pos, neg = (_read_prompts(f) for f in args.contrast)
        config = replace(config, partition_draws=0)
        scored, n_vector_prompts = suite, len(pos) + len(neg)
    else:
        scored = _split(suite, args).heldout
        n_vector_prompts = len(suite) - len(scored)
    out = Path(args.out)
    model = load_model(args.model, device=args.device, dtype=torch.float32)
    with tqdm(total=n_vector_prompts, desc="vectors (fp32)", unit="prompt",
              file=sys.stderr) as bar:
        if args.contrast:
            vectors = contrastive_vectors(model, pos, neg, layers=config.layers,
                                          batch_size=args.batch_size, on_batch=bar.update)
        else:
            split, vectors = fit_vectors(model, suite, config, on_batch=bar.update)
            scored = split.heldout
    del model
    free_model()
    with tqdm(total=len(scored) * len(precisions), unit="ex", file=sys.stderr) as bar:
        result = precision_sweep(args.model, scored, vectors, config, precisions,
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
    if args.full_table:
        print(report)
    else:
        print("\n".join(header_lines(result)))
        for precision in result.precisions:
            print(precision_tables(result, precision))
    print("\n".join(summary_lines(result)))
    return 0


def cmd_steer_transfer(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from tlatlas.steering import SteeringConfig
    from tlatlas.steering.transfer import TransferConfig, save_transfer, steering_transfer

    pairs = tuple(args.pairs) if args.pairs else None
    config = TransferConfig(layer_pairs=pairs, ridge=args.ridge, positions=args.positions,
                            batch_size=args.batch_size)
    sweep = SteeringConfig(regime=args.regime, **_scales(args),
                           random_draws=args.random_draws, random_seed=args.random_seed,
                           batch_size=args.batch_size, max_rows=args.max_rows)
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


# the regimes' grids (tlatlas.steering.config.REGIME_SCALES; not imported, so --help
# stays fast: a test checks they agree)
REGIME_GRIDS = {"linear": "-1,-0.5,-0.25,0,0.25,0.5,1", "saturation": "-4,-2,0,2,4"}


def _common(p: argparse.ArgumentParser, *, per_family_help: str, seed_help: str) -> None:
    add_suite_args(p, per_family_default=4, per_family_help=per_family_help,
                   families_help="steer only these families")
    p.add_argument("--regime", choices=("linear", "saturation"), default="linear",
                   help="which scale grid to sweep when --scales is not given: linear "
                        f"({REGIME_GRIDS['linear']}: |s| <= 1, where a direction can be told "
                        f"from its controls) or saturation ({REGIME_GRIDS['saturation']}: every "
                        "direction, random or not, moves the output by nats) (default linear)")
    p.add_argument("--scales", default=None, metavar="SCALES",
                   help="steering scales in units of the layer's typical residual norm, "
                        "overriding the regime's grid: lo:hi:n (n evenly spaced, ends "
                        "included) or a comma list such as -2,0,2 (default: the --regime grid)")
    p.add_argument("--random-draws", type=non_negative_int, default=8, metavar="K",
                   help="norm-matched isotropic random directions per layer, the random "
                        "control (default 8; 0: none)")
    p.add_argument("--random-seed", type=int, default=0, metavar="SEED",
                   help=f"{seed_help} (default 0)")
    add_batch_size(p, 8, what="prompts")
    p.add_argument("--max-rows", type=positive_int, default=256, metavar="N",
                   help="steered rows (prompt x scale x direction) per forward pass; lower it "
                        "to save memory (default 256)")


# ``--scales -4:4:9`` must read as a value, not an option: extend argparse's test for
# negative numbers (which only knows -4 and -.5) to ranges and lists.
_NEGATIVE = re.compile(r"^-\d*\.?\d+([:,][-\d.:,]*)?$")


def register(sub) -> None:
    p = sub.add_parser("steer", help="steering sweep: every layer x scale x precision, on "
                                     "held-out prompts, against random and partition controls",
                       description="Steering sweep: each family's difference-of-means "
                                   "direction, estimated on a training part of its examples, "
                                   "added at every layer and scale to the held-out part, at "
                                   "each precision, against norm-matched random directions "
                                   "and partition directions (halves of the training "
                                   "prompts). Writes the result and its tables to --out.")
    p._negative_number_matcher = _NEGATIVE
    add_model_arg(p)
    _common(p, per_family_help="examples per family before the train / held-out split (a "
                               "stratified sample; --heldout-fraction of them are scored)",
            seed_help="seed of the random directions and of the partition control's halves")
    p.add_argument("--heldout-fraction", type=open_fraction, default=0.5, metavar="F",
                   help="share of each family's examples held out and scored; the vectors "
                        "and the partition control are estimated on the rest (at least one "
                        "example on each side) (default 0.5)")
    p.add_argument("--split-seed", type=int, default=0, metavar="SEED",
                   help="seed of the train / held-out split (default 0)")
    p.add_argument("--partition-draws", type=non_negative_int, default=4, metavar="M",
                   help="partition-control directions per family and layer: the difference "
                        "of means of two random halves of the family's training prompts, "
                        "norm-matched; needs 2 training examples per family; none with "
                        "--contrast (default 4; 0: none)")
    p.add_argument("--linear-max", type=positive_float, default=1.0, metavar="S",
                   help="largest |s| of the linear regime: per-example slopes are fitted "
                        "over the scales with 0 < |s| <= S (default 1)")
    # the old option: vectors now come from the training split of --per-family
    p.add_argument("--vector-per-family", type=positive_int, default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--layers", type=layer_or_all, nargs="+", default=None, metavar="L",
                   help="layers to steer, 0-based, or all (default all)")
    p.add_argument("--precision", default="fp32", metavar="LIST",
                   help="comma list of precisions to sweep: fp32, bf16, fp16 (CUDA), nf4 "
                        "(= nf4-fp32), nf4-bf16, int8 (default fp32)")
    p.add_argument("--contrast", nargs=2, metavar=("POS_FILE", "NEG_FILE"), default=None,
                   help="one concept from two prompt files (one prompt a line) instead of "
                        "the families' directions; the whole suite is then scored (no split, "
                        "no partition control)")
    p.add_argument("--device", type=device_type, default=None,
                   help="cpu, cuda or cuda:N (default: CUDA if present, else CPU)")
    p.add_argument("--plot", type=output_file, default=None, metavar="PNG",
                   help="also write plot_steering's figure to this PNG file")
    p.add_argument("--full-table", action="store_true",
                   help="also print the layer x scale grids of every precision (always "
                        "written to steering-table.txt), not only the header, the "
                        "per-precision tables and the summary")
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
    _common(p, per_family_help="steered examples per family (a stratified sample)",
            seed_help="seed of the random directions")
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
