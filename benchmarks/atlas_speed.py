"""Atlas speed: naive loop vs fast exact path vs attribution patching, side by side.

    python benchmarks/atlas_speed.py                      # SmolLM2-135M, CPU
    python benchmarks/atlas_speed.py --json | tail -1     # machine-readable

Same prompts, same process, one run: for the layer map (attn/mlp/block x layer) and the
layer x position map (resid/block), it times

- ``naive``: one ``bridge.run_with_hooks`` forward per intervention;
- ``tl_patching``: TransformerLens's own ``patching.get_act_patch_resid_pre`` fed a
  zero "clean cache" (= zero ablation of resid_pre per layer and position; position map
  only, the one map it computes);
- ``exact``: tlatlas's fast exact path (clean-run reuse, KV prefix, scored-only unembed);
- ``attribution``: the gradient estimate (one forward + one backward per batch),

and prints wall time, peak memory above the loaded model, speed-up over naive, the max
|difference| of exact vs naive (per example), and the Spearman correlation of the
attribution Δlogp with the exact Δlogp (and with the exact KL).
"""

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import replace
from functools import partial

import torch


class PeakMemory:
    """Peak resident memory (CPU: sampled VmRSS; CUDA: max_memory_allocated) above start."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated() - self.cuda_start
        else:
            self.bytes = self.peak - self.start


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return out, wall, mem.bytes


def per_example(sums, key):
    t = sums.tensors
    count = {"layer": t["count"], "role": t.get("role.count"), "offset": t.get("offset.count")}[key]
    return t[f"{key}.sum"] / count.clamp(min=1)


def tl_patching_position_map(model, examples, batch_size):
    """TransformerLens's own patching: zero 'clean cache' patched into each (layer, pos)."""
    from transformer_lens import patching

    from tlatlas.atlas.engine import encoded_batches
    from tlatlas.evaluate import scored_logits
    from tlatlas.metrics import effects

    out = []
    for _, batch in encoded_batches(examples, model.tokenizer, batch_size=batch_size):
        tokens = batch.tokens.to(model.device)
        clean = scored_logits(model, batch)
        zeros = {f"blocks.{layer}.hook_resid_pre": torch.zeros(*tokens.shape, model.d_model,
                                                               device=model.device, dtype=model.dtype)
                 for layer in range(model.n_layers)}
        rows = torch.arange(len(batch))

        def metric(logits, clean=clean, batch=batch, rows=rows):
            return effects(clean, logits[rows, batch.scored_pos.to(logits.device)], batch.target).kl.mean()

        with torch.inference_mode():
            out.append(patching.get_act_patch_resid_pre(model.bridge, tokens, zeros, metric))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-family", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=["factual", "ioi", "code"])
    parser.add_argument("--pos-families", nargs="+", default=["factual"],
                        help="families of the (costlier) position-map comparison")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-naive-positions", action="store_true")
    parser.add_argument("--maps", nargs="+", default=["layer", "layer_x_position"],
                        choices=["layer", "layer_x_position"])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from tlatlas.atlas.attribution import attribution_sums
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.sweep import compute_atlas_sums
    from tlatlas.metrics import METRICS
    from tlatlas.models import load_model
    from tlatlas.stats import spearman
    from tlatlas.tasks import build_suite

    model = load_model(args.model)
    dev = model.device
    kl, dlogp = METRICS.index("kl"), METRICS.index("dlogp")
    results: dict = {"model": args.model, "fingerprint": model.fingerprint.short,
                     "device": str(dev), "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "maps": {}}

    def log(msg):
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    for name, positions, families in (("layer", False, args.families),
                                      ("layer_x_position", True, args.pos_families)):
        if name not in args.maps:
            continue
        examples = list(build_suite("synthetic", seed=42, per_family=args.per_family,
                                    families=families))
        config = AtlasConfig(batch_size=args.batch_size, positions=positions)
        # warm-up (first forward pays one-off allocation and kernel selection costs)
        compute_atlas_sums(model, examples[:2], replace(config, positions=False, layers=(0,)))
        key = "role" if positions else "layer"
        row: dict = {"examples": len(examples), "families": families}
        exact, t_exact, m_exact = timed(partial(compute_atlas_sums, model, examples, config), dev)
        attr, t_attr, m_attr = timed(partial(
            attribution_sums, model, examples, batch_size=args.batch_size, positions=positions,
            families=exact.families), dev)
        row["exact"] = {"seconds": t_exact, "peak_mib": m_exact / 2**20}
        row["attribution"] = {"seconds": t_attr, "peak_mib": m_attr / 2**20}
        if not (positions and args.skip_naive_positions):
            naive, t_naive, m_naive = timed(partial(
                compute_atlas_sums, model, examples, replace(config, method="naive")), dev)
            row["naive"] = {"seconds": t_naive, "peak_mib": m_naive / 2**20}
            diffs = [float((per_example(naive, k) - per_example(exact, k)).abs().max())
                     for k in (["layer", "role", "offset"] if positions else ["layer"])]
            row["max_abs_diff_exact_vs_naive"] = max(diffs)
            row["speedup_exact"] = t_naive / t_exact
            row["speedup_attribution"] = t_naive / t_attr
        if positions:
            _, t_tl, m_tl = timed(partial(tl_patching_position_map, model, examples,
                                          args.batch_size), dev)
            row["tl_patching_resid_pre"] = {"seconds": t_tl, "peak_mib": m_tl / 2**20}
            if "naive" in row:
                row["speedup_tl_patching"] = t_naive / t_tl
        a, e = per_example(attr, key)[dlogp], per_example(exact, key)
        row["spearman_attr_vs_exact_dlogp"] = spearman(a, e[dlogp])
        row["spearman_attr_vs_exact_kl"] = spearman(a.abs(), e[kl])
        results["maps"][name] = row
        log(f"\n== {name} map: {len(examples)} examples ({', '.join(families)}), "
            f"{model.n_layers} layers, device {dev}, {torch.get_num_threads()} threads")
        for method in ("naive", "tl_patching_resid_pre", "exact", "attribution"):
            if method in row:
                r = row[method]
                sp = row["naive"]["seconds"] / r["seconds"] if "naive" in row else float("nan")
                log(f"  {method:24} {r['seconds']:8.1f} s  peak +{r['peak_mib']:7.1f} MiB  "
                    f"speed-up over naive {sp:6.2f}x")
        if "max_abs_diff_exact_vs_naive" in row:
            log(f"  max |exact - naive| (per example, every entry): {row['max_abs_diff_exact_vs_naive']:.2e}")
        log(f"  Spearman attribution vs exact: dlogp {row['spearman_attr_vs_exact_dlogp']:.3f}, "
            f"|dlogp| vs KL {row['spearman_attr_vs_exact_kl']:.3f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
