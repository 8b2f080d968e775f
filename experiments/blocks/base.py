"""The block types and the block registry: what a block module imports.

The built-in block modules (``atlas_blocks``, ``lora_blocks``, ``steering_blocks``) import
:class:`Block`, :class:`Statement`, :func:`register_block` and the shared helpers from here;
:mod:`experiments.blocks` re-exports them (a plugin may import either) and imports the block
modules when the registry is first used, so a block module never imports the package that
loads it.
"""

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SIZES = ("smoke", "small", "full")
"""Run sizes: ``smoke`` proves the pipeline on a CPU in minutes, ``full`` is the study."""


@dataclass(frozen=True, kw_only=True)
class Cost:
    """A block's estimated cost for one model and seed."""

    seconds: float
    """Wall time on a 2-core CPU for a 135M-parameter model (scale by model size)."""
    memory_gb: float = 2.0
    """Peak host (or GPU) memory."""
    gpus: float = 0.0
    """GPUs to request from a cluster scheduler (0: CPU is fine)."""


def size_costs(smoke: float, small: float, full: float, *, memory: float = 2.0,
               full_memory: float | None = None) -> dict[str, Cost]:
    """Costs per size from seconds per size; ``full`` asks for a GPU."""
    return {"smoke": Cost(seconds=smoke, memory_gb=memory),
            "small": Cost(seconds=small, memory_gb=memory),
            "full": Cost(seconds=full, memory_gb=full_memory or memory, gpus=1.0)}


@dataclass(frozen=True, kw_only=True)
class Statement:
    """One sentence of claims.md / threats.md / gems.md, backed by results.

    A claim carries the evidence it rests on: ``n``, a 95% interval ``ci`` and a
    ``verdict`` reached by the rule its block's docstring states. A gem is a supported
    finding only. A statement computed at smoke size says so (its verdict is
    ``smoke: not evidence``) and is never a gem.
    """

    kind: str
    """``claim``, ``threat`` or ``gem``."""
    text: str
    """The sentence, with the measured values written into it."""
    sources: tuple[str, ...]
    """Result files (relative to the experiments root) the values come from."""
    n: int | None = None
    """Observations the statement rests on (examples, pairs, seeds x prompts)."""
    ci: tuple[float, float] | None = None
    """95% interval of the statistic the verdict is about."""
    verdict: str | None = None
    """One of :data:`VERDICTS`."""
    origin: str | None = None
    """The origin report's claim this statement answers (an id of
    :data:`experiments.findings.ORIGIN_CLAIMS`), if any."""
    agrees: bool = True
    """False when the statement asserts the *opposite* of that origin claim (its verdict
    then counts the other way in ``findings.md``)."""
    model: str | None = None
    """The model (or ``A -> B`` pair) the statement is about, for ``findings.md``."""
    value: str | None = None
    """The measured value in a few words (``L3``, ``0.41 nats``), for ``findings.md``."""

    def __post_init__(self) -> None:
        if self.kind not in ("claim", "threat", "gem"):
            raise ValueError(f"statement kind must be claim, threat or gem, got {self.kind!r}")
        if not self.sources:
            raise ValueError("a statement must cite at least one result file")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.kind == "claim" and (self.n is None or self.verdict is None):
            raise ValueError(f"a claim needs n and a verdict: {self.text}")
        if self.kind == "gem" and self.verdict != "supported":
            raise ValueError(f"a gem must be a supported finding (verdict {self.verdict!r}): "
                             f"{self.text}")

    @property
    def evidence(self) -> str:
        """``n = 120, 95% CI [0.10, 0.32]; supported`` (empty for a bare threat)."""
        parts = []
        if self.n is not None:
            parts.append(f"n = {self.n}")
        if self.ci is not None:
            parts.append(f"95% CI [{self.ci[0]:.3g}, {self.ci[1]:.3g}]")
        head = ", ".join(parts)
        if self.verdict is None:
            return head
        return f"{head}; {self.verdict}" if head else self.verdict


VERDICTS = ("supported", "contradicted", "inconclusive", "smoke: not evidence",
            "not testable here")
"""What a claim can conclude. The rule that reaches one is in each block's docstring."""


def judged(text: str, interval, *, size: str, sources: tuple[str, ...], kind: str = "claim",
           smoke_sizes: tuple[str, ...] = ("smoke",), **origin: Any) -> Statement:
    """A claim about ``interval`` (a :class:`tlatlas.stats.Interval`): supported when its
    95% CI lies above 0, contradicted when below, else inconclusive (the default rule);
    at smoke size never evidence. ``origin`` sets the findings fields (``origin``,
    ``agrees``, ``model``, ``value``)."""
    from tlatlas.stats import verdict

    v = verdict(interval, smoke=size in smoke_sizes)
    return Statement(kind=kind if kind != "gem" or v == "supported" else "claim", text=text,
                     sources=sources, n=interval.n, ci=(interval.ci_low, interval.ci_high),
                     verdict=v, **origin)


@dataclass(frozen=True, kw_only=True)
class Block:
    """One experiment."""

    id: str
    """Short stable id used on the command line and in file names."""
    priority: int
    """Lower runs first."""
    question: str
    """The one-line question the block answers."""
    params: Mapping[str, Mapping[str, Any]]
    """Parameters per size (``smoke``/``small``/``full``); recorded in every result."""
    cost: Mapping[str, Cost]
    """Estimated cost per size."""
    run: Callable[[Any], dict]
    """``run(ctx: experiments.context.BlockContext) -> dict`` (JSON-able)."""
    models: int = 1
    """How many models the block compares (2: needs ``--models A B``)."""
    seeded: bool = True
    """False when the seed changes nothing (e.g. a timing): run once, with the first seed."""
    summarize: Callable[[dict[str, list[dict]]], list[Statement]] | None = None
    """Statements from finished records: ``results[block_id]`` lists records (with ``path``)."""
    tags: tuple[str, ...] = field(default=())
    """Free-form labels (``atlas``, ``lora``, ``steering``, ``quant``)."""

    def __post_init__(self) -> None:
        if not self.id or not self.id.replace("-", "").isalnum():
            raise ValueError(f"block id must be alphanumeric with dashes, got {self.id!r}")
        for what, table in (("params", self.params), ("cost", self.cost)):
            missing = [s for s in SIZES if s not in table]
            if missing:
                raise ValueError(f"block {self.id}: {what} has no entry for sizes {missing}")
        if self.models not in (1, 2):
            raise ValueError(f"block {self.id}: models must be 1 or 2")


BLOCKS: dict[str, Block] = {}


def register_block(block: Block) -> Block:
    """Add ``block`` to the registry; a second block with the same id is an error."""
    if block.id in BLOCKS:
        raise ValueError(f"an experiment block named {block.id!r} is already registered")
    BLOCKS[block.id] = block
    return block


def by_model_size(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Records grouped by ``(model, size)``, in first-seen order (a block's summaries)."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        out[(r["model"], r["size"])].append(r)
    return dict(out)
