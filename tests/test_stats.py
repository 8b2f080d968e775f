"""Ranks and rank correlation (tlatlas.stats)."""

import math

import pytest
import torch

from tlatlas.metrics import METRICS
from tlatlas.stats import spearman

KL, DLOGP, ACC = (METRICS.index(m) for m in ("kl", "dlogp", "acc_drop"))


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 1000.0], 1.0),  # monotone, not linear
    ([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 1.0, -9.0], -1.0),
    ([1.0, float("nan"), 2.0, 3.0, 4.0], [1.0, -50.0, 4.0, 9.0, 16.0], 1.0),  # NaN pair ignored
    ([1.0, 2.0, 3.0, float("nan")], [3.0, 2.0, float("nan"), 0.0], -1.0),
    ([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], 0.9486832980505138),  # tie: average ranks
])
def test_spearman_known_values(a, b, expected):
    assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)


def test_spearman_shapes_and_degenerate_inputs():
    x = torch.arange(6.0).view(2, 3)
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
    with pytest.raises(ValueError, match="shape"):
        spearman(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="two pairs"):
        spearman(torch.tensor([1.0, float("nan")]), torch.tensor([float("nan"), 2.0]))
