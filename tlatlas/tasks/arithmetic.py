"""``arithmetic``: small sums and differences with results in 0..99.

The answer follows ``=``, ``$`` or a newline with no space: tokenizers that split digits
(SmolLM2, Qwen2.5, Gemma) would otherwise put a bare space token at the scored position.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples

NAME = "arithmetic"


def _problem(rng: random.Random, op: str) -> tuple[int, int, int]:
    """Operands and result for ``op`` in ``+``/``-``, result in 0..99."""
    if op == "+":
        a = rng.randint(0, 90)
        b = rng.randint(0, 99 - a)
        return a, b, a + b
    a = rng.randint(1, 99)
    b = rng.randint(0, a)
    return a, b, a - b


SYNTHETIC = (
    "{a}{op}{b}=",
    "({a}{op}{b})=",
    "{da}{op}{db}={dc}\n{a}{op}{b}=",
    "{da}{op}{db}={dc}, {a}{op}{b}=",
    "Compute: {a}{op}{b}=",
)
"""Bare equations, optionally after one solved demonstration."""

WORD = {"+": "plus", "-": "minus"}

NATURAL = (
    "What is {a} {w} {b}?\n",
    "Q: How much is {a} {w} {b}? Reply with just the number.\nA:\n",
    "User: Can you work out {a} {w} {b} for me?\nAssistant: Sure! The result is:\n",
    "{story}",
    "Quick mental math: {a} {w} {b} equals what?\n",
    "I typed {a} {w} {b} into my calculator and the screen showed:\n",
    "Exercise 4. Work out {a} {w} {b} and write the result on the next line.\n",
)
"""Questions, chat turns and word problems (``{story}`` picks a word problem)."""

STORIES = {
    "+": (
        "A book costs ${a} and a pen costs ${b}. Together they cost $",
        "Tom had {a} marbles and then won {b} more. How many marbles does Tom have now?\n",
        "There are {a} boys and {b} girls in the hall. How many children are there in total?\n",
    ),
    "-": (
        "I had ${a} in my wallet and spent ${b} on lunch, so now I have $",
        "A farmer had {a} sheep and sold {b} of them. How many sheep are left?\n",
        "The bus carried {a} people and {b} got off at the stop. How many people are still on the bus?\n",
    ),
}


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Equations such as ``12+7=`` -> ``19``."""
    def make(r: random.Random, i: int) -> Example:
        t = i % len(SYNTHETIC)
        op = "+-"[(i // len(SYNTHETIC)) % 2]
        a, b, c = _problem(r, op)
        da, db, dc = _problem(r, op)
        prompt = SYNTHETIC[t].format(a=a, b=b, op=op, da=da, db=db, dc=dc)
        return Example(family=NAME, prompt=prompt, answer=str(c),
                       meta={"template": f"eq{t}", "op": op})
    return unique_examples(rng, n, make)


def natural(rng: random.Random, n: int) -> list[Example]:
    """Questions and word problems about the same sums and differences."""
    def make(r: random.Random, i: int) -> Example:
        t = i % len(NATURAL)
        op = "+-"[(i // len(NATURAL)) % 2]
        a, b, c = _problem(r, op)
        template, tid = NATURAL[t], f"nl{t}"
        if template == "{story}":
            s = r.randrange(len(STORIES[op]))
            template, tid = STORIES[op][s], f"story{op}{s}"
        prompt = template.format(a=a, b=b, w=WORD[op])
        return Example(family=NAME, prompt=prompt, answer=str(c),
                       meta={"template": tid, "op": op})
    return unique_examples(rng, n, make)


FAMILY = Family(
    name=NAME,
    description="Add or subtract small numbers (results 0..99).",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
