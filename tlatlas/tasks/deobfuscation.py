"""``deobfuscation``: decode a leetspeak, reversed or spaced-out word."""

import random

from tlatlas.errors import UnknownNameError
from tlatlas.tasks.base import Example, Family, unique_examples
from tlatlas.tasks.data import WORDS

NAME = "deobfuscation"
LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
VOCAB: tuple[str, ...] = tuple(dict.fromkeys(
    WORDS + ("hello", "world", "secret", "password", "winter", "garden", "people", "thanks",
             "music", "water", "pizza", "banana", "rabbit", "monkey", "candle", "button")
))
"""Distinct lower-case words, none a palindrome."""
CODES = ("leet", "reversed", "spaced")


def encode(word: str, code: str) -> str:
    """Obfuscate ``word``: ``leet`` (h3ll0), ``reversed`` (olleh) or ``spaced`` (h e l l o)."""
    if code == "leet":
        return "".join(LEET.get(ch, ch) for ch in word)
    if code == "reversed":
        return word[::-1]
    if code == "spaced":
        return " ".join(word)
    raise UnknownNameError(f"unknown code {code!r}; known: {', '.join(CODES)}")


def _words(code: str) -> tuple[str, ...]:
    """Words that the code actually changes (leetspeak needs a mappable letter)."""
    return tuple(w for w in VOCAB if encode(w, code) != w)


SYNTHETIC: dict[str, tuple[str, ...]] = {
    "leet": ("{e} means", "{d} -> {dw}, {e} ->"),
    "reversed": ("'{e}' reversed is", "{d} -> {dw}, {e} ->"),
    "spaced": ("{e} spells", "{d} -> {dw}, {e} ->"),
}
"""Per code: a bare template and a one-shot ``obfuscated -> word`` template."""

NATURAL: dict[str, tuple[str, ...]] = {
    "leet": (
        "My friend texted me {e}. In normal spelling, that word is",
        "Q: What English word is written in leetspeak as {e}?\nA:",
        "Gamers sometimes write {e} instead of the plain word",
    ),
    "reversed": (
        "Read this word backwards: {e}. The real word is",
        "User: What word do I get if I reverse the letters of {e}?\nAssistant: You get",
        "The secret note said {e}, which is just a backwards spelling of",
    ),
    "spaced": (
        "If you join the letters {e} together, you get the word",
        "Q: Which word is spelled out by the letters {e}?\nA:",
        "The child slowly spelled out {e}, which makes the word",
    ),
}
"""Three phrasings per code: nine templates in all."""


def _make(table: dict[str, tuple[str, ...]], prefix: str, rng: random.Random, i: int) -> Example:
    code = CODES[i % len(CODES)]
    templates = table[code]
    t = (i // len(CODES)) % len(templates)
    words = _words(code)
    word = rng.choice(words)
    demo = rng.choice([w for w in words if w != word])
    prompt = templates[t].format(e=encode(word, code), d=encode(demo, code), dw=demo)
    return Example(family=NAME, prompt=prompt, answer=f" {word}",
                   meta={"template": f"{prefix}{code}{t}", "code": code})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """``h3ll0 means`` / ``'olleh' reversed is`` / ``h e l l o spells`` -> `` hello``."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, "", r, i))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Texts, notes, chat turns and questions about the same codes."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, "nl-", r, i))


FAMILY = Family(
    name=NAME,
    description="Decode a leetspeak, reversed or spaced-out word.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
