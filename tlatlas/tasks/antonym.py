"""``antonym``: the opposite of a common English word.

Pairs are used in both directions only where the reverse is also unambiguous
(``hot``/``cold`` both ways; ``heavy`` -> ``light`` but not ``light`` -> ``heavy``).
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples

NAME = "antonym"

BOTH_WAYS = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("open", "closed"), ("high", "low"), ("good", "bad"), ("rich", "poor"), ("wet", "dry"),
    ("full", "empty"), ("early", "late"), ("strong", "weak"), ("love", "hate"), ("win", "lose"),
    ("push", "pull"), ("in", "out"), ("true", "false"), ("yes", "no"), ("day", "night"),
    ("black", "white"), ("clean", "dirty"), ("loud", "quiet"), ("alive", "dead"),
    ("buy", "sell"), ("first", "last"), ("inside", "outside"), ("above", "below"),
    ("before", "after"), ("north", "south"), ("east", "west"), ("cheap", "expensive"),
    ("safe", "dangerous"), ("friend", "enemy"), ("question", "answer"), ("always", "never"),
    ("wide", "narrow"), ("deep", "shallow"), ("beautiful", "ugly"), ("war", "peace"),
    ("boy", "girl"), ("king", "queen"), ("husband", "wife"), ("maximum", "minimum"),
    ("increase", "decrease"), ("accept", "reject"), ("remember", "forget"),
    ("asleep", "awake"), ("present", "absent"), ("possible", "impossible"),
    ("correct", "incorrect"), ("legal", "illegal"), ("polite", "rude"), ("tight", "loose"),
    ("import", "export"), ("positive", "negative"), ("top", "bottom"), ("front", "back"),
    ("laugh", "cry"), ("thick", "thin"), ("sweet", "sour"), ("arrive", "depart"),
    ("entrance", "exit"), ("smooth", "rough"), ("heaven", "hell"), ("winner", "loser"),
    ("visible", "invisible"), ("major", "minor"), ("success", "failure"), ("rise", "fall"),
)
ONE_WAY = (
    ("heavy", "light"), ("dark", "light"), ("young", "old"), ("new", "old"), ("easy", "hard"),
    ("soft", "hard"), ("tall", "short"), ("long", "short"), ("left", "right"),
    ("wrong", "right"), ("give", "take"), ("start", "end"), ("begin", "end"),
    ("everything", "nothing"), ("ancient", "modern"), ("quiet", "loud"),
)
PAIRS: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys(BOTH_WAYS + tuple((b, a) for a, b in BOTH_WAYS) + ONE_WAY)
)
"""(word, antonym) items; about 150."""

SYNTHETIC = (
    "The opposite of {w} is",
    "{shots}, {w} ->",
    "Antonym of {w}:",
    "{w} is the opposite of",
)
"""``{shots}`` is a comma-separated list of ``word -> antonym`` demonstrations."""

NATURAL = (
    "Q: What is the opposite of {w}?\nA:",
    "User: Give me an antonym for the word {w}.\nAssistant: An antonym for {w} is",
    "My English teacher asked for a word that means the opposite of {w}, so I wrote",
    "Question: which word has the opposite meaning to {w}?\nAnswer:",
    "Opposites game! When I say {w}, you say",
    "In the word game, each player says the reverse of the word shown. The card says {w}, "
    "so I say",
    "Dictionary entry: {w}. Antonyms:",
)


SYMMETRIC = BOTH_WAYS + tuple((b, a) for a, b in BOTH_WAYS)


def _make(table: tuple[str, ...], prefix: str, rng: random.Random, i: int) -> Example:
    t = i % len(table)
    template = table[t]
    if template.startswith("{w} is the opposite"):
        # "cold is the opposite of" -> " hot": only pairs that are unambiguous both ways.
        word, opposite = rng.choice(SYMMETRIC)
    else:
        word, opposite = rng.choice(PAIRS)
    demos = rng.sample([p for p in PAIRS if word not in p and opposite not in p], rng.randint(2, 3))
    prompt = template.format(w=word, shots=", ".join(f"{a} -> {b}" for a, b in demos))
    return Example(family=NAME, prompt=prompt[0].upper() + prompt[1:], answer=f" {opposite}",
                   meta={"template": f"{prefix}{t}", "word": word})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """Template prompts, one with few-shot ``word -> antonym`` demonstrations."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, "ant", r, i))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Questions, chat turns, classroom and game framings."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, "nl", r, i))


FAMILY = Family(
    name=NAME,
    description="Give the opposite of a common English word.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
