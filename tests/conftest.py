"""Shared fixtures: tiny random checkpoints built from configs, and the embedded model.

Tiny models are real Hugging Face checkpoints on disk (config + safetensors +
tokenizer), loaded through ``tlatlas.models.load_model`` exactly as a user's would be.
"""

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_ARCHS = ("llama", "qwen2")


def _tiny_tokenizer():
    """A byte-level BPE (GPT-2 style) trained on the task suite's own text, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tlatlas.tasks import build_suite

    texts = [ex.prompt + ex.answer for kind in ("synthetic", "nl") for ex in build_suite(kind)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<|bos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def make_tiny_checkpoint(arch: str, path: Path, *, seed: int = 0, n_layers: int = 3) -> Path:
    """Write a tiny random ``arch`` checkpoint (GQA; Qwen2 has its qkv bias) to ``path``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = _tiny_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init at std 0.02 gives near-uniform logits; widen it so ablations matter.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


_DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _seed_and_threads(request):
    """Seed everything; one thread for tiny models (they are overhead-bound and more
    threads only add OpenMP spin), every core for tests on the real model."""
    random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(_DEFAULT_THREADS if "smollm2" in request.fixturenames else 1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Paths of the tiny random checkpoints, one per architecture in TINY_ARCHS."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_checkpoint(arch, root / arch) for arch in TINY_ARCHS}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """Loaded tiny models (fp32, CPU), keyed by architecture."""
    from tlatlas.models import load_model

    return {arch: load_model(path, device="cpu") for arch, path in tiny_dirs.items()}


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M (fp32, CPU)."""
    from tlatlas.errors import ModelNotAvailableError
    from tlatlas.models import load_model

    try:
        return load_model("smollm2-135m", device="cpu")
    except ModelNotAvailableError as err:  # pragma: no cover - make test installs it
        pytest.skip(str(err))
