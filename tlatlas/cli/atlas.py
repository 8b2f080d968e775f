"""`tlatlas atlas | show | merge`: build, read and merge causal atlases."""

import argparse
import sys

from tlatlas.cli.common import (
    add_batch_size,
    add_families,
    add_model_arg,
    add_suite_args,
    fail,
    hub_table,
    non_negative_int,
    output_dir,
    positive_int,
    role_table,
    shard,
    suite_from_args,
)

POSITION_CHOICES = ["all", "all-but-bos", "bos-only"]
"""tlatlas.atlas.ablation.POSITION_POLICIES, spelled out so `--help` does not import torch."""
DEFAULT_POSITIONS = "all-but-bos"
"""AtlasConfig's default (tests check both stay in step with the library)."""


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
    from pathlib import Path

    from tqdm import tqdm

    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.distributed import collective_step
    from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
    from tlatlas.atlas.store import save_atlas
    from tlatlas.atlas.summary import seed_entry
    from tlatlas.models import check_layers

    primary = dist is None or dist.is_primary
    shard = args.shard
    part = dist.shard if dist is not None else shard
    # every argument is checked before the model loads: a bad one fails in a second
    config = AtlasConfig(ablation=args.ablation, positions=args.positions,
                         batch_size=args.batch_size,
                         method="naive" if args.method == "naive" else "exact",
                         layers=tuple(args.layers) if args.layers else None,
                         positions_ablated=args.positions_ablated,
                         correct_only=args.correct_only,
                         min_family_examples=args.min_family_examples)
    suites = {seed: suite_from_args(args, seed=seed) for seed in args.seeds}
    for suite in suites.values():
        if part is not None:
            suite.shard(*part)  # too few examples for this many shards raises here
    model = _load_model(args.model, dist)
    check_layers(model, config.layers)
    out = Path(args.out)
    command = args.command_line
    rows = []
    for seed, suite in suites.items():
        spec = SuiteSpec(kind=args.suite, seed=seed, per_family=args.per_family,
                         families=tuple(args.families) if args.families else None, shard=shard)
        total = len(suite.shard(*part)) if part is not None else len(suite)
        with tqdm(total=total, desc=f"atlas seed {seed}", unit="ex", file=sys.stderr,
                  disable=not primary) as bar:
            atlas = build_atlas(model, spec, config, method=args.method, command=command,
                                on_batch=bar.update, dist=dist)
        # attribution estimates dlogp only (first-order KL is zero at the clean point)
        metric = "dlogp" if args.method == "attribution" else "kl"
        stem = out / (f"seed{seed}" + (f".shard{shard[0]}of{shard[1]}" if shard else ""))
        with collective_step(dist, "writing the atlas"):  # every rank learns if it failed
            paths = save_atlas(atlas, stem) if primary else None
        if not primary:
            continue  # every rank holds the reduced atlas; only rank 0 writes it
        ranks = f", {dist.world_size} ranks" if dist is not None else ""
        print(f"wrote {paths[1]}  ({atlas.meta.n_examples} examples, "
              f"{atlas.meta.timings.get('sweep', 0):.1f}s{ranks})", file=sys.stderr)
        if shard is None:  # a shard's hub says nothing: the table waits for the merge
            rows.append(seed_entry(atlas, metric=metric))
    if not primary:
        return 0
    print(f"model {args.model} ({model.fingerprint.short})  suite {args.suite}  "
          f"ablation {args.ablation}  method {args.method}")
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: no hub table for a part of the suite; "
              "`tlatlas merge` the shards, then `tlatlas show`")
        return 0
    hub_table(rows)
    if config.positions:
        role_table(atlas.sums, metric)
    return 0


def _load_model(source: str, dist):
    """Load on this rank's device. Under torchrun local rank 0 loads first, so a first-use
    conversion (a GGUF into the cache) runs once per machine and the others read the cache."""
    from tlatlas.atlas.distributed import collective_step
    from tlatlas.models import load_model

    if dist is None:
        return load_model(source)
    model = None
    for first_wave in (True, False):
        with collective_step(dist, "loading the model"):
            if (dist.local_rank == 0) == first_wave:
                model = load_model(source, device=dist.device)
    return model


def cmd_show(args: argparse.Namespace) -> int:
    import json

    from tlatlas.atlas.store import find_atlases, load_atlas
    from tlatlas.atlas.summary import seed_entry

    stems = find_atlases(args.dir)
    if not stems:
        fail(f"no *.atlas.json in {args.dir}")
    atlases = [load_atlas(s) for s in stems]
    whole = [a for a in atlases if a.meta.shard is None]
    if not whole:
        fail(f"only shards in {args.dir}: run `tlatlas merge` first")
    m = whole[0].meta
    metric = "dlogp" if m.method == "attribution" and args.metric == "kl" else args.metric
    rows = [seed_entry(a, metric=metric, component=args.component, families=args.families,
                       replicates=args.replicates) for a in whole]
    if args.json:
        print(json.dumps({"model": m.model, "fingerprint": m.fingerprint.to_dict(),
                          "suite_kind": m.suite_kind, "suite_hash": m.suite_hash,
                          "seeds": rows}, default=_json_default))
        return 0
    print(f"model {m.model} ({m.fingerprint.short})  suite {m.suite_kind} "
          f"{m.suite_hash[:12]}  ablation {m.ablation}  method {m.method}")
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
    p.add_argument("--method", choices=["exact", "naive", "attribution"], default="exact",
                   help="exact: reuses the clean run (fast); naive: one full forward per "
                        "ablation (same numbers, slower); attribution: a gradient estimate "
                        "of dlogp (default exact)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], metavar="SEED",
                   help="suite seeds, one atlas each (default 42)")
    p.add_argument("--layers", type=non_negative_int, nargs="+", default=None, metavar="L",
                   help="ablate only these layers, 0-based (default: every layer)")
    p.add_argument("--shard", type=shard, default=None, metavar="I/N",
                   help="score only slice I of N disjoint stratified slices, 0 <= I < N "
                        "(default: the whole suite); `tlatlas merge` joins them")
    add_batch_size(p, 8)
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
    p.add_argument("dir", help="directory holding *.atlas.json files (`tlatlas atlas --out`)")
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
