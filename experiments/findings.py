"""``findings.md``: every claim of the origin report, judged by the results tlatlas holds.

The origin report (``shared/origin-report.txt``) made the claims in :data:`ORIGIN_CLAIMS`.
A block's ``summarize`` marks each statement that answers one of them (``origin``, and
``agrees=False`` when the statement asserts the opposite); this module gathers those
statements per claim and model into one table. A model's verdict on a claim:

- each statement's verdict is read *relative to the origin claim* (a statement that asserts
  the opposite and is supported contradicts the claim);
- statements of one model that agree give that verdict; statements that disagree (seeds,
  comparisons) give *inconclusive* and say how they split;
- smoke-size statements are never evidence;
- a claim no model here can test says *not testable here* and why; a claim whose block has
  not run says so;
- a claim that states its own effect size (``claimed``, e.g. NF4's 476×) is contradicted
  by a statement whose interval lies wholly below that size, even when the statement's own
  question (is there *any* effect?) is inconclusive: an amplification of 1.01 [0.99, 1.03]
  does not show whether NF4 amplifies at all, but it does show that it does not amplify 476×;
- a verdict counts the threats (``threats.md``) that cite the same result files, so a reader
  knows when to read them before trusting it;
- a claim about timings (``timed``) names the host its result files were timed on.

Written by ``python -m experiments.claims`` beside claims.md (see there for where).
"""

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from experiments.blocks.base import Statement
from experiments.host import describe

FLIP = {"supported": "contradicted", "contradicted": "supported"}


@dataclass(frozen=True)
class OriginClaim:
    """One claim of the origin report and where tlatlas answers it."""

    id: str
    claim: str
    """What the origin report said, with its numbers."""
    blocks: tuple[str, ...]
    """The experiment blocks whose statements answer it."""
    untestable: str | None = None
    """Why no model on these machines can test it (the row's verdict then), or None."""
    see_also: str | None = None
    """Where a measurement outside the orchestrator bears on it (a doc), or None."""
    claimed: float | None = None
    """The effect size the claim states, on the scale of its statements' ``ci`` (for a
    ratio judged as ``ratio - 1``: the claimed ratio minus 1), or None."""
    claimed_text: str = ""
    """That size as the origin report wrote it (``476×``), for the verdict."""
    timed: bool = False
    """True when the verdict rests on timings: it then belongs to the host they ran on,
    which the row names (:func:`experiments.host.describe`)."""


QWEN = "these machines hold SmolLM2-135M and Gemma-3-270M only (no Qwen weights)"

