"""A skip set against the whole distribution of same-size skip sets (study c).

"Skipping the atlas's least important blocks costs little" means little *compared with
what?* Here: with every other set of ``k`` blocks. All ``C(n, k)`` sets are measured when
there are at most ``max_sets`` of them, else ``max_sets`` distinct sets drawn at random
(seeded). Each set's damage is KL(p_full || p_skipped) at the scored position of each
held-out prompt (bridges.skip), so the result is a ``[set, prompt]`` matrix.

The *percentile* of a candidate set (the atlas's, Block Influence's) is the percentage of
sets in the distribution whose mean KL is strictly below the candidate's: 0 means no set
of that size is safer. Its 95% interval resamples the prompts (stratified by family) and
recomputes every set's mean, so it says how much the ranking depends on the prompts.
"""

import math
import random
from itertools import combinations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas.errors import InvalidInputError
from tlatlas.stats import DEFAULT_REPLICATES, Interval, percentile_interval, stratified_indices

DEFAULT_MAX_SETS = 100
"""Sets measured when ``C(n, k)`` is larger (at least 50 is what a percentile needs)."""


def skip_sets(n_layers: int, k: int, *, max_sets: int = DEFAULT_MAX_SETS, seed: int = 0
              ) -> tuple[list[tuple[int, ...]], bool]:
    """(the sets of ``k`` blocks to measure, whether that is every such set).

    Every set when ``C(n_layers, k) <= max_sets``; else ``max_sets`` distinct sets drawn
    with ``random.Random(seed)``, in draw order.
    """
    if not 1 <= k <= n_layers:
        raise InvalidInputError(f"k must be in 1..{n_layers}, got {k}")
    if max_sets < 1:
        raise InvalidInputError(f"max_sets must be >= 1, got {max_sets}")
    if math.comb(n_layers, k) <= max_sets:
        return list(combinations(range(n_layers), k)), True
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < max_sets:
        s = tuple(sorted(rng.sample(range(n_layers), k)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out, False


def per_prompt_kl(full: Float[Tensor, "batch d_vocab"], other: Float[Tensor, "batch d_vocab"]
                  ) -> Float[Tensor, " batch"]:
    """KL(p_full || p_other) per row, in nats (clamped at 0 against rounding)."""
    lp, lq = full.float().log_softmax(-1), other.float().log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)


def percentile(candidate: Float[Tensor, " prompt"], distribution: Float[Tensor, "set prompt"],
               *, strata: Int[Tensor, " prompt"] | None = None,
               replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Interval:
    """Percentage of the distribution's sets with a mean KL strictly below the candidate's,
    with a bootstrap interval over prompts (resampled within ``strata``); ``n`` = prompts."""
    if distribution.shape[1] != candidate.shape[0]:
        raise InvalidInputError(f"{candidate.shape[0]} prompts for the candidate, "
                                f"{distribution.shape[1]} for the distribution")
    d, c = distribution.double(), candidate.double()
    estimate = 100 * float((d.mean(1) < c.mean()).double().mean())
    strata = torch.zeros(c.shape[0], dtype=torch.long) if strata is None else strata
    idx = stratified_indices(strata, replicates, torch.Generator().manual_seed(seed))
    reps = 100 * (d[:, idx].mean(-1) < c[idx].mean(-1)[None]).double().mean(0)  # [rep]
    lo, hi = percentile_interval(reps[:, None])
    return Interval(estimate=estimate, ci_low=float(lo[0]), ci_high=float(hi[0]),
                    n=int(c.shape[0]))
