"""``ioi``: indirect object identification.

Two people are introduced; one of them (the subject) is named again and gives something
to the other, the indirect object, whose name is the answer. Both name orders (ABBA and
BABA) are used.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples
from tlatlas.tasks.data import NAMES

NAME = "ioi"
PLACES = ("store", "park", "school", "restaurant", "beach", "office", "hospital", "station",
          "library", "garden", "market", "museum", "party", "cinema", "kitchen")
OBJECTS = ("drink", "book", "ball", "letter", "gift", "key", "bag", "ring", "flower", "pen",
           "cake", "map", "phone", "ticket", "hat")
VERBS = ("gave", "handed", "passed", "showed", "sent", "threw")

SYNTHETIC = (
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "After {A} and {B} went to the {place}, {S} gave a {obj} to",
    "Then, {A} and {B} had a long day at the {place}. {S} gave a {obj} to",
    "While {A} and {B} were working at the {place}, {S} {verb} a {obj} to",
    "When {A} and {B} arrived at the {place}, {S} {verb} the {obj} to",
    "Friends {A} and {B} found a {obj} at the {place}. {S} gave it to",
)
"""Classic IOI templates (Wang et al. 2022 style)."""

NATURAL = (
    "Yesterday {A} met {B} outside the {place}. They talked for a while, and then {S} "
    "{verb} a {obj} to",
    "Q: {A} and {B} were at the {place}. {S} {verb} a {obj} to whom?\nA: To",
    "It was a sunny day, so {A} and {B} went to the {place} together. Later {S} "
    "{verb} a {obj} to",
    "User: Finish the story. {A} and {B} sat down in the {place}, and {S} {verb} a {obj} to\n"
    "Assistant: {S} {verb} a {obj} to",
    "{A} and {B} both work at the {place}. This morning {S} forgot a {obj}, so {S} asked "
    "for help from",
    "At the {place}, {A} was waiting for {B}. When they met, {S} {verb} a {obj} to",
    "The {place} was busy when {A} and {B} arrived. Without a word, {S} {verb} the {obj} to",
)
"""Narrative, question and chat framings of the same structure."""


def _fill(template: str, rng: random.Random) -> tuple[str, str, str]:
    """Return prompt, answer (the indirect object) and the name order."""
    a, b = rng.sample(NAMES, 2)
    order = rng.choice(("ABBA", "BABA"))
    first, second = (a, b) if order == "ABBA" else (b, a)
    # The indirect object is ``a``; the subject ``b`` is repeated.
    prompt = template.format(A=first, B=second, S=b, place=rng.choice(PLACES),
                             obj=rng.choice(OBJECTS), verb=rng.choice(VERBS))
    return prompt, f" {a}", order


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Classic IOI sentences, ABBA and BABA."""
    def make(r: random.Random, i: int) -> Example:
        t = i % len(SYNTHETIC)
        prompt, answer, order = _fill(SYNTHETIC[t], r)
        return Example(family=NAME, prompt=prompt, answer=answer,
                       meta={"template": f"ioi{t}", "order": order})
    return unique_examples(rng, n, make)


def natural(rng: random.Random, n: int) -> list[Example]:
    """Stories, questions and chat turns with the same two-person structure."""
    def make(r: random.Random, i: int) -> Example:
        t = i % len(NATURAL)
        prompt, answer, order = _fill(NATURAL[t], r)
        return Example(family=NAME, prompt=prompt, answer=answer,
                       meta={"template": f"nl{t}", "order": order})
    return unique_examples(rng, n, make)


FAMILY = Family(
    name=NAME,
    description="Name the indirect object: the person who was not repeated.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
