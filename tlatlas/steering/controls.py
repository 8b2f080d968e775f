"""The two controls a steering vector is compared with (issue 15, item 3).

- **Random control** (:func:`random_directions`): isotropic Gaussian directions,
  unit-normalised, added with the vector's norm (s · n_L). It controls for the norm of
  the intervention, not for where the data lies: a difference of means tends to point
  along the residual stream's high-variance directions, which move the output more than
  an average direction does.
- **Partition control** (:func:`partition_membership`, :func:`partition_directions`): the
  difference of means between two random halves of the *same* training prompts of a
  family, unit-normalised and added with the vector's norm. It is what the
  difference-of-means estimator returns when there is no concept difference at all, so
  it has the data's own variance structure (and its sampling noise). A vector that is
  no more specific than its partition control is not evidence of a family direction.

Both controls are the same for every precision row (seeded; the partition uses the
full-precision model's activations, like the vector).
"""

import random
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.errors import InvalidInputError


def unit(v: Float[Tensor, "*any d_model"]) -> Float[Tensor, "*any d_model"]:
    """``v / ‖v‖`` along the last axis (a zero vector stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def random_directions(d_model: int, n_layers: int, draws: int, *, seed: int = 0
                      ) -> Float[Tensor, "draw layer d_model"]:
    """Unit random directions (isotropic Gaussian, normalised) for the random control."""
    gen = torch.Generator().manual_seed(seed)
    return unit(torch.randn(draws, n_layers, d_model, generator=gen))


def partition_group(draw: int, family: str, half: str) -> str:
    """Name of one half of one partition draw of a family in :class:`SteeringSums` groups."""
    return f"partition/{draw}/{family}/{half}"


def partition_membership(
    families: Sequence[str],
    uids: Sequence[int],
    names: Sequence[str],
    draws: int,
    *,
    seed: int = 0,
) -> tuple[tuple[str, ...], Float[Tensor, "prompt group"]]:
    """Group names and a 0/1 membership matrix: for each draw and family in ``names``, the
    family's prompts split into halves ``a`` and ``b`` at random.

    Prompt ``i`` has family ``families[i]`` and stable id ``uids[i]``. Each draw shuffles
    the family's prompts (sorted by uid, so the split does not depend on input order) with
    ``random.Random(f"{seed}:partition:{draw}:{family}")`` and puts the first
    ``n // 2`` in ``a``, the rest in ``b``. Every family needs at least two prompts.
    """
    if len(families) != len(uids):
        raise InvalidInputError(f"{len(families)} families for {len(uids)} prompt ids")
    if draws < 0:
        raise InvalidInputError(f"partition draws must be >= 0, got {draws}")
    members: dict[str, list[int]] = {f: [] for f in names}
    for i, f in enumerate(families):
        if f in members:
            members[f].append(i)
    short = {f: len(rows) for f, rows in members.items() if len(rows) < 2}
    if draws and short:
        raise InvalidInputError(
            f"the partition control splits each family's training prompts in two halves and "
            f"needs at least 2 per family; too few in {short} (use more examples per family "
            "or partition_draws=0)")
    groups = tuple(partition_group(d, f, h) for d in range(draws) for f in names for h in "ab")
    member = torch.zeros(len(families), len(groups), dtype=torch.float64)
    for d in range(draws):
        for f in names:
            rows = sorted(members[f], key=lambda i: (uids[i], i))
            random.Random(f"{seed}:partition:{d}:{f}").shuffle(rows)
            half = len(rows) // 2
            for j, i in enumerate(rows):
                member[i, groups.index(partition_group(d, f, "a" if j < half else "b"))] = 1.0
    return groups, member


def partition_directions(
    means: Float[Tensor, "layer group d_model"],
    groups: Sequence[str],
    names: Sequence[str],
    draws: int,
) -> Float[Tensor, "draw concept layer d_model"]:
    """mean(half a) - mean(half b) of each draw and family, unit-normalised (fp32)."""
    out = torch.zeros(draws, len(names), means.shape[0], means.shape[-1], dtype=torch.float64)
    for d in range(draws):
        for c, f in enumerate(names):
            a = means[:, list(groups).index(partition_group(d, f, "a"))]
            b = means[:, list(groups).index(partition_group(d, f, "b"))]
            out[d, c] = a - b
    return unit(out).float().contiguous()


__all__ = ["random_directions", "partition_membership", "partition_directions",
           "partition_group", "unit"]
