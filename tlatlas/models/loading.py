"""Load a causal LM by name, local Hugging Face directory, or ``.gguf`` file.

Every load returns a :class:`LoadedModel`: the TransformerLens ``TransformerBridge``
(compatibility-mode hook names), the Hugging Face model it wraps, the tokenizer, and a
:class:`~tlatlas.models.fingerprint.Fingerprint` that every atlas and result records.

The bridge runs in compatibility mode *without* weight processing (no LayerNorm folding,
no centering): the bridge then computes exactly what the Hugging Face model computes,
which is the model that PEFT adapters and bitsandbytes quantization act on. An ablation
measured here is an ablation of that model, not of a re-parameterised twin.

Nothing here reaches the network: hub ids load only from the local Hugging Face cache.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tlatlas.errors import CorruptModelFileError, LayerOutOfRangeError, UnknownModelError
from tlatlas.models.fingerprint import Fingerprint, fingerprint_of, weights_sha256
from tlatlas.models.gguf import dequantized_gguf_dir
from tlatlas.models.registry import DEFAULT_MODEL, MODELS, hub_locator
from tlatlas.models.tl_compat import patch_bridge_kv_cache

SourceKind = Literal["gguf", "hf_dir"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16,
                                  "fp16": torch.float16}
"""Precision labels used on the command line and in result files."""


def dtype_label(dtype: torch.dtype) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for a torch dtype (its name otherwise)."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True, kw_only=True, eq=False)
class LoadedModel:
    """A model ready for interpretability work."""

    name: str
    """The source as given (registered name, path or hub id)."""
    bridge: Any
    """``transformer_lens.model_bridge.TransformerBridge`` in compatibility mode."""
    hf_model: Any
    """The wrapped ``transformers`` causal LM (the bridge shares its modules)."""
    tokenizer: Any
    """The model's ``transformers`` tokenizer."""
    fingerprint: Fingerprint
    """Identity recorded by every atlas and result."""
    path: Path
    """The local file or directory the weights came from."""

    @property
    def n_layers(self) -> int:
        return self.fingerprint.n_layers

    @property
    def d_model(self) -> int:
        return self.fingerprint.d_model

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_source(source: str | os.PathLike[str]) -> tuple[SourceKind, Path]:
    """Map a name, path or hub id to ``(kind, local path)`` without loading anything."""
    text = str(source)
    if text in MODELS:
        path = MODELS[text].locate()
    else:
        path = Path(text).expanduser()
        if not path.exists():
            if text.count("/") == 1 and not text.startswith((".", "/", "~")):
                path = hub_locator(text)()
            else:
                known = ", ".join(MODELS)
                raise UnknownModelError(
                    f"unknown model {text!r}: not a registered name, an existing path, or a "
                    f"hub id (org/name). Known names: {known}"
                )
    if path.is_file():
        if path.suffix != ".gguf":
            raise CorruptModelFileError(
                f"{path} is a file but not a .gguf; pass a .gguf file or an HF model directory"
            )
        return "gguf", path
    if not (path / "config.json").exists():
        raise CorruptModelFileError(f"{path} is a directory without config.json (not an HF model)")
    return "hf_dir", path


def boot_bridge(path: Path, hf_model: Any, tokenizer: Any, device: torch.device) -> Any:
    """A TransformerBridge over ``hf_model`` (config from ``path``), in compatibility mode
    without weight processing, with the KV-cache shim in place."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        str(path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype
    )
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    patch_bridge_kv_cache()
    bridge.eval()
    return bridge


def weights_dir(source: str | os.PathLike[str]) -> Path:
    """The local HF directory holding ``source``'s weights (a GGUF's dequantized cache)."""
    kind, path = resolve_source(source)
    return dequantized_gguf_dir(path) if kind == "gguf" else path


def load_hf_model(source: str | os.PathLike[str], *, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """A plain Hugging Face model (no bridge) of ``source``, e.g. for PEFT or bitsandbytes.

    The bridge replaces a model's modules by hooked wrappers that PEFT cannot target,
    so adapters and quantized copies are built on a fresh model from the same weights.
    ``kwargs`` go to ``from_pretrained`` (e.g. ``quantization_config``).
    """
    from transformers import AutoModelForCausalLM

    path = weights_dir(source)
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype if dtype is not None else default_dtype(dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, **kwargs)
    except Exception as err:
        raise CorruptModelFileError(f"could not load the model in {path}: {err}") from err
    if "quantization_config" not in kwargs:
        model.to(dev)
    return model.eval()


def load_model(
    source: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Load a model for interpretability work.

    Args:
        source: a registered name (``tlatlas models`` lists them), a local HF model
            directory, a ``.gguf`` file, or a hub id present in the local HF cache.
        device: defaults to CUDA when present, else CPU.
        dtype: defaults to bf16 on CUDA, fp32 on CPU.

    Raises:
        UnknownModelError, ModelNotAvailableError, CorruptModelFileError.
    """
    kind, path = resolve_source(source)
    dev = torch.device(device) if device is not None else default_device()
    dt = dtype if dtype is not None else default_dtype(dev)
    wdir = dequantized_gguf_dir(path) if kind == "gguf" else path
    sha = weights_sha256(path)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(wdir))
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(wdir), dtype=dt, attn_implementation="eager"
        )
    except Exception as err:  # safetensors/json/torch each raise their own types on damage
        raise CorruptModelFileError(f"could not load the model in {wdir}: {err}") from err
    hf_model.to(dev).eval()
    bridge = boot_bridge(wdir, hf_model, tokenizer, dev)
    return LoadedModel(
        name=str(source),
        bridge=bridge,
        hf_model=hf_model,
        tokenizer=tokenizer,
        fingerprint=fingerprint_of(hf_model, sha),
        path=path,
    )


def check_layers(model: LoadedModel, layers: Sequence[int] | None) -> tuple[int, ...]:
    """``layers`` as a tuple (all of the model's when None); LayerOutOfRangeError otherwise."""
    if layers is None:
        return tuple(range(model.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model.n_layers]
    if bad:
        raise LayerOutOfRangeError(
            f"layer(s) {bad} out of range: {model.name} has layers 0..{model.n_layers - 1}")
    return tuple(layers)
