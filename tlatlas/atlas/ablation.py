"""Zero, mean and resample ablation as pure tensor functions and hook functions.

A hook here is a TransformerLens forward hook ``fn(activation, hook) -> activation``
on any hook point (``blocks.{L}.hook_attn_out`` and friends). Which positions are
ablated is a boolean mask built by :func:`position_mask`; what replaces them is
:func:`replacement`:

- ``zero``: 0.
- ``mean``: the mean of the same activation over a *reference* set of examples, taken
  per position role (BOS / body / last), never over the batch being scored.
- ``resample``: the same activation in another example of the same family, aligned by
  role (BOS to BOS, last to last, body positions by distance from the last token).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.errors import InvalidInputError, OutOfRangeError
from tlatlas.hooks import HookFn
from tlatlas.tokens import ROLE_BODY, ROLE_BOS, ROLE_LAST, ROLE_PAD, ROLES

AblationKind = Literal["zero", "mean", "resample"]
ABLATION_KINDS: tuple[AblationKind, ...] = ("zero", "mean", "resample")
Positions = Literal["all", "bos", "body", "last"] | int


def check_kind(kind: str) -> AblationKind:
    if kind not in ABLATION_KINDS:
        raise InvalidInputError(f"unknown ablation {kind!r}; choose one of {', '.join(ABLATION_KINDS)}")
    return kind  # type: ignore[return-value]


PositionPolicy = Literal["all", "all-but-bos", "bos-only"]
POSITION_POLICIES: tuple[PositionPolicy, ...] = ("all", "all-but-bos", "bos-only")
"""Which positions a layer ablation touches. BOS is an attention sink whose activation is
the same in every prompt: zero-ablating it measures the sink, and mean or resample
ablation there change nothing. ``bos-only`` is that condition on its own."""


def check_policy(policy: str) -> PositionPolicy:
    if policy not in POSITION_POLICIES:
        raise InvalidInputError(f"unknown position policy {policy!r}; choose one of "
                                f"{', '.join(POSITION_POLICIES)}")
    return policy  # type: ignore[return-value]


def ablation_mask(roles: Int[Tensor, "batch pos"], policy: PositionPolicy
                  ) -> Bool[Tensor, "batch pos"]:
    """The positions a layer ablation under ``policy`` writes to (never padding)."""
    real = roles != ROLE_PAD
    if check_policy(policy) == "all":
        return real
    if policy == "bos-only":
        return roles == ROLE_BOS
    return real & (roles != ROLE_BOS)


def position_mask(roles: Int[Tensor, "batch pos"], positions: Positions) -> Bool[Tensor, "batch pos"]:
    """Which positions to ablate: all real tokens, one role, or one absolute index."""
    real = roles != ROLE_PAD
    if positions == "all":
        return real
    if isinstance(positions, str):
        if positions not in ROLES:
            raise InvalidInputError(f"unknown position role {positions!r}; choose all, {', '.join(ROLES)}")
        return roles == ROLES.index(positions)
    if not 0 <= positions < roles.shape[1]:
        raise OutOfRangeError(f"position {positions} out of range for a batch of width {roles.shape[1]}")
    mask = torch.zeros_like(real)
    mask[:, positions] = True
    return mask & real


# --------------------------------------------------------------------------- mean ablation


@dataclass(frozen=True, kw_only=True, eq=False)
class RoleStats:
    """Sums and counts of one activation per position role, over a reference set.

    Kept as sums and counts (not means) so shards and ranks combine exactly.
    """

    sums: Float[Tensor, "role d_model"]
    """Sum of the activation over reference positions of each role (fp64)."""
    counts: Int[Tensor, " role"]
    """Number of reference positions of each role."""

    @classmethod
    def zeros(cls, d_model: int) -> "RoleStats":
        return cls(
            sums=torch.zeros(len(ROLES), d_model, dtype=torch.float64),
            counts=torch.zeros(len(ROLES), dtype=torch.long),
        )

    def add(self, act: Float[Tensor, "batch pos d_model"], roles: Int[Tensor, "batch pos"]) -> None:
        """Accumulate a batch in place."""
        roles = roles.to(act.device)
        for r in range(len(ROLES)):
            sel = roles == r
            self.sums[r] += act[sel].double().sum(0).cpu()
            self.counts[r] += int(sel.sum())

    def merged(self, other: "RoleStats") -> "RoleStats":
        return RoleStats(sums=self.sums + other.sums, counts=self.counts + other.counts)

    def means(self) -> Float[Tensor, "role d_model"]:
        """Per-role means; a role never seen (e.g. no BOS) falls back to the overall mean."""
        total = self.sums.sum(0) / self.counts.sum().clamp(min=1)
        out = self.sums / self.counts.clamp(min=1)[:, None]
        return torch.where((self.counts > 0)[:, None], out, total)


def role_mean_replacement(
    means: Float[Tensor, "role d_model"], roles: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """The reference mean of each position's role (pads get the body mean; never read)."""
    idx = roles.clamp(min=0)
    return means.to(roles.device)[idx]


# --------------------------------------------------------------------------- resample


