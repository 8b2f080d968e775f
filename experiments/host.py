"""Where a result was computed: the facts about the host that its timings depend on.

A timing, and a number computed by hardware-specific kernels (bf16, int8, NF4), belongs to
the host as much as to the code: the same quant-speed code timed int8 slower than NF4 on
one 2-core CPU and faster on another (docs/experiments.md). Each result record carries
``host`` (written by :func:`experiments.runner.run_task` on the machine that ran the block;
not part of the provenance a rerun compares, so a result computed elsewhere is still
reused). Not in any block's import closure: recording more here recomputes nothing.
"""

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "transformer-lens", "peft", "bitsandbytes")
"""Libraries whose kernels or numerics a result may depend on (version, or None)."""


FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
            "amx_bf16", "amx_int8")
"""CPU features that select different bf16 / int8 kernels (reported where present)."""


def _cpuinfo(key: str) -> str | None:
    """The first ``key : value`` of ``/proc/cpuinfo`` (Linux), or None."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; else what ``platform`` knows)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_features() -> list[str] | None:
    """Which of :data:`FEATURES` the CPU has (None where ``/proc/cpuinfo`` is absent)."""
    flags = _cpuinfo("flags")
    return None if flags is None else [f for f in FEATURES if f in flags.split()]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def host_info() -> dict[str, Any]:
    """The host facts of a result record: CPU model, core count and kernel-relevant
    features, torch's CPU kernel level (``AVX512``, ``AVX2``, ...), its thread count, the CUDA device (or None), and
    the versions of :data:`LIBRARIES`."""
    import torch

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "cpu_features": cpu_features(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
    }


def describe(host: dict[str, Any] | None) -> str:
    """A record's ``host`` in a few words (``Intel(R) Xeon(R) Processor, 2 CPUs, AVX512``;
    the CUDA device where there was one), or what to say where the record has none."""
    if not host:
        return "an unrecorded host (a result older than experiments.host)"
    parts = [str(host.get("cpu") or host.get("machine") or "unknown CPU")]
    if host.get("cpus"):
        parts.append(f"{host['cpus']} CPUs")
    if host.get("cpu_capability"):
        parts.append(str(host["cpu_capability"]))
    if host.get("cuda_device"):
        parts.append(f"CUDA {host['cuda_device']}")
    return ", ".join(parts)
