"""The steering figure: KL against scale per layer, the random control as a band.

Built with matplotlib's object API (no pyplot, no display), so it works on Agg.
"""

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tlatlas.steering.result import SteeringResult


def plot_steering(result: SteeringResult, *, family: str | None = None,
                  max_panels_per_row: int = 3) -> Figure:
    """One panel per precision: family-mean KL(p_clean ‖ p_steered) against the scale s,
    one line per layer (colour = layer, viridis), and the random control as a grey band
    (per scale: lowest mean - std to highest mean + std over layers, its layer-mean as a
    dashed line). ``family`` plots that family's KL instead of the family mean."""
    n = len(result.precisions)
    cols = min(n, max_panels_per_row)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols + 0.8, 3.4 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    scales = np.asarray(result.scales)
    kl = result.kl()
    if family is not None:
        kl = kl[..., result.families.index(family)]
    else:
        kl = kl.mean(-1)
    kl = kl.numpy()  # [precision layer scale]
    rnd_mean, rnd_std = (t.numpy() for t in result.random_kl())
    cmap = colormaps["viridis"]
    norm = Normalize(vmin=min(result.layers), vmax=max(max(result.layers), min(result.layers) + 1))
    slow = result.slowdown().numpy()
    for p, prec in enumerate(result.precisions):
        ax = axes[p]
        if rnd_mean.shape[-1] and not np.isnan(rnd_mean[p]).all():
            lo = (rnd_mean[p] - rnd_std[p]).min(0)
            hi = (rnd_mean[p] + rnd_std[p]).max(0)
            ax.fill_between(scales, lo, hi, color="0.6", alpha=0.35, lw=0,
                            label="random control (range over layers, ±1 std)")
            ax.plot(scales, rnd_mean[p].mean(0), color="0.3", ls="--", lw=1.2,
                    label="random control, layer mean")
        for li, layer in enumerate(result.layers):
            ax.plot(scales, kl[p, li], color=cmap(norm(layer)), lw=1.1, marker=".", ms=3)
        title = prec if np.isnan(slow[p]) else f"{prec}  (forward x{slow[p]:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("scale s (multiples of the typical resid norm)")
        ax.grid(alpha=0.3)
        if p % cols == 0:
            ax.set_ylabel("KL(p_clean ‖ p_steered), nats" + (f" [{family}]" if family else ""))
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="upper center")
    bar = ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(bar, ax=list(axes[:n]), label="steered layer", shrink=0.9)
    fig.suptitle(f"Steering {result.meta.model}: {', '.join(result.families)} "
                 f"({result.meta.n_examples} examples)", fontsize=10)
    return fig
