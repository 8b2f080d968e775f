"""Models: the registry of named models, fingerprints, GGUF conversion, loading (with the
TransformerBridge), quantized copies, the forward passes that reuse a clean run, device
memory budgets (:mod:`~tlatlas.models.memory`), and the guarded TransformerLens shims.
``import tlatlas.models`` does not import bitsandbytes."""

from tlatlas.models.fingerprint import Fingerprint, fingerprint_of, weights_sha256
from tlatlas.models.gguf import dequantized_gguf_dir
from tlatlas.models.loading import (
    DTYPES,
    LoadedModel,
    boot_bridge,
    check_layers,
    default_device,
    default_dtype,
    dtype_label,
    load_hf_model,
    load_model,
    resolve_source,
    weights_dir,
)
from tlatlas.models.registry import (
    CACHE_ENV,
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    cache_dir,
    hub_locator,
    model_availability,
    register_model,
)

__all__ = ["CACHE_ENV", "DEFAULT_MODEL", "DTYPES", "MODELS", "Fingerprint", "LoadedModel",
           "ModelSpec", "boot_bridge", "cache_dir", "check_layers", "default_device",
           "default_dtype", "dequantized_gguf_dir", "dtype_label", "fingerprint_of",
           "hub_locator", "load_hf_model", "load_model", "model_availability",
           "register_model", "resolve_source", "weights_dir", "weights_sha256"]
