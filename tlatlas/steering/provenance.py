"""Where a precision row's weights came from, stated in every steering table.

The "fp32" reference of a precision comparison is only as full-precision as its source:
the embedded SmolLM2-135M is a Q4_1 GGUF dequantized to fp32, so its NF4 copy is
NF4-of-Q4_1 and its int8 copy int8-of-Q4_1. :func:`weights_provenance` records the source
file, its format and (for a GGUF) its quantization type and tensor types, read from the
file's header without loading the tensors (the ``gguf`` package's reader parses the whole
vocabulary and takes seconds); :func:`describe_weights` says it in one line.
"""

import struct
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from tlatlas.models import LoadedModel

# GGUF metadata value types -> struct format (fixed-size scalars)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(fh: BinaryIO) -> str:
    return fh.read(_read(fh, "<Q")).decode("utf-8", errors="replace")


def _value(fh: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(fh, _SCALARS[vtype])
    if vtype == _STRING:
        return _string(fh)
    if vtype == _ARRAY:
        etype, n = _read(fh, "<I"), _read(fh, "<Q")
        if etype in _SCALARS:  # skip without decoding
            fh.seek(n * struct.calcsize(_SCALARS[etype]), 1)
        else:
            for _ in range(n):
                _value(fh, etype)
        return None
    raise ValueError(f"unknown GGUF value type {vtype}")


def _type_name(kind: str, value: int) -> str:
    try:
        import gguf

        enum = gguf.LlamaFileType if kind == "file" else gguf.GGMLQuantizationType
        return enum(value).name
    except Exception:  # gguf missing, or a type newer than it knows
        return f"type {value}"


@lru_cache(maxsize=16)
def _gguf_header(path: str, stamp: tuple[int, int]) -> dict[str, Any]:
    del stamp  # cache key only
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        version, n_tensors, n_kv = _read(fh, "<I"), _read(fh, "<Q"), _read(fh, "<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, vtype = _string(fh), _read(fh, "<I")
            value = _value(fh, vtype)
            if key.startswith("general.") and value is not None:
                meta[key] = value
        types: Counter[str] = Counter()
        for _ in range(n_tensors):
            _string(fh)
            n_dims = _read(fh, "<I")
            fh.seek(8 * n_dims, 1)
            types[_type_name("tensor", _read(fh, "<I"))] += 1
            _read(fh, "<Q")
    out: dict[str, Any] = {"gguf_version": version, "tensor_types": dict(types.most_common())}
    if "general.file_type" in meta:
        out["file_type"] = _type_name("file", int(meta["general.file_type"]))
    if "general.name" in meta:
        out["name"] = str(meta["general.name"])
    return out


def weights_provenance(model: LoadedModel) -> dict[str, Any]:
    """``{"path", "format": "gguf" | "hf", ...}``; for a GGUF also ``file_type`` (e.g.
    ``MOSTLY_Q4_1``), ``tensor_types`` (count per type) and ``dequantized_to``."""
    path = Path(model.path)
    out: dict[str, Any] = {"path": str(path), "format": "gguf" if path.suffix == ".gguf" else "hf"}
    if out["format"] == "gguf":
        try:
            st = path.stat()
            out.update(_gguf_header(str(path), (st.st_size, st.st_mtime_ns)))
        except (OSError, ValueError, struct.error) as err:
            out["header_error"] = str(err)
        out["dequantized_to"] = "fp32"
    return out


def describe_weights(weights: dict[str, Any] | None) -> str:
    """One line: ``GGUF SmolLM2-135M-Instruct.Q4_1.gguf (MOSTLY_Q4_1; tensors Q4_1 x210,
    F32 x61, Q8_0 x1) dequantized to fp32: NOT full precision`` or ``HF weights in DIR``."""
    if not weights:
        return "weights: provenance not recorded (a result written before it was)"
    name = Path(weights.get("path", "?")).name
    if weights.get("format") != "gguf":
        return f"weights: Hugging Face checkpoint {weights.get('path')} (as stored)"
    types = ", ".join(f"{k} x{v}" for k, v in weights.get("tensor_types", {}).items())
    ftype = weights.get("file_type", "file type unknown")
    return (f"weights: GGUF {name} ({ftype}; tensors {types or '?'}) dequantized to fp32 -- "
            f"not full precision: quantized rows re-quantize these dequantized weights")


__all__ = ["weights_provenance", "describe_weights"]
