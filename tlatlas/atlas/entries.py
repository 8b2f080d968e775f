"""Exact effects of chosen atlas entries: the exact fast path, restricted to what
estimate-then-verify (:mod:`tlatlas.atlas.verify`) asks for.

- :func:`layer_entry_effects`: chosen (component, layer) entries of the layer map, per
  example; as :func:`~tlatlas.atlas.sweep.layer_effects` (a forward from the layer, the
  components stacked along the batch axis), but entries of nearby layers share a forward
  that starts at their lowest layer (:func:`entry_forwards`).
- :func:`position_cell_effects`: single cells (component, layer, example, position) of
  the position map; as :func:`~tlatlas.atlas.sweep.position_effects` (the clean keys and
  values of earlier positions as the prefix), but cells of several layers share a forward
  that starts at their lowest layer, and a group of cells starts at its first position.

Both equal the exact path to fp32 rounding (tested, also on a model with mixed layer
types).
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas.atlas.ablation import ablation_mask, write_hook
from tlatlas.atlas.config import COMPONENT_HOOKS, COMPONENTS, POS_COMPONENTS
from tlatlas.atlas.sweep import AblationBatch
from tlatlas.hooks import hook_name
from tlatlas.metrics import METRICS, effects, stack_effects
from tlatlas.models.forward import prefix_cache, run_from_layer

_WRITES = ("hook_attn_out", "hook_mlp_out")


def entry_forwards(entry_layers: Sequence[int], rows_each: int, n_layers: int, *,
                   max_rows: int, waste: float = 0.25) -> list[list[int]]:
    """Which layer-map entries share a forward: indices into ``entry_layers``, in groups.

    Entries are taken in layer order; a group starts at its lowest layer ``L0`` and takes
    the next entry (at layer ``L``) while the group stays within ``max_rows`` rows
    (``rows_each`` per entry) and the layers that entry runs clean before its own,
    ``L - L0``, are at most ``waste`` of the layers it runs ablated, ``n_layers - L``.
    Entries of one layer always share a forward up to ``max_rows``."""
    order = sorted(range(len(entry_layers)), key=lambda i: entry_layers[i])
    groups: list[list[int]] = []
    for i in order:
        cur = groups[-1] if groups else None
        layer = entry_layers[i]
        if cur is not None and (len(cur) + 1) * rows_each <= max_rows and \
                layer - entry_layers[cur[0]] <= waste * (n_layers - layer):
            cur.append(i)
        else:
            groups.append([i])
    return groups


def layer_entry_effects(ctx: AblationBatch, entries: Sequence[tuple[int, int]], *,
                        max_rows: int = 64, waste: float = 0.25
                        ) -> Float[Tensor, "metric entry batch"]:
    """Exact effect of ablating each ``(component index, layer)`` entry, per example.

    Entries are stacked along the batch axis into forwards (:func:`entry_forwards`): each
    forward starts at its group's lowest layer from the clean residual there, and each
    entry's rows write the component's replacement at the entry's own layer (before it
    they recompute the clean run). A forward holds at least what an exact-path forward
    holds (every component of a layer: ``3 x batch`` rows), at most ``max(max_rows, 3 x
    batch)``; fewer, fuller forwards than one per layer when few entries of each layer are
    asked for. ``waste`` as in :func:`entry_forwards`."""
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    b = len(batch)
    mask = ablation_mask(batch.roles, ctx.positions_ablated).to(model.device)
    out = torch.zeros(len(METRICS), len(entries), b)
    cap = max(max_rows, len(COMPONENTS) * b)
    for group in entry_forwards([layer for _, layer in entries], b, model.n_layers,
                                max_rows=cap, waste=waste):
        n_e = len(group)
        members = [entries[i] for i in group]
        start = min(layer for _, layer in members)
        hooks = []
        for layer in sorted({layer for _, layer in members}):
            for h in _WRITES:
                on = torch.tensor([at == layer and h in COMPONENT_HOOKS[COMPONENTS[c]]
                                   for c, at in members])
                if not on.any():
                    continue
                rows = on.repeat_interleave(b).to(model.device)
                value = ctx.values[hook_name(layer, h)].repeat(n_e, 1, 1)
                hooks.append((hook_name(layer, h),
                              write_hook(value, mask.repeat(n_e, 1) & rows[:, None])))
        resid = clean.acts[hook_name(start, "hook_resid_pre")].repeat(n_e, 1, 1)
        logits = run_from_layer(model, resid, start, batch.scored_pos.repeat(n_e),
                                fwd_hooks=hooks)
        e = effects(clean.scored_logits.repeat(n_e, 1), logits, batch.target.repeat(n_e))
        out[:, group] = stack_effects(e).view(len(METRICS), n_e, b).cpu()
    return out


def position_cell_effects(ctx: AblationBatch, cells: Int[Tensor, "cell 4"], *, chunk: int,
                          max_rows: int = 64) -> Float[Tensor, "metric cell"]:
    """Exact effect of ablating single cells ``(pcomp index, layer, row, position)``.

    Cells are grouped by component and position chunk ``[a, a + chunk)`` (the clean
    keys/values of positions ``< a`` are the prefix, as in the exact position map), sorted
    by layer and cut into forwards of at most ``max_rows`` rows; each forward starts at
    its lowest layer and writes each row's replacement at its own layer and position.
    """
    model, batch, clean = ctx.model, ctx.batch, ctx.clean
    dev = model.device
    width = batch.tokens.shape[1]
    out = torch.full((len(METRICS), cells.shape[0]), float("nan"))
    if cells.shape[0] == 0:
        return out
    key = cells[:, 0] * (width // chunk + 1) + cells[:, 3] // chunk
    for k in torch.unique(key).tolist():
        idx = torch.nonzero(key == k)[:, 0]
        idx = idx[torch.argsort(cells[idx, 1], stable=True)]
        for part in idx.split(max_rows):
            pc, lay, rows, pos = (cells[part, j] for j in range(4))
            comp = POS_COMPONENTS[int(pc[0])]
            a, start = int(pos.min()), int(lay.min())
            n = part.numel()
            rel = (pos - a).to(dev)
            rows_d = rows.to(dev)
            hooks = []
            for layer in torch.unique(lay).tolist():
                mask = torch.zeros(n, width - a, dtype=torch.bool, device=dev)
                sel = torch.nonzero(lay == layer)[:, 0].to(dev)
                mask[sel, rel[sel]] = True
                for h in COMPONENT_HOOKS[comp]:
                    name = hook_name(layer, h)
                    hooks.append((name, write_hook(ctx.values[name][rows_d, a:], mask)))
            resid = clean.acts[hook_name(start, "hook_resid_pre")][rows_d, a:]
            prefix = prefix_cache(model, clean.kv, rows_d, a) if a > 0 else None
            logits = run_from_layer(model, resid, start, batch.scored_pos.to(dev)[rows_d] - a,
                                    prefix=prefix, prefix_len=a, fwd_hooks=hooks)
            e = effects(clean.scored_logits[rows_d], logits, batch.target[rows])
            out[:, part] = stack_effects(e).cpu()
    return out


__all__ = ["layer_entry_effects", "position_cell_effects"]
