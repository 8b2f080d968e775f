"""``sentiment``: label a short review `` positive`` or `` negative``.

Reviews are composed from an item, an opinion clause and an optional follow-up clause of
the same polarity, so every review is clear-cut.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples

NAME = "sentiment"
ITEMS = ("film", "movie", "book", "restaurant", "meal", "hotel", "phone", "show", "album",
         "game", "concert", "laptop", "cafe", "play", "camera", "course")
OPINIONS: dict[str, tuple[str, ...]] = {
    "positive": (
        "I loved this {x}.", "This {x} was wonderful.", "What a fantastic {x}!",
        "The {x} was excellent.", "I really enjoyed the {x}.", "An amazing {x}.",
        "The {x} was a delight from start to finish.", "Best {x} in years.",
        "I adored this {x}.", "The {x} was brilliant.",
    ),
    "negative": (
        "I hated this {x}.", "This {x} was awful.", "What a terrible {x}!",
        "The {x} was boring.", "I really disliked the {x}.", "A horrible {x}.",
        "The {x} was a disaster from start to finish.", "Worst {x} in years.",
        "I regret paying for this {x}.", "The {x} was dreadful.",
    ),
}
FOLLOW_UPS: dict[str, tuple[str, ...]] = {
    "positive": ("", " Highly recommended.", " I would happily go back.", " Five stars.",
                 " Everyone should try it.", " It made my day."),
    "negative": ("", " Not recommended.", " I want my money back.", " One star.",
                 " Avoid it.", " It ruined my day."),
}
LABELS = ("positive", "negative")


def _review(rng: random.Random, label: str) -> str:
    item = rng.choice(ITEMS)
    return rng.choice(OPINIONS[label]).format(x=item) + rng.choice(FOLLOW_UPS[label])


SYNTHETIC = (
    "Review: {r}\nSentiment:",
    "Review: {d}\nSentiment: {dl}\nReview: {r}\nSentiment:",
    "Text: {r}\nLabel:",
)

NATURAL = (
    "Q: Is the following review positive or negative? \"{r}\"\nA: It is",
    "User: A customer wrote: \"{r}\" Was that feedback positive or negative?\nAssistant: "
    "The feedback was",
    "I read this comment online: \"{r}\" Overall, the tone of the comment is",
    "Tweet: {r}\nThe feeling expressed in this tweet is",
    "My friend texted me, \"{r}\" I would call that a",
    "Question: what is the sentiment of \"{r}\"?\nAnswer:",
    "Customer feedback form. Comment: {r} Our team marked this comment as",
)


def _make(table: tuple[str, ...], prefix: str, rng: random.Random, i: int) -> Example:
    t = i % len(table)
    label = LABELS[(i // len(table)) % 2]
    demo_label = rng.choice(LABELS)
    prompt = table[t].format(r=_review(rng, label), d=_review(rng, demo_label), dl=demo_label)
    return Example(family=NAME, prompt=prompt, answer=f" {label}",
                   meta={"template": f"{prefix}{t}", "label": label})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """``Review: ...\\nSentiment:`` -> `` positive``/`` negative``, balanced."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, "sent", r, i))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Questions, chat turns, tweets and feedback forms, balanced."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, "nl", r, i))


FAMILY = Family(
    name=NAME,
    description="Label a short review as positive or negative.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
