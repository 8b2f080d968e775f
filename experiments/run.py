"""The experiment orchestrator: every block for a model, a dry run, and a registry of results.

    python -m experiments.run --model smollm2-135m --blocks all --size smoke
    python -m experiments.run --model smollm2-135m --blocks all --size smoke --dry-run
    python -m experiments.run --models smollm2-135m gemma3-270m --blocks hub-compare,steer-transfer
    cd /tmp && python -m experiments.run --model smollm2-135m --dry-run --root /path/to/repo/experiments

One result per block × model × seed (DESIGN §6), under the experiments root (``--root``;
default: the repository's ``experiments/`` directory from a source checkout, see
:mod:`experiments.paths`). A rerun skips results whose provenance matches; ``--force``
recomputes. A block that raises is recorded as failed with its traceback and the others go
on; the exit status is 1 when any block failed. This module is the command line only:
planning, running and committing results is :mod:`experiments.runner`, where blocks execute
is :mod:`experiments.executors`.
"""

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from experiments.blocks import SIZES, select_blocks
from experiments.executors import EXECUTORS, executor
from experiments.paths import add_root_argument, root_from
from experiments.runner import (
    DEFAULT_SEEDS,
    Task,
    block_seeds,
    commit,
    plan,
    print_plan,
    register,
    run_plan,
    run_task,
)

__all__ = ["DEFAULT_SEEDS", "Task", "block_seeds", "build_parser", "commit", "main", "plan", "print_plan",
           "register", "run_plan", "run_task"]
"""The runner's API is re-exported: ``experiments.run.Task is experiments.runner.Task``."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
    who = p.add_mutually_exclusive_group()
    who.add_argument("--model", default=None, help="one model (default smollm2-135m)")
    who.add_argument("--models", nargs="+", default=None, help="several models (A B for pairs)")
    p.add_argument("--blocks", default="all", help="all, or a comma list of block ids")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="suite seeds (default: each block's suite_seeds at this size, else 42 "
                        "for smoke and 42 137 256 otherwise)")
    p.add_argument("--size", choices=SIZES, default="smoke")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run and write nothing")
    p.add_argument("--force", action="store_true", help="recompute cached results")
    add_root_argument(p)
    p.add_argument("--list", action="store_true", help="list the blocks and their questions")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local (default: one process) or ray (Ray tasks; pip install 'tlatlas[ray]')")
    p.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster (default: start a local instance)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = "python -m experiments.run " + shlex.join(argv)
    from tlatlas.errors import TlatlasError

    try:
        blocks = select_blocks(args.blocks)
    except KeyError as err:
        print(f"experiments.run: error: {err.args[0]}", file=sys.stderr)
        return 2
    if args.list:
        for b in blocks:
            print(f"{b.id:22} p{b.priority:<3} {b.question}")
        return 0
    models = args.models or [args.model or "smollm2-135m"]
    root = root_from(args)
    try:
        tasks = plan(blocks, models, args.seeds, args.size, root, force=args.force)
    except TlatlasError as err:
        print(f"experiments.run: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(tasks)
        return 0
    try:
        execute = executor(args.executor, address=args.ray_address)
    except TlatlasError as err:
        print(f"experiments.run: error: {err}", file=sys.stderr)
        return 2
    failed = run_plan(tasks, root, command, execute)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
