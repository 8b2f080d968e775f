"""bf16 vs fp32: how much the atlas (layer effects and the hub) moves with the precision.

    python benchmarks/dtype_compare.py                                # SmolLM2-135M, CPU
    python benchmarks/dtype_compare.py --per-family 2 --out docs/results/dtype_cpu.txt

Loads the model twice (fp32, then bf16; one copy resident at a time), computes the exact
layer map (zero ablation, every layer, attn/mlp/block) on the same stratified suite, and
compares them: max |bf16 - fp32| of the per-layer mean effects (all families pooled, as the
hub is defined) and of the per-(layer, family) means, per-example differences, Spearman
rank correlations, the hub and family agreement of each. On the CPU, bf16 matmuls round
like the GPU's (8-bit mantissa, fp32 accumulation), so this measures the dtype policy's
cost; the GPU kernels differ in summation order, not in precision.
"""

import argparse
import gc
import os
import sys
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(model_name: str, dtype: torch.dtype, examples, batch_size: int):
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.sweep import compute_atlas_sums
    from tlatlas.models import load_model

    model = load_model(model_name, device="cpu", dtype=dtype)
    t0 = time.perf_counter()
    sums = compute_atlas_sums(model, examples, AtlasConfig(batch_size=batch_size))
    seconds = time.perf_counter() - t0
    del model
    gc.collect()
    return sums, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--per-family", type=int, default=2)
    p.add_argument("--families", nargs="+", default=None, help="default: all twelve")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.sums import mean_effect
    from tlatlas.metrics import METRICS
    from tlatlas.stats import spearman
    from tlatlas.tasks import build_suite

    suite = build_suite("synthetic", seed=42, per_family=args.per_family, families=args.families)
    examples = list(suite)
    sums, secs = {}, {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        sums[label], secs[label] = run(args.model, dtype, examples, args.batch_size)
    a, b = sums["fp32"], sums["bf16"]
    lines = [f"$ {' '.join(['python', *sys.argv])}",
             f"model {args.model}, {len(examples)} examples ({args.per_family} per family, "
             f"{len(suite.families)} families, suite {suite.content_hash[:12]}), exact layer "
             f"map, zero ablation, CPU, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads",
             f"sweep time: fp32 {secs['fp32']:.1f} s, bf16 {secs['bf16']:.1f} s", ""]
    lines.append(f"{'metric':6} {'comp':5} {'max|d| layer':>12} {'rel':>6} "
                 f"{'max|d| L x fam':>14} {'max|d| example':>14} {'spearman L':>10} "
                 f"{'spearman LxF':>12}")
    for metric in ("kl", "dlogp"):
        for comp in ("block", "attn", "mlp"):
            ea, eb = mean_effect(a, metric, comp), mean_effect(b, metric, comp)  # [layer family]
            n = a.tensors["count"]
            pooled_a = (ea * n).sum(-1) / n.sum()
            pooled_b = (eb * n).sum(-1) / n.sum()
            d_layer = float((pooled_a - pooled_b).abs().max())
            rel = d_layer / max(float(pooled_a.abs().max()), 1e-12)
            m, c = METRICS.index(metric), ("attn", "mlp", "block").index(comp)
            per_ex = (a.tensors["example.layer"][m, c] - b.tensors["example.layer"][m, c]).abs()
            lines.append(f"{metric:6} {comp:5} {d_layer:12.4f} {rel:6.1%} "
                         f"{float((ea - eb).abs().max()):14.4f} {float(per_ex.max()):14.4f} "
                         f"{spearman(pooled_a, pooled_b):10.4f} {spearman(ea, eb):12.4f}")
    ha, hb = hub_summary(a), hub_summary(b)
    lines += ["", "hub (block, KL, pooled over families):",
              f"  fp32: layer {ha.hub_layer} ({ha.hub_effect:.3f} nats), family agreement "
              f"{ha.family_agreement:.2f}",
              f"  bf16: layer {hb.hub_layer} ({hb.hub_effect:.3f} nats), family agreement "
              f"{hb.family_agreement:.2f}"]
    same = [f for f in ha.family_argmax if ha.family_argmax[f] == hb.family_argmax.get(f)]
    lines.append(f"  families whose own argmax layer is the same in both: {len(same)} of "
                 f"{len(ha.family_argmax)}"
                 + (f" (differ: {', '.join(f'{f} {ha.family_argmax[f]}->{hb.family_argmax[f]}' for f in ha.family_argmax if f not in same)})"
                    if len(same) < len(ha.family_argmax) else ""))
    order_a = sorted(range(len(ha.layer_effect)), key=lambda i: -ha.layer_effect[i])[:5]
    order_b = sorted(range(len(hb.layer_effect)), key=lambda i: -hb.layer_effect[i])[:5]
    lines.append(f"  top-5 layers fp32 {[a.layers[i] for i in order_a]}, "
                 f"bf16 {[b.layers[i] for i in order_b]}")
    acc_a = float(a.tensors["clean.correct"].sum() / a.tensors["count"].sum())
    acc_b = float(b.tensors["clean.correct"].sum() / b.tensors["count"].sum())
    lp = (a.tensors["example.clean_logp"] - b.tensors["example.clean_logp"]).abs()
    lines.append(f"clean run: top-1 accuracy fp32 {acc_a:.3f}, bf16 {acc_b:.3f}; "
                 f"max |d log p(answer)| {float(lp.max()):.4f} nats, mean {float(lp.mean()):.4f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
