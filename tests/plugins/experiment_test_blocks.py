"""Experiment blocks for the orchestrator's tests (loaded via $TLATLAS_EXPERIMENT_PLUGINS).

Each run appends a line to ``$TLATLAS_TEST_MARKS`` (when set), so tests count executions;
``t-slow`` sleeps ``$TLATLAS_TEST_SLEEP`` seconds after saying it started.
"""

import os
import time

from experiments.blocks import Block, Cost, Statement, register_block

PARAMS = {s: {"per_family": 1, "families": ["json"]} for s in ("smoke", "small", "full")}
COST = {s: Cost(seconds=1) for s in ("smoke", "small", "full")}


def _mark(text: str) -> None:
    marks = os.environ.get("TLATLAS_TEST_MARKS")
    if marks:
        with open(marks, "a") as fh:
            fh.write(text + "\n")
            fh.flush()


def _fast(name):
    def run(ctx):
        _mark(f"{name} {ctx.seed}")
        return {"double_seed": 2 * ctx.seed, "n_examples": len(ctx.suite())}
    return run


def _slow(ctx):
    _mark(f"t-slow started {ctx.seed}")
    time.sleep(float(os.environ.get("TLATLAS_TEST_SLEEP", "0")))
    _mark(f"t-slow {ctx.seed}")
    return {"slept": True}


def _fail(ctx):
    _mark(f"t-fail {ctx.seed}")
    raise ValueError("boom: this block always fails")


def _die_once(ctx):
    """Kill this worker process the first time (a Ray worker dying mid-block)."""
    flag = os.environ["TLATLAS_TEST_MARKS"] + ".died"
    if not os.path.exists(flag):
        open(flag, "w").close()
        _mark(f"t-die-once died {ctx.seed}")
        os._exit(1)
    _mark(f"t-die-once {ctx.seed}")
    return {"survived": True, "pid": os.getpid()}


def _lazy_verify(ctx):
    """Load the verification by name, as ``build_atlas(method="verify")`` does, from a
    module whose import closure does not hold it."""
    from tlatlas.atlas.methods import sums_function

    _mark(f"t-lazy-verify {ctx.seed}")
    return {"loaded": sums_function("verify").__module__}


def _summarize(results):
    return [Statement(kind="claim", sources=(r["path"],), n=1, verdict="smoke: not evidence",
                      text=f"t-fast-a doubled seed {r['seed']} to {r['value']['double_seed']}.")
            for r in results.get("t-fast-a", [])]


for _id, _prio, _run in (("t-fast-a", 1001, _fast("t-fast-a")), ("t-slow", 1002, _slow),
                         ("t-fail", 1003, _fail), ("t-fast-c", 1004, _fast("t-fast-c")),
                         ("t-die-once", 1005, _die_once), ("t-lazy-verify", 1006, _lazy_verify)):
    register_block(Block(id=_id, priority=_prio, question=f"test block {_id}", params=PARAMS,
                         cost=COST, run=_run, tags=("test",),
                         summarize=_summarize if _id == "t-fast-a" else None))
