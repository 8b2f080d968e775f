"""The TransformerLens KV-cache shim: it takes effect, and its absence is caught."""

import pytest
import torch

from tlatlas.models import tl_compat
from tlatlas.models.forward import clean_run
from tlatlas.models.tl_compat import CompatibilityError, check_kv_cache, is_kv_cache_patched


def test_shim_is_in_place_after_loading(tiny_models):
    assert is_kv_cache_patched()
    model = tiny_models["llama"]
    tokens = torch.randint(0, model.fingerprint.d_vocab, (2, 9))
    run = clean_run(model, tokens, torch.tensor([8, 8]), [])
    assert run.kv.get_seq_length() == 9


def test_missing_shim_is_a_clear_error(tiny_models, monkeypatch):
    """Without the shim the clean run's cache stays empty; the guard must say so."""
    from transformer_lens.model_bridge.generalized_components import attention

    original = attention.AttentionBridge._update_kv_cache.tlatlas_original
    assert not getattr(original, "_tlatlas_patched", False)
    monkeypatch.setattr(attention.AttentionBridge, "_update_kv_cache", original)
    monkeypatch.setattr(tl_compat, "patch_bridge_kv_cache", lambda: None)
    monkeypatch.setattr("tlatlas.models.forward.patch_bridge_kv_cache", lambda: None)
    model = tiny_models["llama"]
    tokens = torch.randint(0, model.fingerprint.d_vocab, (1, 7))
    with pytest.raises(CompatibilityError, match="shim did not take effect.*transformer-lens"):
        clean_run(model, tokens, torch.tensor([6]), [])


def test_check_kv_cache_counts_positions():
    class Cache:
        def get_seq_length(self):
            return 5

    check_kv_cache(Cache(), 5)
    with pytest.raises(CompatibilityError, match="holds 5 positions, not 6"):
        check_kv_cache(Cache(), 6)
    with pytest.raises(CompatibilityError, match="holds 0 positions"):
        check_kv_cache(None, 3)
