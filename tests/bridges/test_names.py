import pytest
import torch

from bridges.names import (
    MODULES,
    UnknownComponentError,
    hf_module_name,
    hf_module_names,
    leaf_to_short,
    module_from_hf,
)
from tlatlas.errors import LayerOutOfRangeError

EXPECTED_LEAF = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                 "gate": "gate_proj", "in": "up_proj", "out": "down_proj"}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_names_resolve_to_real_linear_modules(tiny_models, arch):
    model = tiny_models[arch]
    names = hf_module_names(model)
    assert len(names) == model.n_layers * len(MODULES)
    for n in names:
        assert n.hf_path == f"model.layers.{n.layer}.{'self_attn' if n.module in 'qkvo' else 'mlp'}.{EXPECTED_LEAF[n.module]}"
        module = model.hf_model.get_submodule(n.hf_path)
        weight = getattr(module, "weight", None)
        assert isinstance(weight, torch.Tensor) and weight.dim() == 2
        assert module_from_hf(model, n.hf_path) == n
    # o_proj maps d_model -> d_model, down_proj d_mlp -> d_model
    o = model.hf_model.get_submodule(hf_module_name(model.bridge, 3, 1, "o").hf_path)
    assert o.weight.shape[0] == model.d_model


def test_bad_layer_and_component(tiny_models):
    model = tiny_models["llama"]
    with pytest.raises(LayerOutOfRangeError, match="0..2"):
        hf_module_name(model.bridge, model.n_layers, 3, "o")
    with pytest.raises(UnknownComponentError, match="unknown module"):
        hf_module_name(model.bridge, model.n_layers, 0, "lm_head")
    with pytest.raises(UnknownComponentError, match="names no block module"):
        leaf_to_short(model, "w_pack")
    assert leaf_to_short(model, "o_proj") == "o" and leaf_to_short(model, "up_proj") == "in"


@pytest.mark.slow
def test_names_on_smollm2(smollm2):
    n = hf_module_name(smollm2.bridge, smollm2.n_layers, 29, "out")
    assert n.hf_path == "model.layers.29.mlp.down_proj"
    assert smollm2.hf_model.get_submodule(n.hf_path).weight.shape == (576, 1536)


@pytest.mark.slow
def test_gemma3_loads_and_names_resolve():
    from tlatlas.models import load_model

    gemma = load_model("gemma3-270m", device="cpu")
    assert gemma.fingerprint.architecture == "Gemma3ForCausalLM" and gemma.n_layers == 18
    tokens = gemma.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (gemma.hf_model(tokens).logits - gemma.bridge(tokens)).abs().max() <= 1e-4
    for module, leaf in (("o", "o_proj"), ("in", "up_proj"), ("out", "down_proj")):
        name = hf_module_name(gemma.bridge, gemma.n_layers, 17, module)
        assert name.hf_path.endswith(leaf)
        assert gemma.hf_model.get_submodule(name.hf_path).weight.dim() == 2
