"""Forward passes that reuse the clean run: the pieces of the exact fast atlas path.

An intervention at layer L leaves layers < L as in the clean run, and an intervention at
position p leaves positions < p as in the clean run (causal attention). So instead of a
full forward per intervention we

1. run the clean batch once, keeping ``resid_pre[L]`` of every layer and the per-layer
   keys/values (the Hugging Face KV cache);
2. resume at layer L from the cached residual, through the *decoder's own layers*
   ``L..n-1`` only, with the cached keys/values of positions < p as the attention
   prefix (``run_from_layer``);
3. unembed only the scored positions.

TransformerBridge's ``start_at_layer`` still executes blocks ``0..L-1`` internally
(their output is discarded), so we resume on the decoder with its layer list truncated.
The bridge has replaced the decoder's modules by its hooked components, so every
TransformerLens hook (``blocks.L.hook_attn_out`` ...) still fires on this path.
"""

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from tlatlas.errors import OutOfRangeError
from tlatlas.hooks import HookFn, hooks_attached
from tlatlas.models.loading import LoadedModel
from tlatlas.models.tl_compat import check_kv_cache, patch_bridge_kv_cache


def _layers_path(model: LoadedModel) -> tuple[str, str]:
    """(decoder path, layer-list attribute) from the bridge's declarative mapping."""
    blocks = model.bridge.adapter.component_mapping["blocks"].name  # e.g. "model.layers"
    parent, _, attr = blocks.rpartition(".")
    return parent, attr


def decoder(model: LoadedModel) -> nn.Module:
    parent, _ = _layers_path(model)
    return model.hf_model.get_submodule(parent) if parent else model.hf_model


def _cache_kwarg(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@contextmanager
def layers_from(model: LoadedModel, start: int) -> Iterator[nn.Module]:
    """The decoder with only layers ``start..n-1`` for the duration of the block."""
    dec = decoder(model)
    _, attr = _layers_path(model)
    full = getattr(dec, attr)
    # Decoders with mixed layer types (Gemma-3: sliding/full attention, each with its own
    # mask and RoPE base) look a layer's type up by its index *in the list they run*, so
    # the type list is cut at ``start`` too, or layer ``start + i`` would get type ``i``.
    config = getattr(dec, "config", None)
    types = getattr(config, "layer_types", None)
    setattr(dec, attr, nn.ModuleList(list(full)[start:]))
    if types is not None:
        config.layer_types = list(types)[start:]
    try:
        yield dec
    finally:
        setattr(dec, attr, full)
        if types is not None:
            config.layer_types = types


def unembed(model: LoadedModel, hidden: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_vocab"]:
    """Logits from final (already normed) hidden states, for the given rows only."""
    logits = model.hf_model.get_output_embeddings()(hidden[:, None, :])[:, 0]
    cap = getattr(model.hf_model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


@dataclass(frozen=True, kw_only=True, eq=False)
class CleanRun:
    """What the fast path reuses from one clean forward of a batch."""

    scored_logits: Float[Tensor, "batch d_vocab"]
    """Logits at each row's scored position (fp32)."""
    acts: dict[str, Float[Tensor, "batch pos d_model"]]
    """Clean activations at the requested hook points (detached)."""
    kv: object
    """The Hugging Face cache of every layer's keys and values for the whole batch."""


def clean_run(model: LoadedModel, tokens: Int[Tensor, "batch pos"], scored_pos: Int[Tensor, " batch"],
              hook_names: list[str]) -> CleanRun:
    """One clean forward through the decoder, caching activations and keys/values."""
    patch_bridge_kv_cache()
    acts: dict[str, Tensor] = {}

    def save(name: str) -> HookFn:
        def hook(act: Tensor, hook: object = None) -> Tensor:
            acts[name] = act.detach()
            return act

        return hook

    dec = decoder(model)
    with torch.inference_mode(), hooks_attached(model.bridge, [(n, save(n)) for n in hook_names]):
        out = dec(input_ids=tokens, use_cache=True)
    hidden = out.last_hidden_state
    rows = torch.arange(tokens.shape[0], device=hidden.device)
    with torch.inference_mode():
        logits = unembed(model, hidden[rows, scored_pos.to(hidden.device)])
    kv = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
    check_kv_cache(kv, int(tokens.shape[1]))
    return CleanRun(scored_logits=logits, acts=acts, kv=kv)


def prefix_cache(model: LoadedModel, kv, rows: Int[Tensor, " sub"], length: int):
    """A fresh cache holding the clean keys/values of ``rows`` at positions ``< length``.

    The slices are views; a suffix run appends to a new cache, never to the clean one.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.hf_model.config)
    rows = rows.to(kv.layers[0].keys.device)
    for idx, layer in enumerate(kv.layers):
        cache.update(layer.keys[rows, :, :length], layer.values[rows, :, :length], idx)
    return cache


def run_from_layer(
    model: LoadedModel,
    resid: Float[Tensor, "batch suffix d_model"],
    start: int,
    scored_idx: Int[Tensor, " batch"],
    *,
    prefix=None,
    prefix_len: int = 0,
    fwd_hooks: list[tuple[str, HookFn]] = (),  # type: ignore[assignment]
) -> Float[Tensor, "batch d_vocab"]:
    """Resume the forward at block ``start`` and return logits at ``scored_idx``.

    Args:
        resid: the residual stream entering block ``start`` at positions
            ``prefix_len ..`` (for ``start == n_layers``: the final residual).
        scored_idx: per row, the scored position *within* ``resid`` (0-based suffix index).
        prefix: a cache with the clean keys/values of positions ``< prefix_len``
            (:func:`prefix_cache`), or None when ``resid`` starts at position 0.
        fwd_hooks: TransformerLens hooks to attach; they see suffix positions only.
    """
    n_layers = model.n_layers
    if not 0 <= start <= n_layers:
        raise OutOfRangeError(f"start layer {start} out of range 0..{n_layers}")
    width = resid.shape[1]
    position_ids = torch.arange(prefix_len, prefix_len + width, device=resid.device)[None]
    with torch.inference_mode(), hooks_attached(model.bridge, list(fwd_hooks)), \
            layers_from(model, start) as dec:
        kwargs = {_cache_kwarg(dec): prefix} if prefix is not None else {}
        out = dec(inputs_embeds=resid, position_ids=position_ids, use_cache=prefix is not None,
                  **kwargs)
        hidden = out.last_hidden_state
        rows = torch.arange(resid.shape[0], device=hidden.device)
        return unembed(model, hidden[rows, scored_idx.to(hidden.device)])
