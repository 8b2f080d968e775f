"""Quantized copies of a model (bitsandbytes NF4 / int8), on CPU or CUDA.

Settings are always explicit and recorded, never library defaults: bitsandbytes' default
4-bit type is fp4 (not NF4) and its default compute dtype changes results, so NF4 with
fp32 compute and NF4 with bf16 compute are distinct :class:`QuantSpec` values with
distinct labels.

What is supported (measured in tests on CPU with bitsandbytes 0.50):

- plain Hugging Face quantized models, for QLoRA-style adapters (PEFT on top);
- a TransformerBridge view of the quantized model (:func:`load_quantized_model`), whose
  hooks work like the full-precision bridge's for ablation and steering. Its logits equal
  the quantized HF model's.
- The fast exact atlas path resumes inside the bridge's own modules, so it works on the
  quantized view too; attribution needs gradients through bitsandbytes' kernels and is
  not tested there.
"""

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

from tlatlas.errors import InvalidInputError, TlatlasError
from tlatlas.models.fingerprint import fingerprint_of, weights_sha256
from tlatlas.models.loading import (
    DTYPES,
    LoadedModel,
    boot_bridge,
    default_device,
    load_hf_model,
    resolve_source,
    weights_dir,
)

QuantKind = Literal["nf4", "int8"]


class QuantizationUnavailableError(TlatlasError):
    """bitsandbytes (or the requested precision) cannot run on this machine."""


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """One quantized precision, fully specified."""

    kind: QuantKind
    """``nf4`` (4-bit NormalFloat) or ``int8`` (LLM.int8)."""
    compute: str = "fp32"
    """Compute dtype of 4-bit matmuls: ``fp32``, ``bf16`` or ``fp16`` (NF4 only)."""
    double_quant: bool = False
    """Quantize the 4-bit quantization constants too (NF4 only)."""

    def __post_init__(self) -> None:
        if self.kind not in ("nf4", "int8"):
            raise InvalidInputError(f"unknown quantization {self.kind!r}; choose nf4 or int8")
        if self.compute not in DTYPES:
            raise InvalidInputError(f"unknown compute dtype {self.compute!r}; choose {', '.join(DTYPES)}")

    @property
    def label(self) -> str:
        if self.kind == "int8":
            return "int8"
        return f"nf4-{self.compute}" + ("-dq" if self.double_quant else "")

    def bnb_config(self):
        from transformers import BitsAndBytesConfig

        if self.kind == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES[self.compute],
            bnb_4bit_use_double_quant=self.double_quant,
        )

    def to_dict(self) -> dict:
        return {"kind": self.kind, "compute": self.compute, "double_quant": self.double_quant,
                "label": self.label}


def parse_precision(text: str) -> QuantSpec | None:
    """``fp32``/``bf16``/``fp16`` -> None (not quantized); ``nf4``, ``nf4-bf16``, ``int8`` -> spec."""
    if text in DTYPES:
        return None
    if text == "int8":
        return QuantSpec(kind="int8")
    if text.startswith("nf4"):
        parts = text.split("-")
        return QuantSpec(kind="nf4", compute=parts[1] if len(parts) > 1 else "fp32",
                         double_quant="dq" in parts[2:])
    raise InvalidInputError(f"unknown precision {text!r}; e.g. fp32, bf16, nf4, nf4-bf16, int8")


def check_quantization_available(device: torch.device) -> None:
    """Raise QuantizationUnavailableError unless bitsandbytes can run on ``device``."""
    if not bitsandbytes_available():
        raise QuantizationUnavailableError(
            "quantized copies need bitsandbytes: pip install 'bitsandbytes>=0.46'")
    if device.type not in ("cpu", "cuda"):
        raise QuantizationUnavailableError(f"bitsandbytes does not run on {device.type}")


def load_quantized_hf(source, spec: QuantSpec, *, device: str | torch.device | None = None):
    """A plain quantized HF model of ``source`` (for QLoRA)."""
    dev = torch.device(device) if device is not None else default_device()
    check_quantization_available(dev)
    device_map = {"": dev.index or 0} if dev.type == "cuda" else "cpu"
    return load_hf_model(source, device=dev, dtype=torch.float32 if dev.type == "cpu" else
                         torch.bfloat16, quantization_config=spec.bnb_config(),
                         device_map=device_map)


def load_quantized_model(source, spec: QuantSpec, *, device: str | torch.device | None = None):
    """A :class:`~tlatlas.models.loading.LoadedModel` whose bridge wraps the quantized model.

    Its fingerprint records the quantization, so an atlas of the quantized copy is never
    mistaken for one of the full-precision model.
    """
    from transformers import AutoTokenizer

    hf_model = load_quantized_hf(source, spec, device=device)
    fingerprint = fingerprint_of(hf_model, weights_sha256(resolve_source(source)[1]), spec.label)
    path = weights_dir(source)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    dev = next(hf_model.parameters()).device
    bridge = boot_bridge(path, hf_model, tokenizer, dev)
    return LoadedModel(name=f"{source}@{spec.label}", bridge=bridge, hf_model=hf_model,
                       tokenizer=tokenizer, fingerprint=fingerprint, path=path)