ORIGIN_CLAIMS: tuple[OriginClaim, ...] = (
    OriginClaim("hub-location", "Each model has one hub layer (SmolLM2-1.7B: L0, one seed; "
                "Qwen2.5-0.5B/1.5B/3B: L2/L14/L34)", ("hub-replication",)),
    OriginClaim("hub-migration", "The hub migrates from early to late layers as model size grows "
                "(Qwen2.5 0.5B → 1.5B → 3B: 8% → 50% → 94% depth)", ("hub-compare",),
                untestable=f"needs one model family at three or more scales; {QWEN}. "
                "hub-compare contrasts two families at normalised depth instead"),
    OriginClaim("own-atlas", "Each model needs its own atlas: hubs sit at different depths in "
                "different models", ("hub-compare",)),
    OriginClaim("seed-std", "The hub replicates across seeds 42, 137, 256 with std = 0.0",
                ("hub-replication",)),
    OriginClaim("suite-breadth", "Hub location depends on suite breadth (1.5B: L26 with 4 "
                "families, L14 with 12)", ("suite-breadth",)),
    OriginClaim("nl-hub", "2,500 natural-language prompts give the same hub as the synthetic "
                "suite", ("nl-hub",)),
    OriginClaim("coder-flip", "Code training moves the hub (Qwen2.5-0.5B L2 → Coder-0.5B L22)",
                (), untestable=f"needs a base model and its code-tuned twin; {QWEN}"),
    OriginClaim("position-bias", "Answer tokens dominate ablation effects at all layers (8.65 "
                "vs BOS 1.57)", ("position-bias",)),
    OriginClaim("mean-useless", "Mean ablation is useless: it gives all-zero effects",
                ("ablation-kinds",)),
    OriginClaim("zero-not-destructive", "Zero ablation is not more destructive than mean "
                "ablation", ("ablation-kinds",)),
    OriginClaim("lora-vs-random", "Atlas-guided LoRA beats random-matched layers at equal "
                "parameters (2–7× lower loss)", ("lora-strategies",)),
    OriginClaim("lora-vs-all-linear", "Atlas-guided LoRA does as well as all-linear with 13.8× "
                "fewer parameters", ("lora-strategies",)),
    OriginClaim("late-layers", "Target late layers for LoRA (the last k layers do best)",
                ("lora-strategies",)),
    OriginClaim("o-proj", "o_proj is the most efficient module (loss 0.33 at 344K params vs "
                "MLP 0.45 at 1.1M)", ("module-sweep",)),
    OriginClaim("nf4-amplifies", "NF4 amplifies steering 476× (KL 10.0 vs bf16 0.021 at "
                "s = −4)", ("steer-quant",), claimed=475.0, claimed_text="476×",
                see_also="docs/steering.md (a `tlatlas steer` run on SmolLM2, fp32 vs NF4)"),
    OriginClaim("nf4-vs-int8-speed", "Use NF4, not int8: int8 is 52% slower, NF4 only 9%",
                ("quant-speed",), timed=True),
    OriginClaim("all-layers-necessary", "All layers are necessary: every skip configuration "
                "leaves 0% top-5 overlap", ("layer-skip",)),
    OriginClaim("c4-steering-controls", "C4 (left broken): steering beats a random-vector "
                "baseline", ("steer-controls",),
                see_also="docs/steering.md (a `tlatlas steer` run on SmolLM2 with both controls)"),
    OriginClaim("g1-steering-transfer", "G1 (left broken): steering directions transfer "
                "across models", ("steer-transfer",)),
    OriginClaim("g3-lockin", "G3 (left broken): the hub stays put while a LoRA adapter "
                "trains (checkpoint lock-in)", ("checkpoint-lockin",)),
    OriginClaim("g4-skip-recovery", "G4 (left broken): atlas-guided layer skip, then a "
                "recovery fine-tune", ("layer-skip",)),
)
BY_ID = {c.id: c for c in ORIGIN_CLAIMS}


def relative_verdict(s: Statement) -> str:
    """``s``'s verdict on its origin claim (flipped when ``s`` asserts the opposite; a
    statement whose interval lies wholly below the size the claim states contradicts it)."""
    if _below_claimed(s):
        return "contradicted"
    v = s.verdict or "inconclusive"
    return v if s.agrees else FLIP.get(v, v)


def _below_claimed(s: Statement) -> bool:
    """Whether ``s`` (evidence, not smoke) measures its claim's effect wholly below the size
    the claim states."""
    claimed = BY_ID[s.origin].claimed if s.origin in BY_ID else None
    return (claimed is not None and s.agrees and s.ci is not None and s.ci[1] < claimed
            and s.verdict != "smoke: not evidence")


def combined_verdict(verdicts: Iterable[str]) -> str:
    """One verdict from several statements (rule in the module docstring)."""
    counts = Counter(verdicts)
    if not counts:
        return "not run yet"
    if set(counts) == {"smoke: not evidence"}:
        return "smoke: not evidence"
    counts.pop("smoke: not evidence", None)
    if len(counts) == 1:
        return next(iter(counts))
    split = ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
    return f"inconclusive (statements split: {split})"


def _seed_of(s: Statement) -> str | None:
    """The seed of a one-record statement, from its result file's name (``small-seed42``)."""
    if len(s.sources) != 1:
        return None
    m = re.search(r"-seed(\d+)\.json$", s.sources[0])
    return m.group(1) if m else None


