"""`tlatlas atlas | show | merge`: build, read and merge causal atlases."""

import argparse
import sys

from tlatlas.cli.common import (
    add_families,
    add_memory_batching,
    add_model_arg,
    add_suite_args,
    atlas_stems,
    fail,
    format_bytes,
    hub_table,
    non_negative_int,
    output_dir,
    positive_int,
    role_table,
    shard,
    suite_from_args,
    warnings_as_lines,
)

# spelled out so that `--help` does not import torch; tests check each against the library
POSITION_CHOICES = ["all", "all-but-bos", "bos-only"]
"""tlatlas.atlas.ablation.POSITION_POLICIES."""
DEFAULT_POSITIONS = "all-but-bos"
"""AtlasConfig's default."""
METHOD_CHOICES = ["exact", "naive", "attribution", "verify"]
"""tlatlas.atlas.pipeline.METHODS."""
ESTIMATED = ("attribution", "verify")
COMPONENT_CHOICES = ("attn", "mlp", "block")
"""tlatlas.atlas.config.COMPONENTS (the parser does not import torch; a test checks)."""
"""The methods that rank or fill entries by an estimate (--estimator, --steps)."""
ESTIMATOR_CHOICES = ["first_order", "bound", "fisher_bound", "fisher", "graddrop", "ig_joint", "ig"]
"""tlatlas.atlas.estimators.ESTIMATOR_METHODS, and first_order (ig_joint with one point)."""
FIRST_ORDER_ESTIMATORS = ("first_order", "bound", "fisher_bound", "fisher", "graddrop")
"""Estimators of one point: --steps does not apply."""
DEFAULT_TOP_K = 5
"""VerifyConfig's (and build_atlas's) default top_k."""
DTYPE_CHOICES = ["fp32", "bf16", "fp16"]
"""tlatlas.models.DTYPES."""
DEFAULT_BATCH_SIZE = 8


def cmd_atlas(args: argparse.Namespace) -> int:
    from tlatlas.atlas.distributed import RankFailedError, env_context, process_group

    dist = env_context()  # set when launched by torchrun
    if dist is None:
        return _atlas(args, None)
    if args.shard is not None:
        fail("under torchrun each rank takes its own shard; drop --shard")
    import torch.distributed

    with process_group(dist):
        try:
            return _atlas(args, dist)
        except RankFailedError as err:
            if dist.is_primary:  # every rank holds the same error; rank 0 alone prints it
                print(f"tlatlas: error: {err}", file=sys.stderr)
            # no rank exits (and has torchrun stop the others) before rank 0 has printed
            torch.distributed.barrier()
            return 2


