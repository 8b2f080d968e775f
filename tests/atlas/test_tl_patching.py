"""Equivalence with a trusted reference: TransformerLens's own ``patching`` functions.

Zero-patching ``resid_pre[L + 1]`` at one position is zero-ablating ``resid_post[L]`` there,
so the exact position map of the ``resid`` component must equal
``patching.get_act_patch_resid_pre`` with an all-zero "clean" cache, layer for layer
shifted by one, position by position.
"""

import pytest
import torch
from transformer_lens import patching

from tlatlas.atlas.posmap import position_maps
from tlatlas.metrics import effects
from tlatlas.tasks import build_suite
from tlatlas.tokens import encode_batch


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_exact_resid_map_equals_transformer_lens_patching(tiny_models, arch):
    model = tiny_models[arch]
    examples = list(build_suite("synthetic", seed=3, per_family=1, families=["ioi", "code"]))
    layers = list(range(model.n_layers - 1))  # resid_post[L] == resid_pre[L + 1]
    ours = position_maps(model, examples, layers=layers, components=("resid",), metric="kl")[0]
    for i, ex in enumerate(examples):
        batch = encode_batch([ex], model.tokenizer)
        tokens = batch.tokens
        with torch.inference_mode():
            clean = model.bridge(tokens)[0, batch.scored_pos[0]][None]
        zeros = {f"blocks.{layer}.hook_resid_pre": torch.zeros(*tokens.shape, model.d_model)
                 for layer in range(model.n_layers)}

        def kl(logits, clean=clean, batch=batch):
            return effects(clean, logits[:, batch.scored_pos[0]], batch.target).kl[0]

        with torch.inference_mode():
            ref = patching.get_act_patch_resid_pre(model.bridge, tokens, zeros, kl)
        assert ref.shape == (model.n_layers, tokens.shape[1])
        mine = ours.prompt_effect(i)  # [layer tok]
        diff = (mine - ref[1:].to(mine.dtype)).abs().max()
        assert float(diff) <= 1e-4, f"example {i}: max |ours - TL patching| = {float(diff):.2e}"
        assert float(ref[1:].max()) > 1e-2  # a map, not zeros