def _cell(s: Statement) -> str:
    value = s.value or "—"
    seed = _seed_of(s)
    if seed is not None and "seed" not in value:
        value = f"seed {seed}: {value}"
    parts = [value]
    if s.n is not None:
        parts.append(f"n = {s.n}")
    if s.ci is not None:
        parts.append(f"95% CI [{s.ci[0]:.3g}, {s.ci[1]:.3g}]")
    return f"{parts[0]} ({', '.join(parts[1:])})" if len(parts) > 1 else parts[0]


def check_origins(statements: Iterable[Statement]) -> None:
    """Every ``origin`` a statement names is a known origin claim."""
    unknown = sorted({s.origin for s in statements if s.origin and s.origin not in BY_ID})
    if unknown:
        raise ValueError(f"statements answer unknown origin claims {unknown}; known: "
                         f"{', '.join(BY_ID)}")


def render_findings(statements: list[Statement], command: str,
                    hosts: Mapping[str, dict | None] | None = None) -> str:
    """The findings table (markdown) from every statement of ``experiments.claims``.

    ``hosts`` maps a result file (as statements cite it) to its record's ``host``; a row
    whose claim is :attr:`OriginClaim.timed` names the hosts of its files ("an unrecorded
    host" for a file missing from it or without one)."""
    check_origins(statements)
    threats = [s for s in statements if s.kind == "threat"]
    by: dict[str, dict[str, list[Statement]]] = defaultdict(lambda: defaultdict(list))
    for s in statements:
        if s.origin and s.kind in ("claim", "gem"):
            by[s.origin][s.model or "?"].append(s)
    lines = [
        "# Findings: the origin report's claims, judged", "",
        f"_Generated by `{command}` from the result files; do not edit by hand. Each row is "
        "one claim of `shared/origin-report.txt`; each model's cell lists the statements that "
        "answer it (value, n, 95% bootstrap CI) and its verdict on the claim by the rule of "
        "`experiments/findings.py`. Full sentences are in `experiments/claims.md`._", "",
        "| Origin claim | Model | Measured | Verdict | Result files |",
        "|---|---|---|---|---|",
    ]
    for c in ORIGIN_CLAIMS:
        models = by.get(c.id, {})
        if not models:
            verdict = (f"not testable here: {c.untestable}" if c.untestable else
                       f"not run yet ({', '.join(c.blocks)})")
            if c.see_also:
                verdict += f"; see also {c.see_also}"
            lines.append(f"| {c.claim} | — | — | {verdict} | — |")
            continue
        for i, (model, items) in enumerate(sorted(models.items())):
            items = sorted(items, key=lambda s: int(_seed_of(s) or -1))
            measured = "<br>".join(_cell(s) for s in items)
            verdict = combined_verdict(relative_verdict(s) for s in items)
            if any(_below_claimed(s) for s in items):
                verdict += f" (the claimed {c.claimed_text} lies above every interval)"
            if c.untestable:
                verdict = f"not testable here: {c.untestable} (measured: {verdict})"
            if c.timed:
                on = dict.fromkeys(describe((hosts or {}).get(p)) for s in items for p in s.sources)
                verdict += f"; timed on {' and '.join(on)}: timings belong to their host"
            sources = {p for s in items for p in s.sources}
            n_threats = sum(1 for t in threats if sources & set(t.sources))
            if n_threats:
                verdict += (f"; {n_threats} threat{'s' if n_threats > 1 else ''} in threats.md "
                            f"{'cite' if n_threats > 1 else 'cites'} these files")
            files = "<br>".join(dict.fromkeys(f"`{p}`" for s in items for p in s.sources))
            lines.append(f"| {c.claim if i == 0 else '〃'} | {model} | {measured} | {verdict} "
                         f"| {files} |")
    return "\n".join(lines) + "\n"
