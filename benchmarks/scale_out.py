"""Scale-out: one process vs N torchrun processes on the same atlas (issue 9, part 6).

    python benchmarks/scale_out.py                      # SmolLM2-135M, CPU, 1 vs 2 ranks
    python benchmarks/scale_out.py --json | tail -1     # machine-readable

Both runs are the real command line, started the same way (a fresh subprocess each, so
both pay the same start-up: imports and model load):

- ``single``: ``tlatlas atlas ...`` in 1 process with ``--threads`` torch threads;
- ``torchrun``: ``torchrun --standalone --nproc-per-node N -m tlatlas atlas ...`` with
  ``threads / N`` threads per rank, so both runs use the same cores;
- ``single_control`` (skip with ``--no-control``): 1 process with ``threads / N``
  threads, which tells "more processes" apart from "fewer threads per process".

It prints the wall time of each run end to end and of its sweep alone (from the atlas's
recorded timings; under torchrun the slowest rank's), the speed-ups, and the max
|difference| between the two atlases (every summed tensor, and the mean block KL per
layer and family), and the machine's load average. On a small or busy machine the ratio
can be anything; it is printed as measured.

The orchestrator's local-vs-Ray comparison lives in :func:`orchestrator_comparison`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def atlas_args(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = ["atlas", "--model", args.model, "--per-family", str(args.per_family),
           "--ablation", args.ablation, "--batch-size", str(args.batch_size), "--out", str(out)]
    if args.families:
        cmd += ["--families", *args.families]
    if args.layers:
        cmd += ["--layers", *map(str, args.layers)]
    return cmd


def timed_run(cmd: list[str], threads: int) -> float:
    """Wall seconds of one subprocess run with ``threads`` torch threads per process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr[-3000:]}")
    return wall


def torchrun_comparison(args: argparse.Namespace, work: Path) -> dict:
    """1 process x ``threads`` threads vs ``nproc`` torchrun ranks x ``threads/nproc``."""
    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.store import load_atlas
    from tlatlas.atlas.sums import mean_effect

    per_rank = max(1, args.threads // args.nproc)
    single_cmd = [sys.executable, "-m", "tlatlas", *atlas_args(args, work / "single")]
    ranked_cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc-per-node", str(args.nproc), "-m", "tlatlas",
                  *atlas_args(args, work / "torchrun")]
    load_before = os.getloadavg()[0]
    wall = {"single": timed_run(single_cmd, args.threads),
            "torchrun": timed_run(ranked_cmd, per_rank)}
    single = load_atlas(work / "single" / "seed42")
    ranked = load_atlas(work / "torchrun" / "seed42")
    sweep = {"single": single.meta.timings["sweep"], "torchrun": ranked.meta.timings["sweep"]}
    if args.control and args.threads != per_rank:
        # the same single process with the per-rank thread count: separates "more
        # processes" from "fewer threads per process" (OpenMP spin on a busy machine)
        control_cmd = [sys.executable, "-m", "tlatlas", *atlas_args(args, work / "control")]
        wall["single_control"] = timed_run(control_cmd, per_rank)
        sweep["single_control"] = load_atlas(work / "control" / "seed42").meta.timings["sweep"]
    diff = max(float((single.sums.tensors[k] - ranked.sums.tensors[k]).abs().max())
               for k in single.sums.tensors)
    mean_diff = float((mean_effect(single.sums) - mean_effect(ranked.sums)).abs().max())
    same_hub = hub_summary(single.sums).hub_layer == hub_summary(ranked.sums).hub_layer
    return {
        "examples": single.meta.n_examples,
        "layers": len(single.sums.layers),
        "families": list(single.sums.families),
        "nproc": args.nproc,
        "threads_single": args.threads,
        "threads_per_rank": per_rank,
        "wall_s": wall,
        "sweep_s": sweep,
        "reduce_s": ranked.meta.timings.get("reduce"),
        "speedup_wall": wall["single"] / wall["torchrun"],
        "speedup_sweep": sweep["single"] / sweep["torchrun"],
        "max_abs_diff": diff,
        "max_abs_diff_mean_kl": mean_diff,
        "same_hub": same_hub,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "world_size_recorded": ranked.meta.world_size,
        "commands": {"single": " ".join(single_cmd[1:]), "torchrun": " ".join(ranked_cmd[1:])},
    }