def _atlas(args: argparse.Namespace, dist) -> int:
    """Build and write the atlas of each seed; under torchrun rank 0 alone writes and prints."""
    from dataclasses import replace
    from pathlib import Path

    from tqdm import tqdm

    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.distributed import collective_step
    from tlatlas.atlas.estimate_spec import shown_metric
    from tlatlas.atlas.exactness import exactness, exactness_line
    from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
    from tlatlas.atlas.store import save_atlas
    from tlatlas.models import check_layers
    from tlatlas.models.memory import MemoryBackoffWarning, default_budget

    primary = dist is None or dist.is_primary
    shard = args.shard
    part = dist.shard if dist is not None else shard
    # every argument is checked before the model loads: a bad one fails in a second
    if args.memory_budget is not None and args.batch_size != 0:
        fail("--memory-budget applies to --batch-size auto (a fixed batch size plans nothing)")
    estimate = _estimate_args(args)
    config = AtlasConfig(ablation=args.ablation, positions=args.positions,
                         batch_size=args.batch_size, memory_budget_bytes=args.memory_budget,
                         method="naive" if args.method == "naive" else "exact",
                         layers=tuple(args.layers) if args.layers else None,
                         positions_ablated=args.positions_ablated,
                         correct_only=args.correct_only,
                         min_family_examples=args.min_family_examples,
                         components=tuple(args.components))
    suites = {seed: suite_from_args(args, seed=seed) for seed in args.seeds}
    for suite in suites.values():
        if part is not None:
            suite.shard(*part)  # too few examples for this many shards raises here
    model = _load_model(args.model, dist, args.dtype)
    check_layers(model, config.layers)
    if config.auto_batch and config.memory_budget_bytes is None:
        # read the free memory once, so every seed's plan (and the one printed) is the sweep's
        config = replace(config, memory_budget_bytes=default_budget(model.device))
    out = Path(args.out)
    command = args.command_line
    rows, values = [], {}
    for seed, suite in suites.items():
        spec = SuiteSpec(kind=args.suite, seed=seed, per_family=args.per_family,
                         families=tuple(args.families) if args.families else None, shard=shard)
        scored = suite.shard(*part) if part is not None else suite
        if config.auto_batch and primary:
            _print_batch_plans(model, scored, config, seed)
        with tqdm(total=len(scored), desc=f"atlas seed {seed}", unit="ex", file=sys.stderr,
                  disable=not primary) as bar, warnings_as_lines(MemoryBackoffWarning):
            atlas = build_atlas(model, spec, config, method=args.method, command=command,
                                on_batch=bar.update, dist=dist, **estimate)
        metric = shown_metric(atlas.meta.method, atlas.meta.estimate)
        stem = out / (f"seed{seed}" + (f".shard{shard[0]}of{shard[1]}" if shard else ""))
        with collective_step(dist, "writing the atlas"):  # every rank learns if it failed
            paths = save_atlas(atlas, stem) if primary else None
        if not primary:
            continue  # every rank holds the reduced atlas; only rank 0 writes it
        ranks = f", {dist.world_size} ranks" if dist is not None else ""
        print(f"wrote {paths[1]}  ({atlas.meta.n_examples} examples, "
              f"{atlas.meta.timings.get('sweep', 0):.1f}s{ranks})", file=sys.stderr)
        values[seed] = exactness(atlas)
        if shard is None:  # a shard's hub says nothing: the table waits for the merge
            rows.append(table_entry(atlas, metric=metric))
    if not primary:
        return 0
    print(f"model {args.model} ({model.fingerprint.short})  suite {args.suite}  "
          f"ablation {args.ablation}  method {args.method}  dtype {atlas.meta.dtype}")
    if args.method in ESTIMATED:
        for seed, v in values.items():
            print((f"seed {seed} " if len(values) > 1 else "") + exactness_line(v))
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: no hub table for a part of the suite; "
              "`tlatlas merge` the shards, then `tlatlas show`")
        return 0
    hub_table(rows)
    if config.positions:
        role_table(atlas.sums, metric)
    return 0


