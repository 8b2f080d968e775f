"""Which positions should a layer ablation touch? Hub, P(hub) and margin per policy.

For each model, ablation kind (zero, mean, resample) and position policy (all,
all-but-bos, bos-only) this builds the exact block layer map on the same stratified
sample of the synthetic suite (the block component only: what the hub reads) and reports
the hub with P(hub = L) and the hub's margin
over the runner-up (95% stratified bootstrap over examples, 1,000 replicates). Every
atlas is written under ``--out`` (reused on a rerun), and the table as JSON and text.

    python benchmarks/position_policy.py --models smollm2-135m gemma3-270m \\
        --per-family 4 --out docs/results/position_policy
"""

import argparse
import json
import sys
import time
from pathlib import Path

from tlatlas.atlas.ablation import ABLATION_KINDS, POSITION_POLICIES
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import hub_evidence
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import atlas_paths, load_atlas, save_atlas
from tlatlas.models import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"],
                   help="models to measure (default: both embedded models)")
    p.add_argument("--per-family", type=int, default=4,
                   help="examples per family, stratified sample of the synthetic suite (default 4)")
    p.add_argument("--ablations", nargs="+", choices=list(ABLATION_KINDS),
                   default=list(ABLATION_KINDS), help="ablation kinds (default: all three)")
    p.add_argument("--seed", type=int, default=42, help="suite seed (default 42)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward (default 8)")
    p.add_argument("--out", type=Path, required=True, help="directory for atlases and tables")
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        model = load_model(name, device="cpu")
        for kind in args.ablations:
            for policy in POSITION_POLICIES:
                stem = args.out / name / f"{kind}-{policy}-seed{args.seed}"
                if atlas_paths(stem)[1].exists():
                    atlas = load_atlas(stem, fingerprint=model.fingerprint)
                else:
                    t0 = time.perf_counter()
                    atlas = build_atlas(model, SuiteSpec(seed=args.seed, per_family=args.per_family),
                                        AtlasConfig(ablation=kind, positions_ablated=policy,
                                                    batch_size=args.batch_size,
                                                    components=("block",)),
                                        command="python " + " ".join(sys.argv))
                    save_atlas(atlas, stem)
                    print(f"{name} {kind} {policy}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
                ev = hub_evidence(atlas.sums)
                rows.append({"model": name, "ablation": kind, "positions_ablated": policy,
                             "n_examples": ev.n_examples, "hub_layer": ev.hub_layer,
                             "hub_probability": ev.hub_probability[ev.layers.index(ev.hub_layer)],
                             "runner_up": ev.runner_up, "hub_margin": ev.hub_margin.to_dict(),
                             "hub_effect": ev.layer_estimate[ev.layers.index(ev.hub_layer)],
                             "family_agreement": ev.family_agreement.to_dict(),
                             "atlas": str(stem)})
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(rows, indent=1))
    lines = [f"{'model':<14} {'ablation':<9} {'positions':<12} {'n':>4} {'hub':>4} {'P(hub)':>7} "
             f"{'runner':>6} {'margin [95% CI] (nats)':>30} {'agreement [95% CI]':>22}"]
    for r in rows:
        m, a = r["hub_margin"], r["family_agreement"]
        lines.append(f"{r['model']:<14} {r['ablation']:<9} {r['positions_ablated']:<12} "
                     f"{r['n_examples']:>4} L{r['hub_layer']:<3} {r['hub_probability']:>7.2f} "
                     f"L{r['runner_up']:<5} {m['estimate']:>10.3f} [{m['ci'][0]:7.3f}, {m['ci'][1]:7.3f}]"
                     f" {a['estimate']:>8.2f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]")
    (args.out / "table.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
