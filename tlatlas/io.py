"""Result files: atomic writes, the safetensors + JSON pair, and their checks.

Every result tlatlas writes (atlases, steering results, transfer maps) is a pair
``NAME.<kind>.safetensors`` (tensors) + ``NAME.<kind>.json`` (a header with ``kind``,
``format_version``, the tensors' shapes and provenance). Both are written atomically,
tensors first, so a reader never sees a header whose tensors are missing or half-written;
:func:`read_result_files` validates a pair before anything uses it.
"""

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from tlatlas.metrics import METRICS_VERSION


def known_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls`` (newer files may
    carry keys an older reader does not know; missing ones take the field defaults)."""
    return {k: data[k] for k in cls.__dataclass_fields__ if k in data}  # type: ignore[attr-defined]


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_result_files(tensors_path: Path, meta_path: Path, tensors: Mapping[str, Tensor],
                       header: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write a ``(safetensors, JSON header)`` pair atomically, tensors first."""
    from safetensors.torch import save_file

    data = {k: v.contiguous() for k, v in tensors.items()}
    kind = str(header.get("kind", ""))
    atomic_write(tensors_path, lambda p: save_file(data, p, metadata={"kind": kind}))
    atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(dict(header), indent=1)))
    return tensors_path, meta_path


def check_kind(header: Mapping[str, Any], *, kind: str, format_version: int | tuple[int, ...],
               noun: str, where: object, error: type[Exception]) -> int:
    """Raise ``error`` unless ``header`` is a ``kind`` of an accepted ``format_version``;
    returns the file's version."""
    versions = (format_version,) if isinstance(format_version, int) else tuple(format_version)
    if header.get("kind") != kind:
        raise error(f"{where} is not a tlatlas {noun} (kind {header.get('kind')!r})")
    if header.get("format_version") not in versions:
        raise error(f"{where} has {noun} format {header.get('format_version')}, this "
                    f"tlatlas reads {', '.join(map(str, versions))}; recompute the {noun}")
    return int(header["format_version"])


def read_result_files(tensors_path: Path, meta_path: Path, *, kind: str, format_version: int | tuple[int, ...],
                      noun: str, error: type[Exception],
                      expected_shapes: Callable[[dict[str, Any]], dict[str, list[int]]] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a ``(safetensors, JSON header)`` pair and validate it; returns (header, tensors).

    Checks that both files exist and parse, the header's ``kind``, ``format_version`` and
    metric-definitions version, that the tensors are exactly those the header lists with
    the listed shapes, and ``expected_shapes(header)`` (shapes implied by the header's axes).
    Failures raise ``error`` with a message that names the file and ``noun``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for p in (meta_path, tensors_path):
        if not p.exists():
            raise error(f"missing {noun} file {p}")
    try:
        header = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{meta_path} is not valid JSON (truncated?): {err}") from err
    check_kind(header, kind=kind, format_version=format_version, noun=noun, where=meta_path,
               error=error)
    metrics = header.get("meta", {}).get("metrics_version")
    if metrics != METRICS_VERSION:
        raise error(f"{meta_path} uses metric definitions v{metrics}, this tlatlas uses "
                    f"v{METRICS_VERSION}; recompute the {noun}")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as err:
        raise error(f"{tensors_path} is damaged or truncated: {err}") from err
    if set(tensors) != set(header["tensors"]):
        raise error(f"{tensors_path} holds tensors {sorted(tensors)}, "
                    f"its JSON lists {sorted(header['tensors'])}")
    implied = expected_shapes(header) if expected_shapes is not None else {}
    for name, shape in {**header["tensors"], **implied}.items():
        if list(tensors[name].shape) != list(shape):
            raise error(f"{tensors_path}: tensor {name} has shape "
                        f"{list(tensors[name].shape)}, expected {list(shape)}")
    return header, tensors
