"""The unit of the task suite: one scored example, and the family registry.

A family is a pure generator ``(rng, n) -> list[Example]``; every source of randomness
comes from the ``random.Random`` it is given, so a family is deterministic per seed.
"""

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tlatlas.errors import InvalidInputError, UnknownNameError

Generator = Callable[[random.Random, int], "list[Example]"]


@dataclass(frozen=True, kw_only=True)
class Example:
    """One prompt whose next token is scored.

    The scored position is the last prompt token; the target is the first token of
    ``answer`` when ``prompt + answer`` is tokenized.
    """

    family: str
    """Task family name, one of the registered families."""
    prompt: str
    """Text fed to the model. Never ends with a space: the answer carries its own."""
    answer: str
    """Short continuation whose first token is scored (usually starts with a space)."""
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    """Free-form provenance (template id, relation, ...). Not part of the content hash."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise InvalidInputError(f"{self.family}: empty prompt")
        if not self.answer.strip():
            raise InvalidInputError(f"{self.family}: empty answer for prompt {self.prompt!r}")
        if self.prompt.endswith(" "):
            raise InvalidInputError(f"{self.family}: prompt ends with a space: {self.prompt!r}")

    def to_dict(self) -> dict[str, object]:
        return {"family": self.family, "prompt": self.prompt, "answer": self.answer}

    @property
    def uid(self) -> int:
        """A stable id (a signed 64-bit int from sha256 of family, prompt and answer): the
        same example gets the same id in every run, shard and process."""
        digest = hashlib.sha256(f"{self.family}\0{self.prompt}\0{self.answer}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True, kw_only=True)
class Family:
    """A registered task family: synthetic and natural-language generators."""

    name: str
    """Registry key, e.g. ``"ioi"``."""
    description: str
    """One line: what the model must compute."""
    synthetic: Generator
    """Template-based generator for the synthetic suite."""
    natural: Generator
    """Varied natural-language phrasings for the NL suite."""


FAMILIES: dict[str, Family] = {}
"""Registered families, in registration order (the suite's canonical order)."""


def register_family(family: Family) -> Family:
    """Add a family to the registry; a duplicate name is an error."""
    if family.name in FAMILIES:
        raise InvalidInputError(f"task family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown task family {name!r}; known: {', '.join(FAMILIES)}"
        ) from None


MakeExample = Callable[[random.Random, int], Example]
"""Builds one candidate example from the stream and the number of examples kept so far."""


def unique_examples(
    rng: random.Random, n: int, make: MakeExample, *, patience: int = 200
) -> list[Example]:
    """Draw ``n`` examples with ``make``, skipping prompts already drawn.

    ``make(rng, i)`` receives the count ``i`` of examples kept so far, so a generator can
    cycle through its templates with ``i % len(templates)``. Draws are sequential, so the
    first ``k`` examples of ``unique_examples(rng, n, ...)`` equal ``unique_examples(rng, k, ...)``
    for the same stream. After ``patience`` consecutive duplicates (a small item pool) a
    duplicate prompt is kept rather than looping forever.
    """
    if n < 0:
        raise InvalidInputError(f"cannot draw a negative number of examples ({n})")
    out: list[Example] = []
    seen: set[str] = set()
    misses = 0
    while len(out) < n:
        example = make(rng, len(out))
        if example.prompt in seen and misses < patience:
            misses += 1
            continue
        misses = 0
        seen.add(example.prompt)
        out.append(example)
    return out
