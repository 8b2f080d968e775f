"""The experiment runner: plan the tasks, run them through an executor, commit the results.

One result per block × model × seed (DESIGN §6). The driver alone writes results and
registry lines: a task returns its record, and :func:`commit` writes the file atomically,
then appends its registry line. A rerun skips results whose provenance (weights, seed,
size, parameters, suite hash, code version) matches, and re-adds a registry line that a
crash between the two writes left out; ``force`` recomputes. A block that raises is
recorded as failed with its traceback and the others go on.

The command line is :mod:`experiments.run`; the executors (:mod:`experiments.executors`)
import :class:`Task` and :func:`run_task` from here, and :func:`run_plan` takes the
executor's run function as an argument, so this module imports no executor.

    python -m experiments.run --model smollm2-135m --blocks all --size smoke --dry-run
"""

import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.blocks import Block
from experiments.calibration import model_params
from experiments.context import BlockContext, suite_hash
from experiments.host import host_info
from experiments.provenance import outside_closure
from experiments.records import (
    CONTEXT_MODULES,
    Provenance,
    ResultKey,
    code_version,
    file_sha256,
    make_record,
    read_record,
    reusable,
    write_record,
)
from experiments.registry import append_line
from tlatlas.atlas.methods import take_loaded

DEFAULT_SEEDS = {"smoke": (42,), "small": (42, 137, 256), "full": (42, 137, 256)}
"""Seeds per size when ``--seeds`` is not given and the block names none (:func:`block_seeds`)."""


def block_seeds(block: Block, size: str, seeds: Sequence[int] | None = None) -> tuple[int, ...]:
    """The suite seeds ``block`` runs on at ``size``: ``seeds`` (``--seeds``) when given, else
    its parameters' ``suite_seeds`` (a block whose n comes from within one run, e.g. training
    seeds x held-out prompts, may name one), else :data:`DEFAULT_SEEDS`; a block that is not
    ``seeded`` runs on the first."""
    chosen = tuple(int(s) for s in seeds or block.params[size].get("suite_seeds")
                   or DEFAULT_SEEDS[size])
    return chosen if block.seeded else chosen[:1]


@dataclass(frozen=True, kw_only=True)
class Task:
    """One block × model(s) × seed, planned."""

    block: Block
    """The block."""
    models: tuple[str, ...]
    """Its model(s)."""
    key: ResultKey
    """Where its result lives."""
    prov: Provenance | None
    """What a cached result must match (None when the task cannot run)."""
    action: str
    """``run``, ``cached`` or ``skip``."""
    reason: str = ""
    """Why it is skipped or redone."""


def _weights_sha(name: str) -> str:
    from tlatlas.models import resolve_source, weights_sha256

    return weights_sha256(resolve_source(name)[1])


def plan(blocks: Sequence[Block], models: Sequence[str], seeds: Sequence[int] | None, size: str,
         root: Path, *, force: bool = False) -> list[Task]:
    """Every task, and whether it would run, reuse a cached result, or be skipped.
    ``seeds`` None: each block's own (:func:`block_seeds`). A task's parameters are its
    block's at ``size`` with what its model changes (:func:`experiments.calibration.model_params`)."""
    tasks: list[Task] = []
    shas = {m: _weights_sha(m) for m in models}
    for block in blocks:
        version = code_version(block.run.__module__)
        groups = [tuple(models)] if block.models == 2 else [(m,) for m in models]
        for group in groups:
            for seed in block_seeds(block, size, seeds):
                key = ResultKey(block=block.id, model="+".join(group[: block.models]),
                                seed=seed, size=size)
                if len(group) < block.models:
                    tasks.append(Task(block=block, models=group, key=key, prov=None,
                                      action="skip", reason="needs two models: --models A B"))
                    continue
                group = group[: block.models]
                params = {**block.params[size], **model_params(block, group, size)}
                prov = Provenance(weights_sha256=tuple(shas[m] for m in group),
                                  suite_hash=suite_hash(params, seed), code_version=version,
                                  params=params)
                cached = read_record(root, key)
                if not force and reusable(cached, prov):
                    tasks.append(Task(block=block, models=group, key=key, prov=prov,
                                      action="cached"))
                    continue
                why = ("--force" if force and cached else "no result yet" if cached is None
                       else "previous run failed" if cached.get("status") != "ok"
                       else "provenance changed (weights, suite, params or code)")
                tasks.append(Task(block=block, models=group, key=key, prov=prov, action="run",
                                  reason=why))
    return tasks


