"""Statistics over effects: ranks and rank correlation (the home of bootstrap intervals,
P(hub) and paired comparisons)."""

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.errors import InvalidInputError


def average_ranks(x: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    return (ends - (counts.double() - 1) / 2)[inverse]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two same-shape tensors, flattened.

    Pairs where either value is NaN (or infinite) are ignored; ties get average ranks.
    Returns NaN when either side is constant over the kept pairs.

    Raises:
        ValueError: the shapes differ or fewer than two pairs remain.
    """
    if a.shape != b.shape:
        raise InvalidInputError(f"spearman needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    x, y = a.detach().flatten().double().cpu(), b.detach().flatten().double().cpu()
    keep = torch.isfinite(x) & torch.isfinite(y)
    if int(keep.sum()) < 2:
        raise InvalidInputError("spearman needs at least two pairs without NaN")
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    if float(denom) == 0.0:
        return float("nan")
    return float((rx * ry).sum() / denom)
