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


@dataclass(frozen=True, kw_only=True, eq=False)
class AtlasSums:
    """Mergeable sums of every effect, per family. All tensors live on the CPU in fp64."""

    families: tuple[str, ...]
    """Family of each index of the last axis."""
    layers: tuple[int, ...]
    """Layer of each index of the layer axis."""
    max_offset: int
    """Width of the offset axis of the position map."""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    """``layer.sum`` [metric component layer family], ``count`` [family],
    ``clean.correct`` / ``clean.logp`` [family]; with positions also
    ``role.sum`` [metric pcomp layer role family], ``role.count`` [role family],
    ``offset.sum`` [metric pcomp layer offset family], ``offset.count`` [offset family]."""

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

    def merged(self, other: "AtlasSums") -> "AtlasSums":
        if (self.families, self.layers, self.max_offset) != (
                other.families, other.layers, other.max_offset) or \
                self.tensors.keys() != other.tensors.keys():
            raise InvalidInputError("cannot merge atlases with different families, layers or maps")
        return AtlasSums(families=self.families, layers=self.layers, max_offset=self.max_offset,
                         tensors={k: v + other.tensors[k] for k, v in self.tensors.items()})



def accumulate(sums: AtlasSums, batch: TokenBatch, clean: CleanRun, layer_e: Tensor,
               pos_e: Tensor | None) -> None:
    """Add one batch's per-example effects (``[metric component layer batch]``, and the
    position map ``[metric pcomp layer batch pos]`` with NaN where not scored) into ``sums``."""
    fam = torch.tensor([sums.families.index(f) for f in batch.families])
    onehot = torch.nn.functional.one_hot(fam, len(sums.families)).double()  # [batch family]
    t = sums.tensors
    t["layer.sum"] += torch.einsum("mclb,bf->mclf", layer_e.double(), onehot)
    t["count"] += onehot.sum(0)
    lp = clean.scored_logits.log_softmax(-1)
    tgt = batch.target.to(lp.device)
    t["clean.correct"] += onehot.T @ (lp.argmax(-1) == tgt).double().cpu()
    t["clean.logp"] += onehot.T @ lp.gather(-1, tgt[:, None])[:, 0].double().cpu()
    if pos_e is None:
        return
    valid = ~torch.isnan(pos_e[0, 0, 0])  # [batch pos]
    e = torch.nan_to_num(pos_e.double())
    roles = torch.nn.functional.one_hot(batch.roles.clamp(min=0), len(ROLES)).double()
    roles = roles * valid[..., None]
    t["role.sum"] += torch.einsum("mclbt,btr,bf->mclrf", e, roles, onehot)
    t["role.count"] += torch.einsum("btr,bf->rf", roles, onehot)
    offset = batch.scored_pos[:, None] - torch.arange(batch.tokens.shape[1])[None]
    in_range = valid & (offset < sums.max_offset)
    off = torch.nn.functional.one_hot(offset.clamp(0, sums.max_offset - 1), sums.max_offset).double()
    off = off * in_range[..., None]
    t["offset.sum"] += torch.einsum("mclbt,bto,bf->mclof", e, off, onehot)
    t["offset.count"] += torch.einsum("bto,bf->of", off, onehot)



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
