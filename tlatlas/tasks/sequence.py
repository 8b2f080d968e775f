"""``sequence``: the next day, month, letter, number word or number.

Numbers written as digits follow a comma or newline with no space, because tokenizers
that split digits would otherwise score a bare space token.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples
from tlatlas.tasks.data import NAMES

NAME = "sequence"
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
UPPER = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
LOWER = tuple("abcdefghijklmnopqrstuvwxyz")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
CYCLIC = {"days": DAYS, "months": MONTHS}
LINEAR = {"upper": UPPER, "lower": LOWER, "words": NUMBER_WORDS}


def _run(rng: random.Random, kind: str, length: int) -> tuple[list[str], str]:
    """``length`` consecutive items (forward, or backward a third of the time) and the next."""
    if kind in CYCLIC:
        items = CYCLIC[kind]
        step = rng.choice((1, 1, -1))
        start = rng.randrange(len(items))
        seq = [items[(start + j * step) % len(items)] for j in range(length + 1)]
    elif kind in LINEAR:
        items = LINEAR[kind]
        start = rng.randrange(len(items) - length)
        seq = list(items[start:start + length + 1])
        if rng.random() < 1 / 3:
            seq.reverse()
    else:  # digits: arithmetic progression below 100
        step = rng.randint(1, 10)
        start = rng.randint(0, 99 - step * length)
        seq = [str(start + j * step) for j in range(length + 1)]
    return seq[:-1], seq[-1]


KINDS = ("days", "months", "upper", "lower", "words", "digits")


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Comma-separated runs: ``Monday, Tuesday, Wednesday,`` -> `` Thursday``."""
    def make(r: random.Random, i: int) -> Example:
        kind = KINDS[i % len(KINDS)]
        shown, nxt = _run(r, kind, r.randint(2, 6))
        if kind == "digits":
            return Example(family=NAME, prompt=",".join(shown) + ",", answer=nxt,
                           meta={"template": kind, "kind": kind})
        return Example(family=NAME, prompt=", ".join(shown) + ",", answer=f" {nxt}",
                       meta={"template": kind, "kind": kind})
    return unique_examples(rng, n, make)


def _natural_prompt(rng: random.Random, t: int) -> tuple[str, str, str]:
    """One of eight phrasings; returns prompt, answer and the sequence kind."""
    if t == 0:
        j = rng.randrange(len(DAYS))
        return (f"{rng.choice(NAMES)} knows that if today is {DAYS[j]}, then tomorrow is",
                f" {DAYS[(j + 1) % 7]}", "days")
    if t == 1:
        j = rng.randrange(len(MONTHS))
        ask = rng.choice(("Which month comes right after", "What month follows",
                          "Which month is next after"))
        return f"Q: {ask} {MONTHS[j]}?\nA:", f" {MONTHS[(j + 1) % 12]}", "months"
    if t == 2:
        items = rng.choice((UPPER, LOWER))
        j = rng.randrange(len(items) - 1)
        kind = "upper" if items is UPPER else "lower"
        return f"In the alphabet, the letter that follows {items[j]} is", f" {items[j + 1]}", kind
    if t == 3:
        j = rng.randrange(len(DAYS))
        return (f"{rng.choice(NAMES)} said that yesterday was {DAYS[j - 1]}, so today must be",
                f" {DAYS[j]}", "days")
    if t == 4:
        shown, nxt = _run(rng, "digits", rng.randint(2, 4))
        return (f"User: What number comes next: {', '.join(shown)}?\nAssistant: The next number "
                "is:\n", nxt, "digits")
    if t == 5:
        j = rng.randrange(len(MONTHS) - 1)
        who = rng.choice(("brother", "sister", "mother", "father", "friend", "cousin", "uncle"))
        return (f"My birthday is in {MONTHS[j]} and my {who}'s is the month after, in",
                f" {MONTHS[j + 1]}", "months")
    if t == 6:
        shown, nxt = _run(rng, "words", rng.randint(2, 4))
        return (f"The children counted out loud: \"{', '.join(shown)},", f" {nxt}", "words")
    j = rng.randrange(1, len(UPPER))
    return f"Question: which capital letter comes just after {UPPER[j - 1]}?\nAnswer:", \
        f" {UPPER[j]}", "upper"


def natural(rng: random.Random, n: int) -> list[Example]:
    """Calendar questions, alphabet questions, counting and chat turns."""
    def make(r: random.Random, i: int) -> Example:
        t = i % 8
        prompt, answer, kind = _natural_prompt(r, t)
        return Example(family=NAME, prompt=prompt, answer=answer,
                       meta={"template": f"nl{t}", "kind": kind})
    return unique_examples(rng, n, make)


FAMILY = Family(
    name=NAME,
    description="Continue a sequence of days, months, letters or numbers.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
