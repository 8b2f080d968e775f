"""``agreement``: subject-verb number agreement across an attractor noun.

The subject is followed by a prepositional phrase whose noun (the attractor) has the same
or the opposite number; the answer is `` is``/`` are`` (present) or `` was``/`` were``
(past), agreeing with the subject.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples

NAME = "agreement"

SUBJECTS: tuple[tuple[str, str], ...] = (
    ("key", "keys"), ("dog", "dogs"), ("book", "books"), ("teacher", "teachers"),
    ("car", "cars"), ("box", "boxes"), ("child", "children"), ("man", "men"),
    ("woman", "women"), ("bottle", "bottles"), ("picture", "pictures"),
    ("student", "students"), ("house", "houses"), ("letter", "letters"), ("lamp", "lamps"),
    ("painting", "paintings"), ("cup", "cups"), ("doctor", "doctors"), ("flower", "flowers"),
    ("toy", "toys"),
)
ATTRACTORS: tuple[tuple[str, str], ...] = (
    ("cabinet", "cabinets"), ("table", "tables"), ("window", "windows"), ("tree", "trees"),
    ("door", "doors"), ("garden", "gardens"), ("river", "rivers"), ("building", "buildings"),
    ("chair", "chairs"), ("shelf", "shelves"), ("wall", "walls"), ("desk", "desks"),
    ("school", "schools"), ("office", "offices"),
)
PREPOSITIONS = ("near", "on", "next to", "behind", "by", "beside", "under", "in front of",
                "from", "with", "for")
VERBS = {("present", "sg"): " is", ("present", "pl"): " are",
         ("past", "sg"): " was", ("past", "pl"): " were"}


def _phrase(rng: random.Random) -> tuple[str, str, str]:
    """``the keys near the cabinet`` with the subject's number and the attractor's number."""
    subj_num, attr_num = rng.choice(("sg", "pl")), rng.choice(("sg", "pl"))
    subj = rng.choice(SUBJECTS)[subj_num == "pl"]
    attr = rng.choice(ATTRACTORS)[attr_num == "pl"]
    return f"the {subj} {rng.choice(PREPOSITIONS)} the {attr}", subj_num, attr_num


SYNTHETIC = (
    ("present", "{NP}"),
    ("past", "{NP}"),
    ("present", "I think that {np}"),
    ("past", "Yesterday {np}"),
)

NATURAL = (
    ("present", "Everyone in the family knows that {np}"),
    ("past", "According to the old report, {np}"),
    ("present", "Q: Did anything change while I was away?\nA: Not much, but {np}"),
    ("past", "When the police arrived last night, {np}"),
    ("present", "User: Can you check the room for me?\nAssistant: Sure. Right now {np}"),
    ("past", "In the story my grandmother told me, {np}"),
    ("present", "Please note that, as of today, {np}"),
)
"""Sentences in which the noun phrase is the subject of the next verb."""


def _make(table: tuple[tuple[str, str], ...], prefix: str, rng: random.Random, i: int) -> Example:
    t = i % len(table)
    tense, template = table[t]
    np, subj_num, attr_num = _phrase(rng)
    prompt = template.format(np=np, NP=np[0].upper() + np[1:])
    return Example(family=NAME, prompt=prompt, answer=VERBS[tense, subj_num],
                   meta={"template": f"{prefix}{t}", "number": subj_num,
                         "attractor": "match" if subj_num == attr_num else "mismatch"})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """``The keys to the cabinet`` -> `` are`` style noun phrases."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, "agr", r, i))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Sentences, questions and chat turns that end on the noun phrase."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, "nl", r, i))


FAMILY = Family(
    name=NAME,
    description="Choose the verb form that agrees in number with the subject.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