def run_task(task: Task, root: Path, command: str,
             say: Callable[[str], None] = lambda _: None) -> dict:
    """Run one block and return its record; never raises for a failing block."""
    assert task.prov is not None
    ctx = BlockContext(models=task.models, seed=task.key.seed, size=task.key.size,
                       params=dict(task.prov.params), root=root,
                       code_version=task.prov.code_version, say=say)
    started = time.time()
    take_loaded()  # forget what earlier blocks of this process loaded
    try:
        value, status, error = task.block.run(ctx), "ok", None
        value = {**value, "artifacts": list(ctx.artifacts)}
        outside = outside_closure((task.block.run.__module__, *CONTEXT_MODULES),
                                  take_loaded())
        if outside:
            raise RuntimeError(
                f"{task.block.id} ran {', '.join(outside)}, outside the import closure its "
                f"code version hashes: import it in {task.block.run.__module__}")
    except Exception:  # a failing block is recorded; the others go on
        value, status, error = None, "failed", traceback.format_exc()
    fingerprints = [ctx.fingerprints[m] for m in task.models if m in ctx.fingerprints] or None
    record = make_record(task.key, task.prov, status=status, value=value, error=error,
                         started=started, finished=time.time(), command=command,
                         fingerprints=fingerprints)
    return {**record, "host": host_info()}  # where it ran (not provenance: experiments.host)


def register(root: Path, key: ResultKey, path: Path, status: str) -> bool:
    """Append the registry line of the result at ``path`` (no-op when it is already there)."""
    record = read_record(root, key) or {}
    return append_line(root, {
        "path": key.relpath, "sha256": file_sha256(path), "block": key.block,
        "model": key.model, "seed": key.seed, "size": key.size, "status": status,
        "suite_hash": record.get("suite_hash"), "code_version": record.get("code_version"),
        "finished": record.get("finished"),
    })


def commit(root: Path, task: Task, record: dict) -> Path:
    """Write the result atomically, then its registry line (the driver is the only writer)."""
    path = write_record(root, task.key, record)
    register(root, task.key, path, record["status"])
    return path


def print_plan(tasks: Sequence[Task]) -> None:
    """The plan as a table on stdout: each task, its estimate and its action."""
    print(f"{'#':>3} {'block':22} {'prio':>4} {'model':24} {'seed':>5} {'est.':>7}  action")
    total = 0.0
    for i, t in enumerate(tasks, 1):
        est = t.block.cost[t.key.size].seconds
        total += est if t.action == "run" else 0.0
        note = t.action + (f" ({t.reason})" if t.reason else "")
        print(f"{i:>3} {t.block.id:22} {t.block.priority:>4} {t.key.model[:24]:24} "
              f"{t.key.seed:>5} {est:>6.0f}s  {note}")
    n_run = sum(t.action == "run" for t in tasks)
    print(f"{n_run} to run, {sum(t.action == 'cached' for t in tasks)} cached, "
          f"{sum(t.action == 'skip' for t in tasks)} skipped; estimated {total / 60:.1f} min "
          f"(2-core CPU, 135M model; scale with model size)")


Say = Callable[[str], None]
Execute = Callable[[Sequence[Task], Path, str, Callable[[Task], Say]],
                   Iterable[tuple[Task, dict]]]
"""An executor's run function: ``execute(tasks, root, command, say_for)`` yields
``(task, record)`` as each task finishes (:mod:`experiments.executors`)."""


def run_plan(tasks: Sequence[Task], root: Path, command: str, execute: Execute) -> list[Task]:
    """Run the plan: re-register cached results, run the rest through ``execute`` and commit
    each record as it arrives (the driver is the only writer); returns the failed tasks.

    Progress goes to stderr, the one-line summary to stdout.
    """
    todo = [t for t in tasks if t.action != "skip"]
    heads = {id(t): f"[{i}/{len(todo)}] {t.key.label()}" for i, t in enumerate(todo, 1)}
    failed = []
    for task in todo:
        if task.action == "cached":
            register(root, task.key, root / task.key.relpath, "ok")  # re-adds a lost line
            print(f"{heads[id(task)]}: cached", file=sys.stderr)
    runnable = [t for t in todo if t.action == "run"]
    for t in runnable:
        print(f"{heads[id(t)]}: to run ({t.reason})", file=sys.stderr, flush=True)

    def say_for(task: Task) -> Say:
        return lambda m: print(f"{heads[id(task)]}:   {m}", file=sys.stderr, flush=True)

    results: Iterator[tuple[Task, dict]] = iter(execute(runnable, root, command, say_for))
    for done, (task, record) in enumerate(results, 1):
        path = commit(root, task, record)  # the driver is the only writer
        head = f"{heads[id(task)]} ({done}/{len(runnable)} finished)"
        if record["status"] == "failed":
            failed.append(task)
            last = (record["error"] or "").strip().splitlines()[-1:] or ["?"]
            print(f"{head}: FAILED in {record['wall_s']:.0f}s: {last[0]}", file=sys.stderr)
        else:
            print(f"{head}: done in {record['wall_s']:.0f}s -> {path}", file=sys.stderr)
    for t in tasks:
        if t.action == "skip":
            print(f"skipped {t.key.label()}: {t.reason}", file=sys.stderr)
    print(f"{len(todo) - len(failed)} of {len(todo)} results ok ({len(runnable)} run, "
          f"{len(todo) - len(runnable)} cached)"
          + (f"; failed: {', '.join(t.key.label() for t in failed)}" if failed else ""))
    return failed