def resample_donors(families: tuple[str, ...], generator: torch.Generator) -> Int[Tensor, " batch"]:
    """For each row, another row of the same family (a derangement within each family).

    Raises ValueError when a family has a single row in the batch: it has no donor.
    """
    donors = torch.arange(len(families))
    by_family: dict[str, list[int]] = {}
    for row, fam in enumerate(families):
        by_family.setdefault(fam, []).append(row)
    for fam, rows in by_family.items():
        if len(rows) < 2:
            raise InvalidInputError(
                f"resample ablation needs >= 2 examples of family {fam!r} per batch; "
                "group batches by family"
            )
        # a random cyclic shift of a random order: every row gets a different row
        perm = torch.randperm(len(rows), generator=generator)
        shift = int(torch.randint(1, len(rows), (1,), generator=generator))
        ordered = [rows[i] for i in perm.tolist()]
        for i, row in enumerate(ordered):
            donors[row] = ordered[(i + shift) % len(rows)]
    return donors


def aligned_donor_positions(
    roles: Int[Tensor, "batch pos"], donors: Int[Tensor, " batch"]
) -> Int[Tensor, "batch pos"]:
    """For each (row, pos), the donor row's position with the same role.

    BOS maps to BOS, last to last, and a body position at distance k before the last
    token maps to the donor's body position at distance k (clipped into its body).
    """
    width = roles.shape[1]
    last = (roles == ROLE_LAST).float().argmax(1)  # [batch]
    has_bos = (roles[:, 0] == ROLE_BOS)
    first_body = has_bos.long()
    pos = torch.arange(width, device=roles.device).expand_as(roles)
    d_last = last[donors][:, None]
    d_first = first_body[donors][:, None]
    offset = last[:, None] - pos
    body_pos = (d_last - offset).clamp(min=0)
    body_pos = torch.maximum(torch.minimum(body_pos, d_last - 1), d_first)
    out = torch.where(roles == ROLE_BODY, body_pos, pos)
    out = torch.where(roles == ROLE_LAST, d_last.expand_as(roles), out)
    out = torch.where(roles == ROLE_BOS, torch.zeros_like(out), out)
    return out.clamp(min=0, max=width - 1)


def resample_replacement(
    act: Float[Tensor, "batch pos d_model"],
    roles: Int[Tensor, "batch pos"],
    donors: Int[Tensor, " batch"],
) -> Float[Tensor, "batch pos d_model"]:
    """Each row's activation taken from its donor row at role-aligned positions."""
    donors = donors.to(act.device)
    src_pos = aligned_donor_positions(roles.to(act.device), donors)
    return act[donors[:, None], src_pos]


# --------------------------------------------------------------------------- hooks


def ablate_where(
    act: Float[Tensor, "batch pos d_model"],
    value: Float[Tensor, "batch pos d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_model"]:
    """``act`` with ``value`` written at masked positions (pure)."""
    return torch.where(mask.to(act.device)[..., None], value.to(act.dtype), act)


def replacement(
    kind: AblationKind,
    act: Float[Tensor, "batch pos d_model"],
    roles: Int[Tensor, "batch pos"],
    *,
    means: Float[Tensor, "role d_model"] | None = None,
    donor_act: Float[Tensor, "batch pos d_model"] | None = None,
    donors: Int[Tensor, " batch"] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """What an ablation of ``kind`` writes in place of ``act``.

    ``donor_act`` is the clean activation the donors are read from (defaults to ``act``
    itself, which is right when the hook sees the clean activation).
    """
    if kind == "zero":
        return torch.zeros_like(act)
    if kind == "mean":
        if means is None:
            raise InvalidInputError("mean ablation needs reference means (compute them on a reference set)")
        return role_mean_replacement(means, roles.to(act.device)).to(act.dtype)
    if kind == "resample":
        if donors is None:
            raise InvalidInputError("resample ablation needs donor rows")
        return resample_replacement(act if donor_act is None else donor_act, roles, donors)
    raise InvalidInputError(f"unknown ablation {kind!r}")


def ablation_hook(
    kind: AblationKind,
    mask: Bool[Tensor, "batch pos"],
    roles: Int[Tensor, "batch pos"],
    *,
    means: Float[Tensor, "role d_model"] | None = None,
    donors: Int[Tensor, " batch"] | None = None,
    donor_act: Float[Tensor, "batch pos d_model"] | None = None,
) -> HookFn:
    """A TransformerLens forward hook that ablates the masked positions."""
    check_kind(kind)

    def hook(act: Tensor, hook: object = None) -> Tensor:
        value = replacement(kind, act, roles, means=means, donor_act=donor_act, donors=donors)
        return ablate_where(act, value, mask)

    return hook


def write_hook(
    value: Float[Tensor, "batch pos d_model"], mask: Bool[Tensor, "batch pos"]
) -> HookFn:
    """A hook that writes a precomputed ``value`` at masked positions.

    Every ablation's replacement (zero, a reference mean, a donor's *clean* activation)
    is independent of the intervened run, so it can be computed once from the clean
    run and shared by the naive and the fast path.
    """

    def hook(act: Tensor, hook: object = None) -> Tensor:
        return ablate_where(act, value, mask)

    return hook
