"""How big is the steering unit against what the residual stream actually varies by?

    python benchmarks/residual_scale.py --models smollm2-135m gemma3-270m \
        --out docs/results/residual_scale_cpu.txt

A steering scale s adds ``s * n_L`` along a unit direction, where ``n_L`` is the layer's
typical residual norm (mean ‖resid_post[L]‖ after BOS; ``tlatlas.steering.vectors``). When a
few dimensions carry most of that norm (massive activations, nearly constant from token to
token), ``n_L`` is far larger than the part of the residual that varies, and even |s| = 0.25
swamps it. Per layer, over the prompts of a stratified suite (BOS dropped): ``n_L``; the
share of ‖x‖² held by each token's 4 largest dimensions (mean over prompts, with a 95%
bootstrap CI over prompts); the *bulk* norm sqrt(mean ‖x‖² without each token's 4 largest
dimensions) and ``n_L / bulk``: how many bulk norms one unit of s adds (a random direction
lands almost entirely in the bulk, which is what the next layer's RMSNorm passes on besides
the massive dimensions); and the centred norm sqrt(mean ‖x − μ‖²), μ the mean residual over
every token of the suite (how much the residual varies).
"""

import argparse
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOP = 4


def measure(model_name: str, per_family: int, stride: int) -> list[str]:
    from tlatlas.models import load_model
    from tlatlas.stats import bootstrap_mean
    from tlatlas.tasks import build_suite

    model = load_model(model_name, device="cpu", dtype=torch.float32)
    layers = list(range(0, model.n_layers, stride))
    hooks = {f"blocks.{layer}.hook_resid_post": layer for layer in layers}
    examples = list(build_suite("synthetic", seed=42, per_family=per_family))
    acts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with torch.no_grad():
        for e in examples:
            _, cache = model.bridge.run_with_cache(model.bridge.to_tokens(e.prompt),
                                                   names_filter=lambda n: n in hooks)
            for name, layer in hooks.items():
                acts[layer].append(cache[name][0, 1:].double())  # [pos d], BOS dropped
    lines = [f"== {model_name} ({model.fingerprint.short}): {len(examples)} prompts "
             f"({per_family} per family), layers {', '.join(map(str, layers))}",
             f"{'layer':>5} | {'n_L (unit)':>10} | {f'top-{TOP} dims share of |x|^2 [95% CI]':>36} "
             f"| {'bulk norm':>9} | {'n_L / bulk':>10} | {'centred norm':>12}"]
    for layer in layers:
        per_prompt = acts[layer]
        tokens = torch.cat(per_prompt)
        unit = float(tokens.norm(dim=-1).mean())
        sq = [x.square() for x in per_prompt]
        share = torch.stack([(s.sort(-1, descending=True).values[:, :TOP].sum(-1)
                              / s.sum(-1)).mean() for s in sq])
        iv = bootstrap_mean(share)
        tsq = tokens.square().sort(-1, descending=True).values
        bulk = float(tsq[:, TOP:].sum(-1).mean().sqrt())
        centred = float((tokens - tokens.mean(0)).square().sum(-1).mean().sqrt())
        lines.append(f"{layer:>5} | {unit:>10.1f} | {iv.estimate:>16.2f} [{iv.ci_low:.2f}, "
                     f"{iv.ci_high:.2f}] (n = {iv.n}) | {bulk:>9.1f} | {unit / bulk:>10.2f} "
                     f"| {centred:>12.1f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    p.add_argument("--per-family", type=int, default=2)
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args()
    import shlex
    import sys

    lines = ["# command: python benchmarks/residual_scale.py " + shlex.join(sys.argv[1:])]
    for name in args.models:
        lines += measure(name, args.per_family, args.stride) + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