def _estimate_args(args: argparse.Namespace) -> dict:
    """``build_atlas``'s keyword arguments from --estimator/--steps/--top-k/--patience/--screen/
    --rule,
    checked before anything loads (each option that does not apply is an error)."""
    from tlatlas.atlas.attribution import check_attribution_kind
    from tlatlas.atlas.estimate_spec import FIRST_ORDER, FISHER_METHODS, Estimator
    from tlatlas.atlas.verify import DEFAULT_ESTIMATOR, VerifyConfig
    from tlatlas.errors import InvalidInputError

    method = args.method
    given = {o: v for o, v in (("--estimator", args.estimator), ("--steps", args.steps),
                               ("--outcomes", args.outcomes),
                               ("--top-k", args.top_k), ("--patience", args.patience),
                               ("--screen", args.screen), ("--rule", args.rule))
             if v is not None}
    verify_only = [o for o in given if o in ("--top-k", "--patience", "--screen", "--rule")]
    if method != "verify" and verify_only:
        fail(f"{_listed(verify_only)} to --method verify (the entries it computes exactly), "
             f"not {method}")
    if method not in ESTIMATED and given:
        fail(f"{_listed(given)} to --method attribution or verify, not {method}")
    if method not in ESTIMATED:
        return {}
    if tuple(args.components) != COMPONENT_CHOICES:
        fail(f"--components applies to --method exact and naive; {method} estimates every "
             "component")
    if args.batch_size == 0:
        fail(f"--batch-size auto works with --method exact and naive; give --method {method} "
             "a number")
    try:
        check_attribution_kind(args.ablation)
    except InvalidInputError as err:
        fail(f"--method {method}: {err}")
    name, steps = args.estimator, args.steps
    if name in FIRST_ORDER_ESTIMATORS and steps is not None:
        fail(f"--estimator {name} takes one point; --steps applies to ig_joint and ig")
    if name in ("ig_joint", "ig") and steps is None:
        fail(f"--estimator {name} needs --steps N (points on the ablation path)")
    if name is None and steps is not None and method == "verify":
        fail("--steps needs --estimator ig_joint or ig: verify ranks by bound by default, "
             "a first-order score")
    if args.outcomes is not None and name not in FISHER_METHODS:
        fail(f"--outcomes applies to --estimator {' and '.join(FISHER_METHODS)}, not "
             f"{name or 'the default'}")
    if name is None:  # the method's default; for attribution --steps N >= 2 means ig_joint
        estimator = None
    elif name == "first_order":
        estimator = FIRST_ORDER
    else:
        estimator = Estimator(method=name, steps=steps or 1,
                              **({} if args.outcomes is None else {"outcomes": args.outcomes}))
    if estimator is not None and estimator.method == "ig" and estimator.steps > 1 \
            and args.positions:
        fail("--estimator ig runs on the layer map only; drop --positions or use ig_joint")
    kwargs: dict = {"estimator": estimator, "steps": None if estimator is not None else steps}
    if method == "verify":
        chosen = {"top_k": args.top_k or DEFAULT_TOP_K, "patience": args.patience,
                  "rule": args.rule or "patience"}
        if args.screen is not None:
            chosen["screen"] = args.screen
        VerifyConfig(**chosen, estimator=estimator or DEFAULT_ESTIMATOR)  # its checks, now
        kwargs.update(chosen)
    return kwargs


def _listed(options) -> str:
    options = list(options)
    return f"{', '.join(options)} {'applies' if len(options) == 1 else 'apply'}"


def _print_batch_plans(model, examples, config, seed: int) -> None:
    """The batch size (and position chunk) of each family, as the sweep will plan them."""
    from tlatlas.atlas.sweep import atlas_batch_plans

    examples = list(examples)
    plans = atlas_batch_plans(model, examples, config)
    n = {f: sum(ex.family == f for ex in examples) for f in plans}
    chunk = (f"; position chunk {', '.join(f'{f} {p.position_chunk}' for f, p in plans.items())}"
             if config.positions else "")
    print(f"seed {seed}: batch size per family from a {format_bytes(config.memory_budget_bytes)} "
          "budget: " + ", ".join(f"{f} {min(p.batch_size, n[f])} (up to {p.batch_size})"
                                 for f, p in plans.items()) + chunk, file=sys.stderr)


def _load_model(source: str, dist, dtype: str | None = None):
    """Load on this rank's device, in ``dtype`` (a DTYPES label; None: the device's default).
    Under torchrun local rank 0 loads first, so a first-use conversion (a GGUF into the
    cache) runs once per machine and the others read the cache."""
    from tlatlas.atlas.distributed import collective_step
    from tlatlas.models import DTYPES, load_model

    dt = DTYPES[dtype] if dtype is not None else None
    if dist is None:
        return load_model(source, dtype=dt)
    model = None
    for first_wave in (True, False):
        with collective_step(dist, "loading the model"):
            if (dist.local_rank == 0) == first_wave:
                model = load_model(source, device=dist.device, dtype=dt)
    return model


def table_entry(atlas, *, component: str = "block", **kwargs) -> dict:
    """One seed's row of the hub table and of ``show --json``: :func:`seed_entry` (keyword
    arguments as there) and ``values``: which values are exact (:func:`exactness`)."""
    from tlatlas.atlas.exactness import exactness
    from tlatlas.atlas.summary import seed_entry

    return {**seed_entry(atlas, component=component, **kwargs),
            "values": exactness(atlas, component)}


