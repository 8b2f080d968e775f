"""``factual``: recall a country's capital, currency or official language."""

import random

from tlatlas.tasks.base import Example, Family, unique_examples
from tlatlas.tasks.data import facts

NAME = "factual"
RELATIONS = ("capital", "currency", "language")

# Synthetic templates: {c} is the country; "{shot}" is an optional one-shot demonstration.
SYNTHETIC: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {c} is", "{c}'s capital city is", "Country: {c}\nCapital:"),
    "currency": (
        "The currency of {c} is the",
        "{c} uses a currency called the",
        "Country: {c}\nCurrency: the",
    ),
    "language": (
        "The official language of {c} is",
        "In {c}, the official language is",
        "Country: {c}\nLanguage:",
    ),
}

NATURAL: dict[str, tuple[str, ...]] = {
    "capital": (
        "Q: What is the capital city of {c}?\nA:",
        "If you fly to the capital of {c}, you will land in",
        "User: Which city is the capital of {c}?\nAssistant: The capital is",
        "My geography teacher asked me to name the capital of {c}, and I said",
        "Which city serves as the seat of government of {c}? It is",
        "Fun fact: the city that is the capital of {c} is called",
        "Question: name the capital of {c}.\nAnswer:",
    ),
    "currency": (
        "Q: What money do people use in {c}?\nA: They pay with the",
        "If you travel to {c}, you should exchange your cash for the local currency, the",
        "User: What currency is used in {c}?\nAssistant: The currency is the",
        "Shops in {c} price their goods in the",
        "When I visited {c}, everything I bought was paid for in the",
        "Question: which currency does {c} use?\nAnswer: the",
        "Fun fact: the money of {c} is called the",
    ),
    "language": (
        "Q: What language do most people speak in {c}?\nA:",
        "If you move to {c}, you should learn to speak",
        "User: What is the main language of {c}?\nAssistant: It is",
        "Most newspapers in {c} are written in",
        "When I lived in {c}, my neighbours spoke to me in",
        "Question: which language is official in {c}?\nAnswer:",
        "Fun fact: the national language of {c} is",
    ),
}


def _capitalise(country: str) -> str:
    """Sentence-initial form ("the Netherlands" -> "The Netherlands")."""
    return country[0].upper() + country[1:]


def _fill(template: str, country: str) -> str:
    text = template.format(c=country)
    return _capitalise(text) if template.startswith("{c}") else text


def _make(templates: dict[str, tuple[str, ...]], rng: random.Random, i: int, *,
          shot: bool) -> Example:
    relation = RELATIONS[i % len(RELATIONS)]
    table = facts(relation)
    country, value = rng.choice(table)
    k = rng.randrange(len(templates[relation]))
    prompt = _fill(templates[relation][k], country)
    if shot and rng.random() < 0.5:
        # One-shot demonstration with the same template and another country.
        demo_country, demo_value = rng.choice([row for row in table if row[0] != country])
        prompt = f"{_fill(templates[relation][k], demo_country)} {demo_value}.\n{prompt}"
    return Example(family=NAME, prompt=prompt, answer=f" {value}",
                   meta={"template": f"{relation}/{k}", "relation": relation})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Template prompts, half with a one-shot demonstration."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, r, i, shot=True))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Questions, chat turns and sentences that embed the fact."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, r, i, shot=False))


FAMILY = Family(
    name=NAME,
    description="Recall a country's capital, currency or official language.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
