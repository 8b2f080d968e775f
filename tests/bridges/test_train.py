import pytest
import torch

from bridges.export import plan_lora
from bridges.train import TrainConfig, evaluate, split, train_lora
from tlatlas.models import load_hf_model

CONFIG = TrainConfig(family="arithmetic", steps=12, n_train=16, n_heldout=6, batch_size=8,
                     lr=5e-3, seed=3)


@pytest.fixture(scope="module")
def all_linear(tiny_models):
    return plan_lora(tiny_models["llama"], "all-linear", rank=4)


def test_split_is_fixed_and_disjoint():
    a_train, a_held = split(CONFIG)
    b_train, b_held = split(TrainConfig(family="arithmetic", seed=99, n_train=16, n_heldout=6))
    assert a_train == b_train and a_held == b_held
    assert not {e.prompt for e in a_train} & {e.prompt for e in a_held}
    assert len(split(TrainConfig(family="any", n_train=2, n_heldout=1))[1]) == 12


def test_training_lowers_loss_is_deterministic_and_reloads(tiny_dirs, all_linear, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    r1 = train_lora(tiny_dirs["llama"], all_linear, CONFIG, device="cpu", out=tmp_path / "a")
    assert r1.trainable_params == all_linear.trainable_params
    assert r1.heldout_loss_after < r1.heldout_loss_before
    assert sum(r1.losses[-3:]) < sum(r1.losses[:3])
    r2 = train_lora(tiny_dirs["llama"], all_linear, CONFIG, device="cpu")
    assert r1.losses == r2.losses
    # the saved adapter reloads to identical outputs
    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["llama"]))
    reloaded = PeftModel.from_pretrained(load_hf_model(tiny_dirs["llama"], device="cpu"),
                                         str(tmp_path / "a"))
    loss, em = evaluate(reloaded, tok, split(CONFIG)[1])
    assert loss == pytest.approx(r1.heldout_loss_after, abs=1e-5)
    assert em == r1.exact_match_after
    assert (tmp_path / "a" / "result.json").exists()


@pytest.mark.bitsandbytes
def test_qlora_on_nf4_trains(tiny_dirs, all_linear):
    from tlatlas.models.quant import QuantSpec

    r = train_lora(tiny_dirs["llama"], all_linear, TrainConfig(
        family="arithmetic", steps=4, n_train=8, n_heldout=2, lr=5e-3), device="cpu",
        quantization=QuantSpec(kind="nf4"))
    assert all(torch.isfinite(torch.tensor(r.losses)))
    assert r.trainable_params == all_linear.trainable_params


def test_train_cli(tiny_dirs, tmp_path, capsys):
    from tlatlas.cli import main

    assert main(["train", "--model", str(tiny_dirs["qwen2"]), "--family", "arithmetic",
                 "--strategy", "all-linear", "--rank", "2", "--steps", "3", "--n-train", "8",
                 "--n-heldout", "2", "--out", str(tmp_path / "ad")]) == 0
    assert "held-out loss" in capsys.readouterr().out
    assert (tmp_path / "ad" / "adapter_config.json").exists()
    assert main(["train", "--model", str(tiny_dirs["qwen2"]), "--strategy", "atlas",
                 "--top-k", "1", "--out", str(tmp_path / "x")]) == 2
