"""Task suites: build, hash, sample and shard; check answers against a tokenizer.

A suite is an ordered tuple of examples grouped by family in canonical (registration)
order. Each family draws from its own stream ``random.Random(f"{seed}:{kind}:{family}")``
(string seeds hash with SHA-512, not Python's salted ``hash()``), so a suite is identical
across processes and a family's examples do not depend on which other families are built.
"""

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, runtime_checkable

from tlatlas.errors import InvalidInputError, UnknownNameError
from tlatlas.tasks.base import FAMILIES, Example, get_family

SYNTHETIC_TOTAL = 4300
"""Examples in the default synthetic suite."""
NL_TOTAL = 2500
"""Prompts in the default natural-language suite."""
DEFAULT_SEED = 42
"""Seed of the default suites."""
FORMAT_VERSION = 1
"""Version of ``Suite.to_dict``'s layout."""

SuiteKind = Literal["synthetic", "nl"]
KINDS: tuple[str, ...] = ("synthetic", "nl")


def canonical_order(names: Sequence[str]) -> tuple[str, ...]:
    """Registered names in registration order, then any unregistered ones as first seen."""
    present = dict.fromkeys(names)
    return tuple(n for n in FAMILIES if n in present) + tuple(
        n for n in present if n not in FAMILIES)


