"""The task suite: twelve families, a registry, the synthetic and NL suites, suite hashing.

Importing this package registers the families in canonical order: json, factual, code,
arithmetic, induction, ioi, sequence, antonym, translation, agreement, sentiment,
deobfuscation.
"""

from tlatlas.tasks import (
    agreement,
    antonym,
    arithmetic,
    code_completion,
    deobfuscation,
    factual,
    induction,
    ioi,
    json_values,
    sentiment,
    sequence,
    translation,
)
from tlatlas.tasks.base import FAMILIES, Example, Family, get_family, register_family
from tlatlas.tasks.suite import (
    DEFAULT_SEED,
    NL_TOTAL,
    SYNTHETIC_TOTAL,
    AnswerProblem,
    Suite,
    build_suite,
    scored_token_ids,
    validate_answers,
)

CANONICAL_ORDER = (json_values, factual, code_completion, arithmetic, induction, ioi, sequence,
                   antonym, translation, agreement, sentiment, deobfuscation)
"""Family modules in registration (canonical suite) order; import order does not matter."""

for _module in CANONICAL_ORDER:
    if _module.FAMILY.name not in FAMILIES:
        register_family(_module.FAMILY)

__all__ = [
    "DEFAULT_SEED",
    "FAMILIES",
    "NL_TOTAL",
    "SYNTHETIC_TOTAL",
    "AnswerProblem",
    "Example",
    "Family",
    "Suite",
    "build_suite",
    "get_family",
    "register_family",
    "scored_token_ids",
    "validate_answers",
]
