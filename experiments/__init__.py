"""The experiment orchestrator: blocks, runner, executors, results registry and claims.

    python -m experiments.run --model smollm2-135m --blocks all --size smoke --dry-run

Installed with ``tlatlas`` (``pip install -e .``), so it runs from any directory; ``--root``
names the experiments root (:mod:`experiments.paths`).
"""
