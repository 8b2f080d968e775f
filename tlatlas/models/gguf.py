"""GGUF files: check them, and dequantize one once into a safetensors HF directory."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tlatlas.errors import CorruptModelFileError
from tlatlas.models.fingerprint import weights_sha256
from tlatlas.models.registry import cache_dir

_COMPLETE_MARKER = "tlatlas-complete.json"
_GGUF_MAGIC = b"GGUF"


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise CorruptModelFileError(f"{path} is not a GGUF file (magic {magic!r}, want b'GGUF')")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))  # memory-maps and validates every tensor's extent
    except Exception as err:  # gguf raises ValueError/IndexError/struct.error on damage
        raise CorruptModelFileError(f"{path} is a damaged or truncated GGUF file: {err}") from err


def dequantized_gguf_dir(path: Path) -> Path:
    """Dequantize a GGUF once into a safetensors HF directory under the cache; return it.

    The directory is written to a temporary name and renamed into place, so an
    interrupted conversion never leaves a half-written cache entry behind.
    """
    target = cache_dir() / "gguf" / weights_sha256(path)[:20]
    if (target / _COMPLETE_MARKER).exists():
        return target
    _check_gguf_header(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as err:
        raise CorruptModelFileError(f"transformers could not load {path}: {err}") from err
    # The weights are now plain fp32 tensors; the GGUF quantization config would make
    # save_pretrained/from_pretrained treat the directory as a quantized checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps({"source": str(path)}))
        if target.exists():  # a stale, incomplete entry
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


