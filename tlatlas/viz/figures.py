"""Matplotlib figures of atlases and studies. Each function returns a ``Figure``.

- :func:`layer_position_heatmap`: effect by layer (rows) and position (columns);
  :func:`offset_heatmap` (atlas, by distance before the scored token) and
  :func:`prompt_heatmap` (one prompt of a :class:`~tlatlas.posmap.PositionMap`) build on it;
- :func:`layer_family_heatmap`: layer x family, the hub row outlined and each family's
  own argmax dotted;
- :func:`hub_per_seed`: the hub layer of each seed, its mode and std;
- :func:`layer_profile`: each layer's effect with its 95% band, and P(hub = L);
- :func:`lora_pareto`: held-out loss against trainable parameters, one marker per
  adapter strategy (or module set), the non-dominated ones joined;
- :func:`layer_skip_figure`: top-5 overlap and KL of layer-skip sets before and after
  the recovery fine-tune.

Steering figures live in :mod:`tlatlas.viz.steering_plots`. Figures are built with the
object API on the Agg backend (no display needed) and never shown here.
"""

import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence

import matplotlib

# Figures use the object API (``Figure``), never a GUI. Select Agg unless a backend was
# chosen already: Jupyter's inline backend (MPLBACKEND, or pyplot imported by
# ``%matplotlib inline``) must keep showing these figures.
if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from tlatlas.atlas.hubs import HubEvidence, HubSummary, SeedSpread, hub_summary
from tlatlas.atlas.posmap import PositionMap
from tlatlas.atlas.sums import AtlasSums, mean_effect, offset_effect
from tlatlas.errors import InvalidInputError

UNITS = {"kl": "KL (nats)", "dlogp": "Δlogp (nats)", "acc_drop": "accuracy drop"}
CMAP = "viridis"


def _unit(metric: str) -> str:
    return UNITS.get(metric, metric)


def _heatmap(fig: Figure, ax, data: np.ndarray, *, label: str):
    finite = data[np.isfinite(data)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", origin="upper", cmap=CMAP,
                   vmin=min(lo, 0.0), vmax=hi if hi > min(lo, 0.0) else min(lo, 0.0) + 1e-9,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label=label)
    return im


def _layer_ticks(ax, layers: Sequence[int]) -> None:
    step = max(1, math.ceil(len(layers) / 16))
    idx = list(range(0, len(layers), step))
    ax.set_yticks(idx, [str(layers[i]) for i in idx])
    ax.set_ylabel("layer")


def layer_position_heatmap(effect, *, layers: Sequence[int], labels: Sequence[str],
                           title: str, metric: str = "kl", xlabel: str = "position") -> Figure:
    """Heatmap of ``effect`` [layer pos] (NaN cells blank), one column per label."""
    data = np.asarray(effect, dtype=float)
    if data.shape != (len(layers), len(labels)):
        raise InvalidInputError(f"effect has shape {data.shape}, expected "
                         f"({len(layers)} layers, {len(labels)} positions)")
    fig = Figure(figsize=(max(6.0, 0.32 * len(labels) + 2.5), max(3.0, 0.22 * len(layers) + 1.5)),
                 layout="constrained")
    ax = fig.add_subplot()
    _heatmap(fig, ax, data, label=_unit(metric))
    ax.set_xticks(range(len(labels)), list(labels), rotation=90, fontsize=8)
    ax.set_xlabel(xlabel)
    _layer_ticks(ax, layers)
    ax.set_title(title)
    return fig


def offset_heatmap(sums: AtlasSums, *, metric: str = "kl", component: str = "resid") -> Figure:
    """Atlas position map by distance before the scored token (0 = the scored token)."""
    if not sums.has_positions:
        raise InvalidInputError("this atlas has no position maps (compute it with --positions)")
    eff = offset_effect(sums, metric, component).numpy().copy()  # [layer offset]
    counts = sums.tensors["offset.count"].sum(-1).numpy()
    eff[:, counts == 0] = np.nan  # no prompt reaches that far back
    n_off = int((counts > 0).sum()) or eff.shape[1]
    eff = eff[:, :n_off][:, ::-1]  # oldest position on the left, scored token on the right
    labels = [f"-{o}" if o else "scored" for o in range(n_off)][::-1]
    return layer_position_heatmap(
        eff, layers=sums.layers, labels=labels, metric=metric,
        xlabel="position (tokens before the scored token)",
        title=f"{component} ablated at one position: mean {metric} by layer and offset")


