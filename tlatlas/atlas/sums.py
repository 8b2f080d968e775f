"""Mergeable sums of atlas effects per family, and the means read from them."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.atlas.config import COMPONENTS, POS_COMPONENTS
from tlatlas.errors import InvalidInputError
from tlatlas.metrics import METRICS
from tlatlas.models.forward import CleanRun
from tlatlas.tokens import ROLES, TokenBatch

EXAMPLE_KEYS = ("example.id", "example.family", "example.layer", "example.clean_correct",
                "example.clean_logp", "example.role", "example.role_verified")
"""Per-example tensors (the ``[..., example]`` axis), present in format-2 atlases
(``example.role_verified`` only in estimate-then-verify atlases with positions)."""
VERIFY_KEYS = ("layer.verified", "layer.estimate", "role.verified", "role.estimate",
               "offset.verified", "offset.estimate", "example.role_verified")
"""Tensors of an estimate-then-verify atlas (:mod:`tlatlas.atlas.verify`); absent in
exact and estimate-only atlases. Counts and sums: they add when shards merge."""


@dataclass(frozen=True, kw_only=True, eq=False)
class AtlasSums:
    """Mergeable sums of every effect per family, and every example's own effects.

    Sums and counts (fp64) give the means; the per-example rows (fp32) give intervals
    (:mod:`tlatlas.stats`). Shards and ranks merge exactly: sums add, rows concatenate,
    and rows are kept in a canonical order (family, then example id), so a merged atlas
    equals the unsharded one row for row.

    Bytes per example: ``4 * 3 * 3 * L`` (layer map) ``+ 4 * 3 * 2 * L * 3`` (role map, with
    positions) ``+ 24`` (id, family, clean correct and log-prob), for ``L`` layers: 1.1 kB
    (3.3 kB with positions) on a 30-layer model. Offset maps stay sums only.
    """

    families: tuple[str, ...]
    """Family of each index of the family axis."""
    layers: tuple[int, ...]
    """Layer of each index of the layer axis."""
    max_offset: int
    """Width of the offset axis of the position map."""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    """``layer.sum`` [metric component layer family], ``count`` [family],
    ``clean.correct`` / ``clean.logp`` [family]; with positions also
    ``role.sum`` [metric pcomp layer role family], ``role.count`` [role family],
    ``offset.sum`` [metric pcomp layer offset family], ``offset.count`` [offset family].
    Per example (absent in format-1 files): ``example.id`` [example] (int64,
    :attr:`Example.uid`), ``example.family`` [example] (int64 index into ``families``),
    ``example.layer`` [metric component layer example], ``example.clean_correct`` and
    ``example.clean_logp`` [example]; with positions ``example.role``
    [metric pcomp layer role example] (the mean over the example's positions of that
    role; NaN where it has none).
    Estimate-then-verify atlases (:data:`VERIFY_KEYS`) add ``layer.verified``
    [component layer family] (examples whose value is exact: an entry is exact where it
    equals ``count``), ``layer.estimate`` [metric component layer family] (the summed
    estimate of every entry), with positions ``role.verified`` [pcomp layer role family]
    / ``offset.verified`` [pcomp layer offset family] (exact cells, against
    ``role.count`` / ``offset.count``), ``role.estimate`` / ``offset.estimate`` (shaped as
    ``role.sum`` / ``offset.sum``) and ``example.role_verified`` [pcomp layer role example]
    (the share of the example's cells of that role that are exact)."""
    _rows: dict[str, list[Tensor]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def empty(cls, families: Sequence[str], layers: Sequence[int], *, positions: bool,
              max_offset: int) -> "AtlasSums":
        f, n_l, m = len(families), len(layers), len(METRICS)
        t = {
            "layer.sum": torch.zeros(m, len(COMPONENTS), n_l, f, dtype=torch.float64),
            "count": torch.zeros(f, dtype=torch.float64),
            "clean.correct": torch.zeros(f, dtype=torch.float64),
            "clean.logp": torch.zeros(f, dtype=torch.float64),
        }
        if positions:
            p = len(POS_COMPONENTS)
            t["role.sum"] = torch.zeros(m, p, n_l, len(ROLES), f, dtype=torch.float64)
            t["role.count"] = torch.zeros(len(ROLES), f, dtype=torch.float64)
            t["offset.sum"] = torch.zeros(m, p, n_l, max_offset, f, dtype=torch.float64)
            t["offset.count"] = torch.zeros(max_offset, f, dtype=torch.float64)
        return cls(families=tuple(families), layers=tuple(layers), max_offset=max_offset,
                   tensors=t)

    @property
    def has_positions(self) -> bool:
        return "role.sum" in self.tensors

    @property
    def has_examples(self) -> bool:
        """Whether per-example effects are stored (format 2; needed for intervals)."""
        return "example.layer" in self.tensors

    @property
    def has_verified(self) -> bool:
        """Whether entries are marked exact or estimated (an estimate-then-verify atlas)."""
        return "layer.verified" in self.tensors

    @property
    def n_examples(self) -> int:
        return int(self.tensors["count"].sum())

    def merged(self, other: "AtlasSums") -> "AtlasSums":
        """Sums added, per-example rows concatenated (canonical order)."""
        if (self.families, self.layers, self.max_offset) != (
                other.families, other.layers, other.max_offset) or \
                self.tensors.keys() != other.tensors.keys():
            raise InvalidInputError("cannot merge atlases with different families, layers or maps")
        t = {k: v + other.tensors[k] for k, v in self.tensors.items() if k not in EXAMPLE_KEYS}
        rows = {k: torch.cat([self.tensors[k], other.tensors[k]], dim=-1)
                for k in EXAMPLE_KEYS if k in self.tensors}
        return AtlasSums(families=self.families, layers=self.layers, max_offset=self.max_offset,
                         tensors={**t, **canonical_rows(rows)})

    def finished(self) -> "AtlasSums":
        """The sums with the rows :func:`accumulate` collected, as ``example.*`` tensors."""
        if not self._rows:
            return self
        rows = {k: torch.cat(v, dim=-1) for k, v in self._rows.items()}
        return AtlasSums(families=self.families, layers=self.layers, max_offset=self.max_offset,
                         tensors={**self.tensors, **canonical_rows(rows)})

    def example_effect(self, metric: str = "kl", component: str = "block"
                       ) -> Float[Tensor, "layer example"]:
        """Every example's effect per layer (fp32); an error for format-1 atlases."""
        if not self.has_examples:
            raise InvalidInputError(
                "this atlas keeps sums only (format 1, written before per-example effects): "
                "it has no intervals; recompute it to get them")
        m, c = METRICS.index(metric), COMPONENTS.index(component)
        return self.tensors["example.layer"][m, c]


def canonical_rows(rows: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-example tensors sorted by (family index, example id) along their last axis."""
    if not rows:
        return rows
    fam, uid = rows["example.family"], rows["example.id"]
    order = torch.argsort(uid, stable=True)
    order = order[torch.argsort(fam[order], stable=True)]
    return {k: v[..., order].contiguous() for k, v in rows.items()}


def accumulate(sums: AtlasSums, batch: TokenBatch, clean: CleanRun, layer_e: Tensor,
               pos_e: Tensor | None, uids: Sequence[int] | None = None) -> None:
    """Add one batch's per-example effects (``[metric component layer batch]``, and the
    position map ``[metric pcomp layer batch pos]`` with NaN where not scored) into ``sums``.

    With ``uids`` (each row's :attr:`~tlatlas.tasks.Example.uid`) the rows are also kept
    per example; :meth:`AtlasSums.finished` turns them into ``example.*`` tensors."""
    fam = torch.tensor([sums.families.index(f) for f in batch.families])
    onehot = torch.nn.functional.one_hot(fam, len(sums.families)).double()  # [batch family]
    t = sums.tensors
    t["layer.sum"] += torch.einsum("mclb,bf->mclf", layer_e.double(), onehot)
    t["count"] += onehot.sum(0)
    lp = clean.scored_logits.log_softmax(-1)
    tgt = batch.target.to(lp.device)
    correct = (lp.argmax(-1) == tgt).double().cpu()
    logp = lp.gather(-1, tgt[:, None])[:, 0].double().cpu()
    t["clean.correct"] += onehot.T @ correct
    t["clean.logp"] += onehot.T @ logp
    rows: dict[str, Tensor] = {}
    if uids is not None:
        rows = {"example.id": torch.tensor(list(uids), dtype=torch.long), "example.family": fam,
                "example.layer": layer_e.float().cpu(), "example.clean_correct": correct.float(),
                "example.clean_logp": logp.float()}
    if pos_e is not None:
        valid = ~torch.isnan(pos_e[0, 0, 0])  # [batch pos]
        e = torch.nan_to_num(pos_e.double())
        roles = torch.nn.functional.one_hot(batch.roles.clamp(min=0), len(ROLES)).double()
        roles = roles * valid[..., None]
        per_row = torch.einsum("mclbt,btr->mclrb", e, roles)  # [metric pcomp layer role batch]
        n_role = roles.sum(1).T  # [role batch]
        t["role.sum"] += torch.einsum("mclrb,bf->mclrf", per_row, onehot)
        t["role.count"] += n_role @ onehot
        offset = batch.scored_pos[:, None] - torch.arange(batch.tokens.shape[1])[None]
        in_range = valid & (offset < sums.max_offset)
        off = torch.nn.functional.one_hot(offset.clamp(0, sums.max_offset - 1),
                                          sums.max_offset).double()
        off = off * in_range[..., None]
        t["offset.sum"] += torch.einsum("mclbt,bto,bf->mclof", e, off, onehot)
        t["offset.count"] += torch.einsum("bto,bf->of", off, onehot)
        if uids is not None:
            rows["example.role"] = (per_row / n_role).float()  # NaN where a role is absent
    for k, v in rows.items():
        sums._rows.setdefault(k, []).append(v)


def mean_effect(sums: AtlasSums, metric: str = "kl", component: str = "block"
                ) -> Float[Tensor, "layer family"]:
    """Mean effect per layer and family (sum / count)."""
    m, c = METRICS.index(metric), COMPONENTS.index(component)
    return sums.tensors["layer.sum"][m, c] / sums.tensors["count"].clamp(min=1)


def role_effect(sums: AtlasSums, metric: str = "kl", component: str = "resid"
                ) -> Float[Tensor, "layer role"]:
    """Mean effect of ablating one position of each role, pooled over families."""
    m, c = METRICS.index(metric), POS_COMPONENTS.index(component)
    return sums.tensors["role.sum"][m, c].sum(-1) / sums.tensors["role.count"].sum(-1).clamp(min=1)


def offset_effect(sums: AtlasSums, metric: str = "kl", component: str = "resid"
                  ) -> Float[Tensor, "layer offset"]:
    """Mean effect by distance before the scored position (0 = the scored token itself)."""
    m, c = METRICS.index(metric), POS_COMPONENTS.index(component)
    return sums.tensors["offset.sum"][m, c].sum(-1) / sums.tensors["offset.count"].sum(-1).clamp(min=1)
