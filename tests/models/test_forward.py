"""Forward passes that reuse the clean run: resuming at a layer, and the KV prefix."""

import pytest
import torch

from tlatlas.errors import OutOfRangeError
from tlatlas.hooks import hook_name
from tlatlas.models.forward import clean_run, prefix_cache, run_from_layer


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_resuming_equals_the_full_forward(tiny_models, arch):
    model = tiny_models[arch]
    tokens = torch.randint(0, model.fingerprint.d_vocab, (2, 10))
    scored = torch.tensor([9, 6])
    names = [hook_name(layer, "hook_resid_pre") for layer in range(model.n_layers)]
    clean = clean_run(model, tokens, scored, names)
    with torch.inference_mode():
        full = model.bridge(tokens)[torch.arange(2), scored].float()
    assert torch.allclose(clean.scored_logits, full, atol=1e-4)
    for layer in range(model.n_layers):
        resumed = run_from_layer(model, clean.acts[names[layer]], layer, scored)
        assert torch.allclose(resumed, full, atol=1e-4), layer
    # a suffix from position 4 on, with the clean keys/values of positions < 4 as prefix
    rows = torch.arange(2)
    layer = 1
    suffix = run_from_layer(model, clean.acts[names[layer]][:, 4:], layer, scored - 4,
                            prefix=prefix_cache(model, clean.kv, rows, 4), prefix_len=4)
    assert torch.allclose(suffix, full, atol=1e-4)


def test_start_layer_out_of_range(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(OutOfRangeError, match="out of range"):
        run_from_layer(model, torch.zeros(1, 3, model.d_model), model.n_layers + 1,
                       torch.tensor([2]))
