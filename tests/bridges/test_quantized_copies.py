import pytest
import torch

from tlatlas.errors import FingerprintMismatchError
from tlatlas.metrics import effects
from tlatlas.models.quant import (
    QuantizationUnavailableError,
    QuantSpec,
    load_quantized_hf,
    load_quantized_model,
    parse_precision,
)

pytestmark = pytest.mark.bitsandbytes
SPECS = [QuantSpec(kind="nf4", compute="fp32"), QuantSpec(kind="nf4", compute="bf16"),
         QuantSpec(kind="int8")]


def mean_kl(ref_logits, logits):
    v = ref_logits.shape[-1]
    return float(effects(ref_logits.reshape(-1, v), logits.float().reshape(-1, v),
                         torch.zeros(ref_logits[..., 0].numel(), dtype=torch.long)).kl.mean())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_quantized_forward_on_cpu_stays_close_to_fp32(tiny_models, tiny_dirs, spec, record_property):
    ref = tiny_models["llama"]
    tokens = torch.randint(0, ref.fingerprint.d_vocab, (2, 12))
    with torch.no_grad():
        ref_logits = ref.hf_model(tokens).logits
    q = load_quantized_hf(tiny_dirs["llama"], spec, device="cpu")
    kind = "Linear4bit" if spec.kind == "nf4" else "Linear8bitLt"
    assert type(q.model.layers[0].self_attn.q_proj).__name__ == kind
    with torch.no_grad():
        logits = q(tokens).logits
    kl = mean_kl(ref_logits, logits)
    record_property(f"kl_vs_fp32_{spec.label}", kl)
    assert 0 < kl < 1.0  # quantized, so not identical; close, so not broken


def test_quantized_bridge_view_and_fingerprint(tiny_models, tiny_dirs):
    spec = SPECS[0]
    qm = load_quantized_model(tiny_dirs["llama"], spec, device="cpu")
    assert qm.fingerprint.quantization == "nf4-fp32" and "nf4-fp32" in qm.fingerprint.short
    tokens = torch.randint(0, qm.fingerprint.d_vocab, (1, 9))
    with torch.no_grad():
        hf = qm.hf_model(tokens).logits
        tl = qm.bridge(tokens)
        ablated = qm.bridge.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.hook_attn_out", lambda a, hook: torch.zeros_like(a))])
    assert (hf - tl).abs().max() < 1e-4
    assert (ablated - tl).abs().max() > 1e-3  # hooks act on the quantized model
    with pytest.raises(FingerprintMismatchError):
        tiny_models["llama"].fingerprint.check_matches(qm.fingerprint)


def test_settings_are_explicit_never_defaults():
    nf4 = QuantSpec(kind="nf4", compute="bf16").bnb_config()
    assert nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_compute_dtype == torch.bfloat16
    assert parse_precision("nf4").label == "nf4-fp32"
    assert parse_precision("nf4-bf16-dq").to_dict() == {
        "kind": "nf4", "compute": "bf16", "double_quant": True, "label": "nf4-bf16-dq"}
    assert parse_precision("fp32") is None and parse_precision("int8").kind == "int8"
    with pytest.raises(ValueError, match="unknown precision"):
        parse_precision("fp4")


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch, tiny_dirs):
    import tlatlas.models.quant as quant

    monkeypatch.setattr(quant, "bitsandbytes_available", lambda: False)
    with pytest.raises(QuantizationUnavailableError, match="pip install"):
        load_quantized_hf(tiny_dirs["llama"], SPECS[0], device="cpu")
    with pytest.raises(QuantizationUnavailableError, match="mps"):
        monkeypatch.setattr(quant, "bitsandbytes_available", lambda: True)
        load_quantized_hf(tiny_dirs["llama"], SPECS[0], device="mps")