@dataclass(frozen=True, kw_only=True)
class Suite:
    """An ordered, hashable set of scored examples."""

    kind: SuiteKind
    """``"synthetic"`` (template prompts) or ``"nl"`` (natural-language phrasings)."""
    seed: int
    """Seed the examples were drawn with."""
    examples: tuple[Example, ...]
    """Examples grouped by family in canonical order."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown suite kind {self.kind!r}; known: {', '.join(KINDS)}")
        if not isinstance(self.examples, tuple):
            object.__setattr__(self, "examples", tuple(self.examples))

    @property
    def families(self) -> tuple[str, ...]:
        """Names of the families present, in canonical order."""
        return canonical_order([ex.family for ex in self.examples])

    def by_family(self) -> dict[str, tuple[Example, ...]]:
        """Examples of each family, in canonical family order and suite order within."""
        groups: dict[str, list[Example]] = {name: [] for name in self.families}
        for ex in self.examples:
            groups[ex.family].append(ex)
        return {name: tuple(exs) for name, exs in groups.items()}

    def counts(self) -> dict[str, int]:
        """Number of examples per family."""
        return {name: len(exs) for name, exs in self.by_family().items()}

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 hex digest of the canonical JSON of ``(family, prompt, answer)`` rows."""
        rows = [[ex.family, ex.prompt, ex.answer] for ex in self.examples]
        text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def _regroup(self, groups: dict[str, Sequence[Example]]) -> "Suite":
        examples = tuple(ex for name in canonical_order(list(groups)) for ex in groups[name])
        return Suite(kind=self.kind, seed=self.seed, examples=examples)

    def subset(self, families: Sequence[str]) -> "Suite":
        """The examples of ``families`` only (canonical order; an absent family is a KeyError)."""
        groups = self.by_family()
        if isinstance(families, str):
            families = [families]
        missing = [name for name in families if name not in groups]
        if missing:
            raise UnknownNameError(f"families {missing} are not in this suite; present: "
                           f"{', '.join(groups)}")
        return self._regroup({name: groups[name] for name in families})

    def stratified(self, per_family: int, seed: int | None = None) -> "Suite":
        """A deterministic sample of ``per_family`` examples of each family.

        The sample of each family is drawn with ``random.Random(f"{seed}:stratified:{family}")``
        (``seed`` defaults to the suite's) and keeps suite order.
        """
        if per_family < 1:
            raise InvalidInputError(f"per_family must be >= 1, got {per_family}")
        seed = self.seed if seed is None else seed
        groups = self.by_family()
        short = {name: len(exs) for name, exs in groups.items() if len(exs) < per_family}
        if short:
            raise InvalidInputError(f"cannot sample {per_family} per family; too few examples in {short}")
        sampled = {}
        for name, exs in groups.items():
            rng = random.Random(f"{seed}:stratified:{name}")
            keep = sorted(rng.sample(range(len(exs)), per_family))
            sampled[name] = [exs[i] for i in keep]
        return self._regroup(sampled)

    def shard(self, index: int, count: int) -> "Suite":
        """Disjoint stratified slice ``index`` of ``count``: examples ``index::count`` of each family.

        The shards ``0..count-1`` partition the suite.
        """
        if count < 1:
            raise InvalidInputError(f"shard count must be >= 1, got {count}")
        if not 0 <= index < count:
            raise InvalidInputError(f"shard index must be in [0, {count}), got {index}")
        return self._regroup({name: exs[index::count] for name, exs in self.by_family().items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: format tag and version, kind, seed, hash, counts and examples."""
        return {
            "format": "tlatlas.suite",
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "seed": self.seed,
            "content_hash": self.content_hash,
            "counts": self.counts(),
            "examples": [ex.to_dict() | {"meta": dict(ex.meta)} for ex in self.examples],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Suite":
        """Inverse of ``to_dict``; checks the format version and the content hash."""
        if data.get("format") != "tlatlas.suite" or data.get("format_version") != FORMAT_VERSION:
            raise InvalidInputError(f"not a tlatlas suite of format version {FORMAT_VERSION}: "
                             f"{data.get('format')!r} v{data.get('format_version')!r}")
        suite = cls(kind=data["kind"], seed=int(data["seed"]), examples=tuple(
            Example(family=e["family"], prompt=e["prompt"], answer=e["answer"],
                    meta=dict(e.get("meta", {}))) for e in data["examples"]))
        if "content_hash" in data and data["content_hash"] != suite.content_hash:
            raise InvalidInputError("suite content hash does not match its examples")
        return suite


def default_counts(kind: SuiteKind, names: Sequence[str] | None = None) -> dict[str, int]:
    """Per-family sizes of the default suite: the total split as evenly as possible.

    The split is over all registered families (the first ``total % n`` get one more), then
    restricted to ``names``, so a partial suite equals the full suite's subset.
    """
    total = {"synthetic": SYNTHETIC_TOTAL, "nl": NL_TOTAL}[kind]
    everyone = list(FAMILIES)
    base, extra = divmod(total, len(everyone))
    counts = {name: base + (i < extra) for i, name in enumerate(everyone)}
    return counts if names is None else {name: counts[name] for name in names}


def build_suite(
    kind: SuiteKind = "synthetic",
    *,
    seed: int = DEFAULT_SEED,
    per_family: int | None = None,
    families: Sequence[str] | None = None,
) -> Suite:
    """Build the synthetic or NL suite for ``seed``.

    ``per_family=N`` draws N examples of each family from the same streams, so for N up to
    the default size it is the first N examples of each family of the full suite.
    ``families`` restricts (and canonically orders) the families; unknown ones raise KeyError.
    """
    if kind not in KINDS:
        raise InvalidInputError(f"unknown suite kind {kind!r}; known: {', '.join(KINDS)}")
    if per_family is not None and per_family < 1:
        raise InvalidInputError(f"per_family must be >= 1, got {per_family}")
    if not FAMILIES:
        raise RuntimeError("no task families are registered; import tlatlas.tasks")
    if isinstance(families, str):
        families = [families]
    names = list(FAMILIES) if families is None else [get_family(n).name for n in families]
    names = list(canonical_order(names))
    sizes = default_counts(kind, names) if per_family is None else dict.fromkeys(names, per_family)
    examples: list[Example] = []
    for name in names:
        family = get_family(name)
        generate = family.synthetic if kind == "synthetic" else family.natural
        drawn = generate(random.Random(f"{seed}:{kind}:{name}"), sizes[name])
        if len(drawn) != sizes[name] or any(ex.family != name for ex in drawn):
            raise RuntimeError(f"family {name!r} returned {len(drawn)} examples "
                               f"(wanted {sizes[name]}) or examples of another family")
        examples.extend(drawn)
    return Suite(kind=kind, seed=seed, examples=tuple(examples))


# ----------------------------------------------------------------------------- answers


@runtime_checkable
class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer that answer checks use."""

    def __call__(self, text: Any, add_special_tokens: bool = ...) -> Any: ...

    def decode(self, token_ids: Any) -> str: ...


@dataclass(frozen=True, kw_only=True)
class AnswerProblem:
    """An example whose scored token is not well-formed for a tokenizer."""

    example: Example
    """The offending example."""
    reason: str
    """What is wrong, in words."""


def _ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [list(map(int, row)) for row in ids]


def _check(example: Example, prompt_ids: list[int], full_ids: list[int],
           tokenizer: Tokenizer, allow_whitespace: bool) -> str | None:
    """Why the example is ill-formed, or None."""
    n = len(prompt_ids)
    if full_ids[:n] != prompt_ids:
        return (f"answer merges with the prompt: prompt tokens {prompt_ids[-3:]} are not a "
                f"prefix of prompt+answer tokens {full_ids[max(n - 3, 0):n + 2]}")
    if len(full_ids) == n:
        return "answer adds no token"
    piece = tokenizer.decode([full_ids[n]])
    answer = example.answer
    if not piece:
        return f"first answer token {full_ids[n]} decodes to an empty string"
    # Tolerate decoders that drop the leading space of a word-initial token ("▁Paris" -> "Paris").
    if not (answer.startswith(piece) or (answer[:1].isspace() and piece.strip()
                                         and answer.lstrip().startswith(piece.lstrip()))):
        return f"first answer token decodes to {piece!r}, not a prefix of {answer!r}"
    if not allow_whitespace and not piece.strip() and answer.strip():
        return f"first answer token is whitespace only ({piece!r}) before {answer.strip()!r}"
    return None


def _analyse(examples: list[Example], tokenizer: Tokenizer, allow_whitespace: bool
             ) -> tuple[list[AnswerProblem], list[int | None]]:
    """Problems, and each example's first answer token id (None where ill-formed)."""
    prompt_ids = _ids(tokenizer, [ex.prompt for ex in examples])
    full_ids = _ids(tokenizer, [ex.prompt + ex.answer for ex in examples])
    problems: list[AnswerProblem] = []
    targets: list[int | None] = []
    for ex, p_ids, f_ids in zip(examples, prompt_ids, full_ids, strict=True):
        reason = _check(ex, p_ids, f_ids, tokenizer, allow_whitespace)
        if reason is None:
            targets.append(f_ids[len(p_ids)])
        else:
            problems.append(AnswerProblem(example=ex, reason=reason))
            targets.append(None)
    return problems, targets


def validate_answers(
    examples: Sequence[Example] | Suite, tokenizer: Tokenizer, *, allow_whitespace: bool = False
) -> list[AnswerProblem]:
    """Examples whose scored token is not well-formed for ``tokenizer``.

    Well-formed: the prompt's ids (``add_special_tokens=False``) are a prefix of the ids of
    ``prompt + answer``, at least one token follows, and that first answer token decodes to a
    non-empty prefix of ``answer`` (a dropped leading space is tolerated). Unless
    ``allow_whitespace``, a whitespace-only first token before a non-blank answer is also a
    problem: with digit-splitting vocabularies `` 19`` scores a bare space, the same token
    for every example.
    """
    return _analyse(list(examples), tokenizer, allow_whitespace)[0]


def scored_token_ids(examples: Sequence[Example] | Suite, tokenizer: Tokenizer, *,
                     allow_whitespace: bool = False) -> list[int]:
    """The id of each example's first answer token (the scored target), in order.

    Raises ValueError when an example is ill-formed (see ``validate_answers``, whose
    ``allow_whitespace`` this shares).
    """
    problems, targets = _analyse(list(examples), tokenizer, allow_whitespace)
    if problems:
        shown = "; ".join(f"{p.example.prompt[-40:]!r}+{p.example.answer!r}: {p.reason}"
                          for p in problems[:3])
        raise InvalidInputError(f"{len(problems)} ill-formed answer(s), e.g. {shown}")
    return [t for t in targets if t is not None]
