"""Where block runs execute: in this process (``local``), or as Ray tasks (``ray``).

Both yield ``(task, record)`` as each run finishes; the driver
(:func:`experiments.runner.run_plan`) writes every result file and registry line, so a Ray
worker that dies mid-block and is retried (``max_retries``) leaves no partial file and no
duplicate line. Ray is an optional extra (``pip install 'tlatlas[ray]'``); the local
executor never imports it.

    python -m experiments.run --model smollm2-135m --blocks all --size smoke --executor ray

This module imports the runner's :class:`~experiments.runner.Task` and
:func:`~experiments.runner.run_task`; the runner never imports an executor (it takes the run
function returned by :func:`executor`).
"""

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from experiments.runner import Execute, Say, Task, run_task
from tlatlas.errors import TlatlasError

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'tlatlas[ray]'  (or: pip install ray)"
FORWARDED_ENV = ("HF_HUB_OFFLINE", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HOME")


class ExecutorUnavailableError(TlatlasError):
    """The executor asked for cannot run here (e.g. Ray is not installed)."""


def run_local(tasks: Sequence[Task], root: Path, command: str, say_for: Callable[[Task], Say]
              ) -> Iterator[tuple[Task, dict]]:
    """Run the tasks one after another in this process."""
    for task in tasks:
        say = say_for(task)
        say("running")
        yield task, run_task(task, root, command, say=say)


def _remote_run(block_id: str, models: tuple[str, ...], key: dict, prov: dict, root: str,
                command: str) -> dict:
    """Body of a Ray task: rebuild the task from plain data and run it (no file writes)."""
    from experiments.blocks import all_blocks
    from experiments.records import Provenance, ResultKey

    prov = {**prov, "weights_sha256": tuple(prov["weights_sha256"])}
    task = Task(block=all_blocks()[block_id], models=tuple(models), key=ResultKey(**key),
                prov=Provenance(**prov), action="run")
    return run_task(task, Path(root), command)


def _runtime_env() -> dict:
    """What a Ray worker needs to import ``experiments`` and the same plugin blocks."""
    repo = str(Path(__file__).resolve().parents[1])
    paths = [repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    env.update({k: v for k, v in os.environ.items()
                if k.startswith("TLATLAS_") or k in FORWARDED_ENV})
    return {"env_vars": env}


def run_ray(tasks: Sequence[Task], root: Path, command: str, say_for: Callable[[Task], Say], *,
            address: str | None = None, max_retries: int = 2) -> Iterator[tuple[Task, dict]]:
    """Submit every task to Ray; yield results as they arrive.

    Without ``address`` a local Ray instance is started on this machine's cores, bound to
    the loopback address. Each task requests one CPU, the block's estimated memory, and
    its GPUs when the cluster has GPUs. Workers get the root as an absolute path (their
    working directory is not the driver's).
    """
    try:
        import ray
    except ImportError as err:
        raise ExecutorUnavailableError(f"--executor ray needs Ray: {RAY_INSTALL}") from err
    from dataclasses import asdict

    if not ray.is_initialized():
        kwargs = {"runtime_env": _runtime_env(), "include_dashboard": False,
                  "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", **kwargs)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    remote = ray.remote(_remote_run)
    pending = {}
    for task in tasks:
        cost = task.block.cost[task.key.size]
        ref = remote.options(
            num_cpus=1, num_gpus=cost.gpus if has_gpu else 0,
            memory=int(cost.memory_gb * 2**30), max_retries=max_retries, retry_exceptions=False,
        ).remote(task.block.id, task.models, asdict(task.key), task.prov.to_dict(),
                 str(Path(root).resolve()), command)
        pending[ref] = task
        say_for(task)("submitted to Ray")
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            task = pending.pop(ref)
            try:
                yield task, ray.get(ref)
            except Exception as err:  # the worker died more often than max_retries allows
                from experiments.records import make_record

                yield task, make_record(task.key, task.prov, status="failed", value=None,
                                        error=f"Ray task failed after retries: {err!r}",
                                        started=0.0, finished=0.0, command=command,
                                        fingerprints=None)


def executor(name: str, *, address: str | None = None) -> Execute:
    """The run function of executor ``name`` (Ray's is checked for availability now)."""
    if name not in EXECUTORS:
        raise ExecutorUnavailableError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    if name == "local":
        if address:
            raise ExecutorUnavailableError("--ray-address needs --executor ray")
        return run_local
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ExecutorUnavailableError(f"--executor ray needs Ray: {RAY_INSTALL}") from err

    def run(tasks, root, command, say_for):
        return run_ray(tasks, root, command, say_for, address=address)
    return run
