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


def test_bootstrap_interval_covers_a_known_mean_at_its_nominal_rate():
    """Coverage: the 95% interval of the mean of n = 60 draws covers the true mean in
    92-98% of 400 repetitions (the percentile bootstrap is slightly liberal at small n)."""
    from tlatlas.stats import bootstrap_mean

    gen = torch.Generator().manual_seed(1)
    hits = 0
    reps = 400
    for r in range(reps):
        x = torch.randn(60, generator=gen) * 2.0 + 3.0
        ci = bootstrap_mean(x, replicates=1000, seed=r)
        hits += ci.ci_low <= 3.0 <= ci.ci_high
    assert 0.92 <= hits / reps <= 0.98, hits / reps


def test_stratified_draws_stay_in_their_stratum():
    from tlatlas.stats import stratified_indices

    strata = torch.tensor([0, 0, 1, 1, 1, 2])
    idx = stratified_indices(strata, 50, torch.Generator().manual_seed(0))
    assert idx.shape == (50, 6)
    assert torch.equal(strata[idx], strata.expand(50, -1))


def test_paired_difference_cancels_what_pairs_share_and_gives_verdicts():
    from tlatlas.stats import paired_difference, verdict

    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(200, generator=gen) * 10  # large per-example variation
    a = shared + 0.5 + 0.1 * torch.randn(200, generator=gen)
    b = shared
    d = paired_difference(a, b, seed=0)
    assert d.ci_low > 0.4 and d.ci_high < 0.6 and d.n == 200
    assert verdict(d) == "supported" and verdict(paired_difference(b, a)) == "contradicted"
    null = paired_difference(shared + 0.1 * torch.randn(200, generator=gen), shared)
    assert null.ci_low < 0 < null.ci_high and verdict(null) == "inconclusive"
    assert verdict(d, smoke=True) == "smoke: not evidence"
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(a, b[:3])