def prompt_heatmap(pmap: PositionMap, prompt: int = 0) -> Figure:
    """One prompt of a position map: its tokens along x."""
    tokens = [repr(t)[1:-1] for t in pmap.tokens[prompt]]
    return layer_position_heatmap(
        pmap.prompt_effect(prompt).numpy(), layers=pmap.layers, labels=tokens,
        metric=pmap.metric, xlabel="token",
        title=f"{pmap.families[prompt]}: {pmap.component} {pmap.ablation}-ablated per token")


def layer_family_heatmap(sums: AtlasSums, *, metric: str = "kl", component: str = "block",
                         hub: HubSummary | None = None) -> Figure:
    """Mean effect per layer and family; the hub row outlined, each family's argmax dotted."""
    hub = hub or hub_summary(sums, metric=metric, component=component)
    data = mean_effect(sums, metric, component).numpy()  # [layer family]
    fams = list(sums.families)
    fig = Figure(figsize=(max(6.0, 0.55 * len(fams) + 2.5), max(3.5, 0.22 * len(sums.layers) + 2)),
                 layout="constrained")
    ax = fig.add_subplot()
    _heatmap(fig, ax, data, label=_unit(metric))
    ax.set_xticks(range(len(fams)), fams, rotation=45, ha="right")
    ax.set_xlabel("family")
    _layer_ticks(ax, sums.layers)
    h = sums.layers.index(hub.hub_layer)
    ax.add_patch(Rectangle((-0.5, h - 0.5), len(fams), 1, fill=False, edgecolor="red",
                           linewidth=2.0, label=f"hub L{hub.hub_layer}"))
    ax.scatter([fams.index(f) for f in hub.family_argmax],
               [sums.layers.index(layer) for layer in hub.family_argmax.values()],
               marker="o", s=18, color="white", edgecolors="black", linewidths=0.6,
               label="family argmax", zorder=3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(f"{component} ablation, mean {metric}: hub L{hub.hub_layer}, "
                 f"agreement {hub.family_agreement:.0%}")
    return fig


def hub_per_seed(spread: SeedSpread, *, n_layers: int | None = None) -> Figure:
    """Hub layer of each seed (a seed resamples the suite), with the mode and std."""
    fig = Figure(figsize=(max(4.0, 0.6 * len(spread.seeds) + 2.5), 3.5), layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(spread.seeds)))
    ax.plot(x, spread.hubs, "o", markersize=9, color="tab:blue", label="hub")
    ax.axhline(spread.mode, color="tab:red", linestyle="--", label=f"mode L{spread.mode}")
    ax.set_xticks(x, [str(s) for s in spread.seeds])
    ax.set_xlabel("suite seed")
    ax.set_ylabel("hub layer")
    top = (n_layers - 1) if n_layers else max(spread.hubs) + 1
    ax.set_ylim(-0.5, top + 0.5)
    ax.set_xlim(-0.5, len(x) - 0.5)
    for xi, h, a in zip(x, spread.hubs, spread.agreement, strict=True):
        ax.annotate(f"{a:.0%}", (xi, h), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8)
    ax.legend(loc="best", fontsize=8)
    std = "no spread from one seed" if spread.std is None else f"std {spread.std:.2f}"
    ax.set_title(f"hub per seed, {std}\n(labels: family agreement)", fontsize=10)
    return fig


