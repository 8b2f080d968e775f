"""What an atlas sweeps: components, their hook points, and :class:`AtlasConfig`."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tlatlas.atlas.ablation import AblationKind, PositionPolicy, check_kind, check_policy
from tlatlas.errors import InvalidInputError
from tlatlas.hooks import hook_name

COMPONENTS = ("attn", "mlp", "block")
"""Layer-map components: attention output, MLP output, both (the block's whole write)."""
POS_COMPONENTS = ("resid", "block")
"""Position-map components: the residual stream after the block, and the block's write."""
COMPONENT_HOOKS = {
    "attn": ("hook_attn_out",),
    "mlp": ("hook_mlp_out",),
    "block": ("hook_attn_out", "hook_mlp_out"),
    "resid": ("hook_resid_post",),
}
Method = Literal["exact", "naive"]


@dataclass(frozen=True, kw_only=True)
class AtlasConfig:
    """How an atlas is computed."""

    ablation: AblationKind = "zero"
    """What replaces an ablated activation."""
    method: Method = "exact"
    """``exact`` (fast, reuses the clean run) or ``naive`` (one forward per intervention)."""
    positions: bool = False
    """Also compute the position-resolved maps (cost ~ layers x positions forwards)."""
    max_offset: int = 32
    """Position map width: distances 0..max_offset-1 before the scored position."""
    batch_size: int = 8
    """Examples per forward (batches never mix families). ``0``: chosen per family from
    ``memory_budget_bytes`` (:mod:`tlatlas.atlas.batching`); resample donors are drawn
    within a batch, so a resample atlas depends on the batch size."""
    position_chunk: int = 16
    """Exact position map: positions stacked into one forward (the keys/values of the
    positions before the chunk are reused from the clean run). With ``batch_size=0`` the
    largest chunk used; it shrinks when two examples do not fit the budget with it."""
    memory_budget_bytes: int | None = None
    """Memory a sweep with ``batch_size=0`` may use (None: the device's free memory times
    :data:`tlatlas.models.memory.SAFETY_FRACTION`, read when the sweep starts)."""
    layers: tuple[int, ...] | None = None
    """Layers to sweep (default all)."""
    resample_seed: int = 0
    """Seed of the donor draws of resample ablation."""
    positions_ablated: PositionPolicy = "all-but-bos"
    """Which positions a layer ablation touches: ``all``, ``all-but-bos`` or ``bos-only``
    (see :data:`tlatlas.atlas.ablation.POSITION_POLICIES`; the default is chosen by
    measurement, docs/atlas.md). Position maps ablate one position at a time regardless."""
    correct_only: bool = False
    """Score only examples whose clean top-1 is the answer (one extra clean forward
    each); per-family clean accuracy and the n used are recorded either way."""
    min_family_examples: int = 2
    """Families scored on fewer examples are flagged and left out of the hub."""
    components: tuple[str, ...] = COMPONENTS
    """Layer-map components to compute (of :data:`COMPONENTS`); the others are NaN and a
    hub of them is refused. ``("block",)`` costs a third of the layer map's forwards: for
    what reads only the block's whole write (the hub)."""

    def __post_init__(self) -> None:
        check_kind(self.ablation)
        check_policy(self.positions_ablated)
        if self.min_family_examples < 1:
            raise InvalidInputError("min_family_examples must be >= 1")
        if self.method not in ("exact", "naive"):
            raise InvalidInputError(f"unknown method {self.method!r}; choose exact or naive")
        if self.batch_size < 2 and self.batch_size != 0:
            raise InvalidInputError("batch_size must be >= 2 (resample needs a donor in the "
                                    "batch), or 0 to choose it from the memory budget")
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise InvalidInputError("memory_budget_bytes must be > 0 (None: the free memory)")
        if self.max_offset < 1:
            raise InvalidInputError("max_offset must be >= 1")
        if self.position_chunk < 1:
            raise InvalidInputError("position_chunk must be >= 1")
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components:
            raise InvalidInputError(f"components must be some of {', '.join(COMPONENTS)}, got "
                                    f"{self.components!r}")
        object.__setattr__(self, "components",
                           tuple(c for c in COMPONENTS if c in self.components))

    @property
    def auto_batch(self) -> bool:
        """Whether batch size and position chunk are chosen from the memory budget."""
        return self.batch_size == 0


def atlas_hook_names(layers: Sequence[int], positions: bool) -> tuple[list[str], list[str]]:
    """(hooks whose replacement values are needed, hooks the clean run must cache)."""
    ablated = ["hook_attn_out", "hook_mlp_out"] + (["hook_resid_post"] if positions else [])
    values = [hook_name(layer, h) for layer in layers for h in ablated]
    cached = values + [hook_name(layer, "hook_resid_pre") for layer in layers]
    return values, cached
