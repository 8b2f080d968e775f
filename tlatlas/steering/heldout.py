"""Held-out steering (issue 15, item 2): vectors from a training split, scored on the rest.

A difference of means scored on the prompts it was estimated on partly measures those
prompts' own noise (at smoke size, one prompt per family is both the vector and its
test). :func:`heldout_split` splits each family's examples into a training part (the
vectors and the partition control) and a held-out part (the sweep), by stable example
id, so the split is the same in every run, shard and precision; :func:`fit_vectors` is
the usual first step of a study::

    split, vectors = fit_vectors(model, suite, config)
    result = steering_sweep(model, split.heldout, vectors, config)  # or precision_sweep
    assert result.heldout  # the sweep records both id sets and checks they are disjoint
"""

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tlatlas.errors import InvalidInputError
from tlatlas.models import LoadedModel
from tlatlas.steering.config import SteeringConfig
from tlatlas.steering.vectors import SteeringVectors, steering_vectors
from tlatlas.tasks import Example, Suite
from tlatlas.tasks.suite import canonical_order


@dataclass(frozen=True, kw_only=True)
class HeldoutSplit:
    """A per-family split of examples into training prompts and held-out prompts."""

    train: tuple[Example, ...] | Suite
    """Examples the vectors (and the partition control) are estimated on (a
    :class:`~tlatlas.tasks.Suite` of the same kind and seed when the input was one)."""
    heldout: tuple[Example, ...] | Suite
    """Examples the sweep scores; no example id is in both parts (likewise a Suite)."""
    fraction: float
    """Requested held-out share of each family."""
    seed: int
    """Seed of the split."""

    def __post_init__(self) -> None:
        overlap = self.train_uids & self.heldout_uids
        if overlap:
            raise InvalidInputError(f"{len(overlap)} example ids are both training and "
                                    "held-out prompts")

    @property
    def train_uids(self) -> frozenset[int]:
        return frozenset(e.uid for e in self.train)

    @property
    def heldout_uids(self) -> frozenset[int]:
        return frozenset(e.uid for e in self.heldout)

    def counts(self) -> dict[str, tuple[int, int]]:
        """(training, held-out) examples per family, canonical family order."""
        train, held = list(self.train), list(self.heldout)
        fams = canonical_order([e.family for e in train + held])
        return {f: (sum(e.family == f for e in train), sum(e.family == f for e in held))
                for f in fams}

    def to_dict(self) -> dict[str, object]:
        return {"fraction": self.fraction, "seed": self.seed, "counts": self.counts(),
                "train_uids": sorted(self.train_uids), "heldout_uids": sorted(self.heldout_uids)}


def heldout_split(examples: Iterable[Example], *, fraction: float = 0.5, seed: int = 0
                  ) -> HeldoutSplit:
    """Split each family: ``round(fraction * n)`` distinct example ids held out (at least
    one, and at least one left for training), the rest for training.

    Examples are grouped by id first, so duplicates of one example never land on both
    sides. Within a family the ids are sorted and shuffled with
    ``random.Random(f"{seed}:heldout:{family}")``; both parts keep the input order.

    Raises:
        InvalidInputError: ``fraction`` outside (0, 1), or a family with fewer than two
            distinct examples.
    """
    if not 0 < fraction < 1:
        raise InvalidInputError(f"heldout fraction must be in (0, 1), got {fraction}")
    source, examples = examples, list(examples)
    if not examples:
        raise InvalidInputError("no examples to split")
    uids_of: dict[str, list[int]] = {}
    for e in examples:
        ids = uids_of.setdefault(e.family, [])
        if e.uid not in ids:
            ids.append(e.uid)
    short = {f: len(ids) for f, ids in uids_of.items() if len(ids) < 2}
    if short:
        raise InvalidInputError(f"a held-out split needs at least 2 distinct examples per "
                                f"family (one to estimate, one to score); too few in {short}")
    held: set[int] = set()
    for family, ids in uids_of.items():
        order = sorted(ids)
        random.Random(f"{seed}:heldout:{family}").shuffle(order)
        k = min(max(1, round(fraction * len(order))), len(order) - 1)
        held.update(order[:k])
    parts = [tuple(e for e in examples if (e.uid in held) == side) for side in (False, True)]
    if isinstance(source, Suite):  # keep the suite's kind and seed for the results' provenance
        parts = [Suite(kind=source.kind, seed=source.seed, examples=p) for p in parts]
    return HeldoutSplit(train=parts[0], heldout=parts[1], fraction=fraction, seed=seed)


def fit_vectors(
    model: LoadedModel,
    examples: Iterable[Example],
    config: SteeringConfig,
    *,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[HeldoutSplit, SteeringVectors]:
    """Split ``examples`` (``config.heldout_fraction``, ``config.split_seed``) and estimate
    the difference-of-means vectors with ``config.partition_draws`` partition-control
    directions (seed ``config.random_seed``) on the training part, at ``config.layers``."""
    split = heldout_split(examples, fraction=config.heldout_fraction, seed=config.split_seed)
    vectors = steering_vectors(model, list(split.train), layers=config.layers,
                               batch_size=config.batch_size,
                               partition_draws=config.partition_draws,
                               partition_seed=config.random_seed, on_batch=on_batch)
    return split, vectors


def overlap(train_uids: Sequence[int], scored_uids: Sequence[int]) -> int:
    """How many distinct scored example ids are also training ids."""
    return len(set(train_uids) & set(scored_uids))


__all__ = ["HeldoutSplit", "heldout_split", "fit_vectors", "overlap"]