def cmd_show(args: argparse.Namespace) -> int:
    import json

    from tlatlas.atlas.estimate_spec import shown_metric
    from tlatlas.atlas.exactness import exactness_line
    from tlatlas.atlas.store import load_atlas

    stems = atlas_stems(args.dir)
    if not stems:
        fail(f"no *.atlas.json in {args.dir}")
    atlases = [load_atlas(s) for s in stems]
    whole = [a for a in atlases if a.meta.shard is None]
    if not whole:
        fail(f"only shards in {args.dir}: run `tlatlas merge` first")
    m = whole[0].meta
    metric = shown_metric(m.method, m.estimate, args.metric)
    rows = [table_entry(a, metric=metric, component=args.component, families=args.families,
                        replicates=args.replicates) for a in whole]
    if args.json:
        print(json.dumps({"model": m.model, "fingerprint": m.fingerprint.to_dict(),
                          "suite_kind": m.suite_kind, "suite_hash": m.suite_hash,
                          "seeds": rows}, default=_json_default))
        return 0
    print(f"model {m.model} ({m.fingerprint.short})  suite {m.suite_kind} "
          f"{m.suite_hash[:12]}  ablation {m.ablation}  method {m.method}  dtype {m.dtype}")
    if m.method in ESTIMATED:
        for a, row in zip(whole, rows, strict=True):
            prefix = f"seed {a.meta.seed} " if len(whole) > 1 else ""
            print(prefix + exactness_line(row["values"]))
    hub_table(rows)
    if whole[0].sums.has_positions:
        role_table(whole[0].sums, metric)
    return 0