TIMING_KEYS = {"forward_s", "slowdown", "artifacts"}
"""Result fields that measure time (or name per-run files): left out of the comparison."""


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def orchestrator_comparison(args: argparse.Namespace, work: Path) -> dict | None:
    """The orchestrator's smoke blocks with ``--executor local`` vs ``--executor ray``.

    Each run is ``python -m experiments.run ... --size smoke`` in a fresh subprocess with
    its own empty root, so both pay the same start-up (Ray's includes starting a local
    instance). The results must agree: every result value is compared, timings aside
(:data:`TIMING_KEYS`).
    """
    if not args.orchestrator_blocks:
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "ray is not installed (pip install 'tlatlas[ray]')"}
    repo = Path(__file__).resolve().parents[1]
    walls, values = {}, {}
    for executor in ("local", "ray"):
        root = work / f"orchestrator-{executor}"
        cmd = [sys.executable, "-m", "experiments.run", "--model", args.model, "--blocks",
               args.orchestrator_blocks, "--size", "smoke", "--root", str(root),
               "--executor", executor]
        old = os.getcwd()
        os.chdir(repo)
        try:
            walls[executor] = timed_run(cmd, max(1, args.threads // 2) if executor == "ray"
                                        else args.threads)
        finally:
            os.chdir(old)
        values[executor] = {
            str(p.relative_to(root)): json.loads(p.read_text())["value"]
            for p in sorted((root / "results").rglob("*.json"))}
    same = values["local"].keys() == values["ray"].keys() and all(
        _untimed(values["local"][k]) == _untimed(values["ray"][k]) for k in values["local"])
    return {"blocks": args.orchestrator_blocks.split(","), "wall_s": walls,
            "speedup_wall": walls["local"] / walls["ray"], "n_results": len(values["local"]),
            "same_results": same,
            "threads": {"local": args.threads, "ray_per_task": max(1, args.threads // 2)}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--per-family", type=int, default=2)
    p.add_argument("--families", nargs="+", default=None, help="default: all twelve")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: all")
    p.add_argument("--ablation", choices=["zero", "mean"], default="zero")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the single process (split evenly over the ranks)")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control run (1 process with the per-rank thread count)")
    p.add_argument("--no-torchrun", dest="torchrun", action="store_false",
                   help="skip the atlas 1-vs-N-ranks comparison")
    p.add_argument("--orchestrator-blocks", default="hub-replication,suite-breadth,quant-speed",
                   help="smoke blocks timed with the local vs the Ray executor ('' skips)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="tlatlas-scale-out-") as tmp:
        work = Path(tmp)
        ranked = torchrun_comparison(args, work) if args.torchrun else None
        orchestrator = orchestrator_comparison(args, work)

    r = ranked
    if r is None:
        print("== atlas under torchrun: skipped (--no-torchrun)")
    else:
        _print_torchrun(args, r)
    _print_orchestrator(orchestrator)
    if args.json:
        import torch

        print(json.dumps({"model": args.model, "cpu": platform.machine(),
                          "cores": os.cpu_count(), "torch": torch.__version__,
                          "torchrun": ranked, "orchestrator": orchestrator}))
    return 0


def _print_torchrun(args: argparse.Namespace, r: dict) -> None:
    print(f"== atlas: {args.model}, {r['examples']} examples ({len(r['families'])} families), "
          f"{r['layers']} layers, {args.ablation} ablation, {platform.machine()} "
          f"x {os.cpu_count()} cores")
    print(f"  1 process  x {r['threads_single']} threads   wall {r['wall_s']['single']:7.1f} s"
          f"   sweep {r['sweep_s']['single']:7.1f} s")
    print(f"  {r['nproc']} processes x {r['threads_per_rank']} thread(s)  wall "
          f"{r['wall_s']['torchrun']:7.1f} s   sweep {r['sweep_s']['torchrun']:7.1f} s"
          f"   (all_reduce {r['reduce_s']:.3f} s)")
    if "single_control" in r["wall_s"]:
        print(f"  1 process  x {r['threads_per_rank']} thread(s)  wall "
              f"{r['wall_s']['single_control']:7.1f} s   sweep "
              f"{r['sweep_s']['single_control']:7.1f} s   (control)")
    print(f"  speed-up   wall {r['speedup_wall']:.2f}x   sweep {r['speedup_sweep']:.2f}x")
    print(f"  max |single - torchrun|: {r['max_abs_diff']:.2e} over every summed tensor, "
          f"{r['max_abs_diff_mean_kl']:.2e} on the mean block KL per layer and family; "
          f"same hub: {r['same_hub']}")
    load = r["load_average_1min"]
    print(f"  1-min load average before/after: {load['before']:.1f} / {load['after']:.1f} "
          f"on {os.cpu_count()} cores")


def _print_orchestrator(o: dict | None) -> None:
    if o is None or "skipped" in o:
        print("== orchestrator local vs ray: not measured" + (f" ({o['skipped']})" if o else ""))
    else:
        print(f"== orchestrator: smoke blocks {', '.join(o['blocks'])} ({o['n_results']} results)")
        print(f"  --executor local  wall {o['wall_s']['local']:7.1f} s  "
              f"({o['threads']['local']} threads, blocks in turn)")
        print(f"  --executor ray    wall {o['wall_s']['ray']:7.1f} s  "
              f"({o['threads']['ray_per_task']} thread(s) per task, tasks in parallel, "
              f"includes starting Ray)")
        print(f"  speed-up {o['speedup_wall']:.2f}x   same results: {o['same_results']}")


if __name__ == "__main__":
    sys.exit(main())
