"""Threats from training seeds that disagree: a LoRA verdict the interval does not cover.

The adapter blocks compare two conditions (a strategy against the atlas's layers, a module
set against ``o``) on pairs of (training seed, held-out prompt), and their bootstrap treats
those pairs as exchangeable (docs/studies.md). With two training seeds the interval then
stands for prompt noise, not for training noise: a decisive verdict can rest on one seed's
run. This check reads each result's per-seed rows and adds a threat wherever a decisive
comparison (its 95% interval excludes 0) has a training seed whose own mean difference has
the opposite sign, so a reader knows that a rerun with other seeds, or on another host (the
module sweep on Gemma-3 did: docs/experiments.md), may well change the verdict.

Reads finished records only; in no block's import closure, so it recomputes nothing.
"""

from collections import defaultdict
from collections.abc import Iterator

from experiments.blocks.base import Statement

Comparison = tuple[str, str, str, dict, list[dict], list[dict]]
"""(what, reference name, other name, the record's comparison, reference rows, other rows)."""


def _strategies(value: dict) -> Iterator[Comparison]:
    by: dict[str, list[dict]] = defaultdict(list)
    for row in value["rows"]:
        by[row["strategy"]].append(row)
    for name, c in value["comparisons"].items():
        if by.get("atlas") and by.get(name):
            yield "held-out loss", "atlas", name, c, by["atlas"], by[name]


def _modules(value: dict) -> Iterator[Comparison]:
    for point in value["budgets"]:
        by: dict[str, list[dict]] = defaultdict(list)
        for row in value["rows"]:
            if row["budget"] == point["requested"]:
                by[row["module_set"]].append(row)
        for name, c in value["comparisons"][str(point["requested"])].items():
            if by.get("o") and by.get(name):
                params = point["trainable_params"]["o"]
                yield f"held-out loss at {params} params", "o", name, c, by["o"], by[name]


COMPARISONS = {"lora-strategies": _strategies, "module-sweep": _modules}
"""Block id -> its comparisons (``other - reference`` on held-out loss)."""


def seed_differences(ref: list[dict], other: list[dict]) -> dict[int, float]:
    """Per training seed: mean held-out loss of ``other``'s rows minus ``ref``'s (rows of a
    seed averaged first: random draws, families)."""
    def means(rows: list[dict]) -> dict[int, float]:
        by: dict[int, list[float]] = defaultdict(list)
        for row in rows:
            by[row["seed"]].append(row["heldout_loss_after"])
        return {s: sum(x) / len(x) for s, x in by.items()}

    a, b = means(ref), means(other)
    return {s: b[s] - a[s] for s in sorted(a.keys() & b.keys())}


def seed_threats(results: dict[str, list[dict]]) -> list[Statement]:
    """A threat per decisive comparison that a training seed contradicts (see the module)."""
    out = []
    for block, comparisons in COMPARISONS.items():
        for r in results.get(block, []):
            if r.get("size") == "smoke":
                continue
            for what, ref, name, c, ref_rows, rows in comparisons(r["value"]):
                loss = c.get("loss")
                if not c.get("n") or not loss or loss["ci"][0] <= 0 <= loss["ci"][1]:
                    continue
                diffs = seed_differences(ref_rows, rows)
                against = {s: d for s, d in diffs.items() if d * loss["estimate"] < 0}
                if len(diffs) < 2 or not against:
                    continue
                per_seed = ", ".join(f"{d:+.3f} with training seed {s}" for s, d in diffs.items())
                out.append(Statement(kind="threat", sources=(r["path"],), text=(
                    f"{r['model']} ({r['size']}, seed {r['seed']}, {block}): {name} - {ref} on "
                    f"{what} is {loss['estimate']:+.3f} [{loss['ci'][0]:+.3f}, "
                    f"{loss['ci'][1]:+.3f}] nats pooled (n = {c['n']}), but {per_seed}: the "
                    f"training seeds disagree in sign, and the interval, over seeds x prompts "
                    f"as exchangeable, does not cover training noise; the verdict rests on "
                    f"{len(diffs) - len(against)} of {len(diffs)} training seeds.")))
    return out


__all__ = ["COMPARISONS", "seed_differences", "seed_threats"]
