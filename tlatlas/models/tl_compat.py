"""Guarded shims between TransformerLens 4.3 and transformers 5.

transformers 5 passes the KV cache to attention as ``cache=``; TransformerLens 4.3's
``AttentionBridge._update_kv_cache`` reads only ``past_key_values=``, so without
:func:`patch_bridge_kv_cache` the cache is never filled and a cached suffix run attends to
nothing. The patch targets a private method of one TransformerLens release, so it is
pinned (``transformer-lens>=4.3,<4.4``) and checked at run time: :func:`check_kv_cache`
fails loudly, naming the installed version, when a clean run's cache does not cover its
tokens.
"""

from importlib import metadata

from tlatlas.errors import TlatlasError

TESTED_TRANSFORMER_LENS = "4.3"
"""The TransformerLens release the shim is written and tested against."""


class CompatibilityError(TlatlasError):
    """An installed TransformerLens or transformers that the shims do not cover."""


def transformer_lens_version() -> str:
    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        return "not installed"


def patch_bridge_kv_cache() -> None:
    """Make TransformerLens 4.3's attention bridges honour transformers 5's KV cache.

    Idempotent. Raises CompatibilityError when the method it wraps no longer exists.
    """
    from transformer_lens.model_bridge.generalized_components import attention

    original = getattr(attention.AttentionBridge, "_update_kv_cache", None)
    if original is None:
        raise CompatibilityError(
            f"transformer-lens {transformer_lens_version()} has no "
            "AttentionBridge._update_kv_cache: tlatlas's KV-cache shim is written for "
            f"{TESTED_TRANSFORMER_LENS}.x; install transformer-lens=={TESTED_TRANSFORMER_LENS}.*")
    if getattr(original, "_tlatlas_patched", False):
        return

    def _update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    _update_kv_cache._tlatlas_patched = True  # type: ignore[attr-defined]
    _update_kv_cache.tlatlas_original = original  # type: ignore[attr-defined]
    attention.AttentionBridge._update_kv_cache = _update_kv_cache


def is_kv_cache_patched() -> bool:
    from transformer_lens.model_bridge.generalized_components import attention

    return bool(getattr(attention.AttentionBridge._update_kv_cache, "_tlatlas_patched", False))


def check_kv_cache(kv: object, n_tokens: int) -> None:
    """Raise CompatibilityError unless the clean run's cache holds ``n_tokens`` positions.

    The fast exact path reuses these keys and values as the attention prefix of its
    suffix runs; an empty cache would make them attend to nothing and silently give
    wrong effects.
    """
    length = kv.get_seq_length() if kv is not None and hasattr(kv, "get_seq_length") else 0
    if int(length) != n_tokens:
        raise CompatibilityError(
            f"the clean run's KV cache holds {length} positions, not {n_tokens}: the "
            f"TransformerLens KV-cache shim did not take effect (transformer-lens "
            f"{transformer_lens_version()}, tested with {TESTED_TRANSFORMER_LENS}.x)")
