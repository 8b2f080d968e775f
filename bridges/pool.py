"""Runs of one strategy study at other training seeds, pooled into one (``tlatlas pool``).

Kept apart from :mod:`bridges.compare` (which the experiment blocks import) so that
pooling committed results does not change any block's code version.
"""

from collections import defaultdict
from collections.abc import Sequence

from bridges.compare import per_prompt


def study_rows(result: dict) -> list[dict]:
    """The run rows of a strategy study: a ``tlatlas study strategies --out`` file or an
    experiment block's result (its ``value``)."""
    value = result.get("value", result)
    if "rows" not in value or any("strategy" not in row for row in value["rows"]):
        raise ValueError("not a strategy study result (rows with a strategy each)")
    return list(value["rows"])


def study_design(result: dict) -> dict:
    """A study result's design without its training seeds: what two runs of one study share."""
    value = result.get("value", result)
    return {k: v for k, v in value.get("design", {}).items() if k != "seeds"}


def pooled(row_sets: Sequence[Sequence[dict]], key: str = "strategy") -> list[dict]:
    """Rows of several runs of one design, as one study; refuses a run (seed, family,
    ``key``, layers) that two of them both hold, which would count its pairs twice."""
    seen: set[tuple] = set()
    out = []
    for rows in row_sets:
        for row in rows:
            ident = (row["seed"], row["family"], row[key], tuple(row["layers"]))
            if ident in seen:
                raise ValueError(f"run {ident} appears twice: the files overlap")
            seen.add(ident)
            out.append(row)
    return out


def seed_differences(rows: Sequence[dict], key: str, reference: str, other: str
                     ) -> dict[int, float]:
    """Per training seed, the mean over its held-out prompts of ``loss(other) -
    loss(reference)``: the spread a pooled pair interval does not show."""
    ref, oth = per_prompt(rows, key, reference), per_prompt(rows, key, other)
    by_seed: dict[int, list[float]] = defaultdict(list)
    for k in sorted(ref.keys() & oth.keys()):
        by_seed[k[0]].append(oth[k][0] - ref[k][0])
    return {s: sum(v) / len(v) for s, v in sorted(by_seed.items())}
