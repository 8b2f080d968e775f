"""`tlatlas atlas | show | merge`: build, read and merge causal atlases."""

import argparse
import sys

from tlatlas.cli.common import hub_table, parse_shard, role_table


def cmd_atlas(args: argparse.Namespace) -> int:
    from tlatlas.atlas.distributed import RankFailedError, env_context, process_group

    dist = env_context()  # set when launched by torchrun
    if dist is None:
        return _atlas(args, None)
    if args.shard is not None:
        raise SystemExit("tlatlas: error: under torchrun each rank takes its own shard; "
                         "drop --shard")
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
    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
    from tlatlas.atlas.store import save_atlas

    primary = dist is None or dist.is_primary
    shard = parse_shard(args.shard)
    config = AtlasConfig(ablation=args.ablation, positions=args.positions,
                         batch_size=args.batch_size,
                         method="naive" if args.method == "naive" else "exact",
                         layers=tuple(args.layers) if args.layers else None)
    model = _load_model(args.model, dist)
    out = Path(args.out)
    command = args.command_line
    rows = []
    for seed in args.seeds:
        spec = SuiteSpec(kind=args.suite, seed=seed, per_family=args.per_family,
                         families=tuple(args.families) if args.families else None, shard=shard)
        with tqdm(desc=f"atlas seed {seed}", unit="ex", file=sys.stderr,
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
        rows.append((seed, hub_summary(atlas.sums, metric=metric)))
    if not primary:
        return 0
    print(f"model {args.model} ({model.fingerprint.short})  suite {args.suite}  "
          f"ablation {args.ablation}  method {args.method}")
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
    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.store import find_atlases, load_atlas

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
    hub_table(rows)
    if whole[0].sums.has_positions:
        role_table(whole[0].sums, metric)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tlatlas.atlas.store import load_atlas, merge_atlases, save_atlas

    merged = merge_atlases([load_atlas(s) for s in args.shards])
    paths = save_atlas(merged, args.out)
    print(f"merged {len(args.shards)} shards ({merged.meta.n_examples} examples) -> {paths[1]}")
    return 0


def register(sub) -> None:
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
