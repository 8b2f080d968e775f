"""Text tables of a steering result: layer x scale per precision, and the closing summary."""

import json

import torch

from tlatlas.models import Fingerprint
from tlatlas.steering.result import REFERENCE_PRECISION, SteeringResult


def layer_scale_table(result: SteeringResult, precision: str, what: str = "kl") -> str:
    """A layer x scale text table for one precision row.

    ``what``: ``kl`` (steering vectors, family mean), ``dlogp``, ``random`` (the control:
    mean ± std over draws) or ``amplification`` (KL / fp32 KL).
    """
    p = result.precisions.index(precision)
    head = f"{'layer':>5} |" + "".join(f"{s:>{13 if what == 'random' else 8}.2f}" for s in result.scales)
    lines = [head, "-" * len(head)]
    if what == "random":
        mean, std = (t[p] for t in result.random_kl())
        for li, layer in enumerate(result.layers):
            lines.append(f"{layer:>5} |" + "".join(
                f"{float(m):>7.3f}±{float(d):<5.3f}" for m, d in zip(mean[li], std[li], strict=True)))
        return "\n".join(lines)
    table = {"kl": lambda: result.mean_kl()[p], "dlogp": lambda: result.dlogp()[p].mean(-1),
             "amplification": lambda: result.amplification()[p]}[what]()
    for li, layer in enumerate(result.layers):
        lines.append(f"{layer:>5} |" + "".join(f"{float(v):>8.3f}" for v in table[li]))
    return "\n".join(lines)


def full_report(result: SteeringResult) -> str:
    """Every table of a result: per precision KL, Δlogp, random control, amplification."""
    out = [f"model {result.meta.model} ({result.meta.fingerprints[0].short})  "
           f"suite {result.meta.suite_kind} {result.meta.suite_hash[:12]}  "
           f"{result.meta.n_examples} examples, families {', '.join(result.families)}",
           f"vectors: {result.meta.vectors.get('origin')} on "
           f"{Fingerprint.from_dict(result.meta.vectors['fingerprint']).short}; "
           f"random control: {result.meta.config['random_draws']} norm-matched draws",
           f"command: {result.meta.command}", ""]
    slow = result.slowdown()
    for i, prec in enumerate(result.precisions):
        spec = result.meta.precision_specs[i]
        out.append(f"=== precision {prec}  {json.dumps(spec.get('bitsandbytes', spec.get('dtype')))}  "
                   f"forward {float(result.tensors['forward_s'][i]):.3f} s "
                   f"(x{float(slow[i]):.2f} vs {REFERENCE_PRECISION})")
        sections = [("kl", "KL(p_clean || p_steered), nats, mean over families"),
                    ("random", "random control KL, mean ± std over draws"),
                    ("dlogp", "dlogp of the answer (log p_clean - log p_steered), nats")]
        if REFERENCE_PRECISION in result.precisions and prec != REFERENCE_PRECISION:
            sections.append(("amplification", f"amplification: KL / {REFERENCE_PRECISION} KL"))
        for what, title in sections:
            out += [f"-- {title}", layer_scale_table(result, prec, what), ""]
    return "\n".join(out)


def summary_lines(result: SteeringResult) -> list[str]:
    """Closing summary: most steerable layer per family, amplification and slowdown."""
    lines = []
    ref = result.precisions[0]
    best = result.most_steerable(ref)
    lines.append(f"most steerable layer per family ({ref}, mean KL over scales): " + ", ".join(
        f"{f} L{layer} ({kl:.2f})" for f, (layer, kl) in best.items()))
    rnd, _ = result.random_kl()
    vec = result.mean_kl()
    for i, prec in enumerate(result.precisions):
        ratio = float(vec[i].sum() / rnd[i].sum()) if float(rnd[i].sum()) > 0 else float("nan")
        line = (f"{prec:>9}: mean KL {float(vec[i].mean()):.3f} (random {float(rnd[i].mean()):.3f},"
                f" vector/random {ratio:.2f})  forward {float(result.tensors['forward_s'][i]):.3f} s"
                f" x{float(result.slowdown()[i]):.2f}")
        if REFERENCE_PRECISION in result.precisions and prec != REFERENCE_PRECISION:
            amp = result.amplification()[i]
            amp = amp[~torch.isnan(amp)]
            if amp.numel():
                line += (f"  amplification median {float(amp.median()):.2f} "
                         f"[{float(amp.min()):.2f}, {float(amp.max()):.2f}]")
        lines.append(line)
    return lines
