"""What identifies a model when results are compared: the :class:`Fingerprint`."""

import hashlib
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tlatlas.errors import CorruptModelFileError, FingerprintMismatchError
from tlatlas.io import known_fields


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
        return cls(**known_fields(cls, data))

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