def layer_profile(evidence: HubEvidence) -> Figure:
    """The family-averaged effect of every layer with its 95% band (top), and P(hub = L)
    for every layer (bottom), from a bootstrap over the atlas's examples."""
    fig = Figure(figsize=(max(5.0, 0.22 * len(evidence.layers) + 3.0), 5.0),
                 layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    x = np.array(evidence.layers)
    est = np.array(evidence.layer_estimate)
    top.fill_between(x, evidence.layer_ci_low, evidence.layer_ci_high, color="tab:blue",
                     alpha=0.25, linewidth=0, label="95% CI")
    top.plot(x, est, "o-", color="tab:blue", markersize=3, label="mean over families")
    top.axvline(evidence.hub_layer, color="tab:red", linestyle="--", linewidth=1,
                label=f"hub L{evidence.hub_layer}")
    top.set_ylabel(_unit(evidence.metric))
    top.legend(loc="best", fontsize=8)
    m = evidence.hub_margin
    top.set_title(f"{evidence.component} ablation, n = {evidence.n_examples}: hub "
                  f"L{evidence.hub_layer}, margin over L{evidence.runner_up} {m.estimate:.3g} "
                  f"[{m.ci_low:.3g}, {m.ci_high:.3g}]", fontsize=10)
    bottom.bar(x, evidence.hub_probability, color="tab:gray", width=0.8)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("P(hub = L)")
    bottom.set_xlabel("layer")
    return fig


def _pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of non-dominated points (fewer params and lower loss), by params."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def lora_pareto(rows: Sequence[Mapping], *, key: str | None = None,
                loss: str = "heldout_loss_after", title: str | None = None) -> Figure:
    """Held-out loss against trainable parameters: one marker per strategy.

    Each marker is the mean over that strategy's rows (families x seeds), with the
    standard deviation as error bars; faint dots are single runs; the line joins the
    non-dominated strategies. ``key`` defaults to ``strategy`` or ``module_set``.
    """
    if not rows:
        raise InvalidInputError("no study rows to plot")
    key = key or ("strategy" if "strategy" in rows[0] else "module_set")
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    markers = "osD^vP*Xhp<>"
    names, points = list(groups), []
    for i, name in enumerate(names):
        g = groups[name]
        params = [float(r["trainable_params"]) for r in g]
        losses = [float(r[loss]) for r in g]
        p, m = statistics.fmean(params), statistics.fmean(losses)
        sd = statistics.pstdev(losses) if len(losses) > 1 else 0.0
        points.append((p, m))
        ax.scatter(params, losses, marker=markers[i % len(markers)], s=12, alpha=0.25,
                   color=f"C{i}")
        ax.errorbar([p], [m], yerr=[sd], marker=markers[i % len(markers)], markersize=9,
                    color=f"C{i}", capsize=3, linestyle="none", label=f"{name} (n={len(g)})")
    front = _pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="grey",
            linestyle=":", zorder=0, label="Pareto front")
    before = [float(r["heldout_loss_before"]) for r in rows if r.get("heldout_loss_before") is not None]
    if before:
        ax.axhline(statistics.fmean(before), color="black", linestyle="--", linewidth=1,
                   label="no adapter")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(loss.replace("_", " ") + " (nats/token)")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"LoRA: held-out loss vs trainable parameters, by {key}")
    return fig


def layer_skip_figure(rows: Sequence[Mapping]) -> Figure:
    """Top-5 overlap (left) and KL (right) of each skip set, before and after recovery.

    Rows are :func:`bridges.skip.layer_skip_study` rows; rows of the same skip set and
    size are averaged (over seeds).
    """
    if not rows:
        raise InvalidInputError("no layer-skip rows to plot")
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(f"{r['skip_set']} k={r['k']}", []).append(r)
    names = list(groups)
    fig = Figure(figsize=(max(6.0, 1.6 * len(names) + 3), 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    x = np.arange(len(names))
    w = 0.38
    for ax, measure, label in ((axes[0], "top5_overlap", "top-5 overlap with full model"),
                               (axes[1], "kl", "KL(full ‖ skipped) (nats)")):
        for j, (stage, color) in enumerate((("before", "tab:red"), ("after", "tab:green"))):
            vals = []
            for n in names:
                got = [float(r[stage][measure]) for r in groups[n] if r.get(stage)]
                vals.append(statistics.fmean(got) if got else np.nan)
            ax.bar(x + (j - 0.5) * w, vals, w, color=color,
                   label=f"{stage} recovery" if stage == "after" else "skipped, no recovery")
        ax.set_xticks(x, names)
        ax.set_ylabel(label)
        if measure == "top5_overlap":
            ax.set_ylim(0, 1.05)
        else:
            ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("layer skip: before and after the recovery fine-tune")
    return fig


__all__ = ["layer_position_heatmap", "offset_heatmap", "prompt_heatmap", "layer_family_heatmap",
           "hub_per_seed", "lora_pareto", "layer_skip_figure"]