def _json_default(value):
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def cmd_merge(args: argparse.Namespace) -> int:
    from tlatlas.atlas.store import load_atlas, merge_atlases, save_atlas

    merged = merge_atlases([load_atlas(s) for s in args.shards])
    paths = save_atlas(merged, args.out)
    print(f"merged {len(args.shards)} shards ({merged.meta.n_examples} examples) -> {paths[1]}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("atlas", help="causal atlas: ablation effects by layer/component/family",
                       description="Build the causal atlas: the effect (KL, change in log p, "
                                   "accuracy drop) of ablating each layer's attention, MLP "
                                   "and block, per task family. Writes one atlas per seed "
                                   "to --out and prints the hub table.")
    add_model_arg(p)
    add_suite_args(p, per_family_help="examples per family scored (a stratified sample)",
                   families_help="score only these families", seed=False)
    p.add_argument("--ablation", choices=["zero", "mean", "resample"], default="zero",
                   help="what replaces an ablated output: zeros, its mean over a reference "
                        "set, or another prompt's (default zero)")
    p.add_argument("--positions", action="store_true",
                   help="also the position-resolved maps (one position ablated at a time; "
                        "slower)")
    p.add_argument("--method", choices=METHOD_CHOICES, default="exact",
                   help="exact: reuses the clean run (fast); naive: one full forward per "
                        "ablation (same numbers, slower); attribution: a gradient estimate "
                        "(dlogp; KL too with --steps >= 2); verify: rank every entry by an "
                        "estimate, compute the top of each ranking exactly until it is "
                        "settled, and mark which values are exact (default exact)")
    p.add_argument("--estimator", choices=ESTIMATOR_CHOICES, default=None,
                   help="attribution and verify: what estimates each entry. first_order "
                        "(attribution patching), bound (|r - a| |grad|, a magnitude), "
                        "fisher (second-order KL at the clean point over the 8 likeliest "
                        "tokens and the rest), fisher_bound (its bound by |r - a| |grad|), "
                        "graddrop (AtP*), ig_joint (integrated gradients on one shared "
                        "path), ig (each entry's own path; attribution's layer map only); "
                        "ig_joint and ig need --steps (default: bound for verify; for "
                        "attribution first_order, or ig_joint given --steps N >= 2)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="attribution and verify: points on the ablation path of ig_joint / "
                        "ig (midpoint rule; 1 is first order); attribution without "
                        "--estimator: N >= 2 means ig_joint")
    p.add_argument("--outcomes", type=positive_int, default=None, metavar="K",
                   help="fisher and fisher_bound: the clean run's K likeliest tokens taken "
                        "as outcomes of their own, the rest of the vocabulary one more; a "
                        "backward each (default 8)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K",
                   help="verify: the entries of each ranking whose exact values must be "
                        f"settled (default {DEFAULT_TOP_K})")
    p.add_argument("--patience", type=positive_int, default=None, metavar="M",
                   help="verify: entries verified per round after the first K + M; the "
                        "patience rule stops a ranking once M verified entries in a row did "
                        "not enter its exact top K (default 2K; K under --rule bound)")
    p.add_argument("--rule", choices=("patience", "bound"), default=None,
                   help="verify: when a layer-map ranking is settled: patience (default) or "
                        "bound (the order's score, scaled by its worst under-statement so "
                        "far, says no unverified entry can enter the top K: fewer entries, "
                        "measured recall below 1 in a few percent of replicates)")
    p.add_argument("--screen", type=non_negative_int, default=None, metavar="J",
                   help="verify: order the layer map by the exact map on the first J examples "
                        "of each family (default 1; 0: by the estimate)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], metavar="SEED",
                   help="suite seeds, one atlas each (default 42)")
    p.add_argument("--layers", type=non_negative_int, nargs="+", default=None, metavar="L",
                   help="ablate only these layers, 0-based (default: every layer)")
    p.add_argument("--shard", type=shard, default=None, metavar="I/N",
                   help="score only slice I of N disjoint stratified slices, 0 <= I < N "
                        "(default: the whole suite); `tlatlas merge` joins them")
    add_memory_batching(p, DEFAULT_BATCH_SIZE)
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="precision the model is loaded and run in; fp32 for exact numbers "
                        "(default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--components", nargs="+", choices=COMPONENT_CHOICES,
                   default=list(COMPONENT_CHOICES), metavar="C",
                   help="layer-map components to compute: attn, mlp, block (default all "
                        "three; block alone costs a third, and is all the hub reads)")
    p.add_argument("--positions-ablated", choices=POSITION_CHOICES, default=DEFAULT_POSITIONS,
                   help="which positions a layer ablation touches: every position, all but "
                        "BOS (an attention sink whose activation is the same in every "
                        f"prompt), or BOS only (default {DEFAULT_POSITIONS})")
    p.add_argument("--correct-only", action="store_true",
                   help="score only examples the clean model answers right (top-1); clean "
                        "accuracy and the n used are reported either way (default: all)")
    p.add_argument("--min-family-examples", type=positive_int, default=2, metavar="N",
                   help="families scored on fewer examples are left out of the hub, with a "
                        "message (default 2)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR",
                   help="output directory (created if missing): seedS.atlas.json and "
                        ".safetensors per seed")
    p.set_defaults(func=cmd_atlas)

    p = sub.add_parser("show", help="the hub table of the atlases in a directory",
                       description="The hub table (and position roles, if present) of the "
                                   "whole-suite atlases in a directory.")
    p.add_argument("dir", help="directory holding *.atlas.json files (`tlatlas atlas --out`), "
                               "or one atlas: its stem (out/seed42) or either file")
    p.add_argument("--metric", choices=["kl", "dlogp", "acc_drop"], default="kl",
                   help="effect measure: KL(clean || ablated) in nats, drop in the answer's "
                        "log p in nats, or drop in top-1 accuracy (default kl; dlogp for "
                        "an attribution atlas)")
    p.add_argument("--component", choices=["attn", "mlp", "block"], default="block",
                   help="which ablated component ranks the layers (default block)")
    add_families(p, "hub over these families only (e.g. json factual code arithmetic: "
                    "suite breadth)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (seeds: hub, P(hub) per layer, margin and "
                        "agreement with 95%% CIs, layer effects with CIs) instead of the table")
    p.add_argument("--replicates", type=positive_int, default=1000, metavar="B",
                   help="bootstrap replicates for the intervals (default 1000)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("merge", help="merge shards 0..n-1 into the whole-suite atlas",
                       description="Merge the shards 0..n-1 of one sweep (`tlatlas atlas "
                                   "--shard i/n`) into the whole-suite atlas: sums and "
                                   "counts are added, so it equals the unsharded atlas.")
    p.add_argument("shards", nargs="+", metavar="SHARD",
                   help="shard stems (out/seed42.shard0of2) or their .atlas.json files")
    p.add_argument("--out", required=True, metavar="STEM",
                   help="output stem, e.g. out/seed42 (writes STEM.atlas.json and "
                        "STEM.safetensors)")
    p.set_defaults(func=cmd_merge)
