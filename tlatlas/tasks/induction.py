"""``induction``: continue a repeated random sequence of words or letters.

A sequence of distinct items is shown once and then repeated up to a cut point; the answer
is the item that followed the last shown one in the first copy. Items are distinct, so the
continuation is unique.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples
from tlatlas.tasks.data import COLORS, LETTERS, NAMES, WORDS

NAME = "induction"
POOLS: dict[str, tuple[str, ...]] = {
    "words": tuple(dict.fromkeys(WORDS)),
    "letters": LETTERS,
    "names": NAMES,
    "colors": COLORS,
}


def _sequence(rng: random.Random, pool: str, low: int = 4, high: int = 9) -> tuple[list[str], int]:
    """Distinct items and a cut ``k`` (1 <= k < len): the repeat shows ``items[:k]``."""
    items = rng.sample(POOLS[pool], rng.randint(low, min(high, len(POOLS[pool]))))
    return items, rng.randint(1, len(items) - 1)


SYNTHETIC = (
    ("words", " ", "{first} {repeat}"),
    ("letters", " ", "{first} {repeat}"),
    ("words", ", ", "{first}, {repeat},"),
    ("letters", ", ", "{first}, {repeat},"),
    ("names", " ", "{first} {repeat}"),
    ("words", " ", "{first}\n{repeat}"),
)
"""(pool, separator, layout): the item list, then its repeat cut after ``k`` items."""

NATURAL = (
    ("words", ", ", "My password is {first}. Once more, slowly: my password is {repeat},"),
    ("words", ", ", "The shopping list says: {first}. Reading it again: {repeat},"),
    ("colors", " ", "The flag has stripes in this order: {first}. From the top again: {repeat}"),
    ("letters", "-", "The licence plate read {first}. I wrote it down as {repeat}-"),
    ("names", ", ", "The teacher called the roll: {first}. Then she called it again: {repeat},"),
    ("words", " ", "Q: Repeat after me: {first}\nA: {repeat}"),
    ("names", ", ", "User: Who is in the team? The list is {first}.\nAssistant: The team is {repeat},"),
    ("words", " ", "The chorus goes \"{first}\" and then again \"{repeat}"),
)
"""Sentences that show a list and start to repeat it."""


def _make(table: tuple[tuple[str, str, str], ...], prefix: str, rng: random.Random,
          i: int) -> Example:
    t = i % len(table)
    pool, sep, layout = table[t]
    items, k = _sequence(rng, pool)
    prompt = layout.format(first=sep.join(items), repeat=sep.join(items[:k]))
    # The answer's own separator: after "," or "-" the next item follows a space / nothing.
    lead = "" if sep == "-" else " "
    return Example(family=NAME, prompt=prompt, answer=f"{lead}{items[k]}",
                   meta={"template": f"{prefix}{t}", "pool": pool, "cut": str(k)})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Bare repeated sequences of words, letters or names."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, "seq", r, i))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Passwords, lists, roll calls and songs that repeat."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, "nl", r, i))


FAMILY = Family(
    name=NAME,
    description="Continue a random sequence that has started to repeat.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
