import pytest
import torch

from bridges.export import plan_lora
from bridges.train import (
    TrainConfig,
    answer_loss,
    evaluate,
    evaluate_examples,
    flattening,
    greedy_completions,
    greedy_hits,
    lm_batch,
    split,
    train_lora,
)
from tlatlas.models import load_hf_model
from tlatlas.tasks import build_suite

CONFIG = TrainConfig(family="arithmetic", steps=12, n_train=16, n_heldout=6, batch_size=8,
                     lr=5e-3, seed=3)


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def reference_lm_batch(examples, tokenizer):
    """The hand-written right padding lm_batch had before it used tlatlas.tokens."""
    rows, labels = [], []
    for ex in examples:
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(ex.prompt + ex.answer, add_special_tokens=False)["input_ids"]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        rows.append(bos + full)
        labels.append([-100] * (len(bos) + len(p)) + full[len(p):])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad)
    lab = torch.full((len(rows), width), -100)
    for i, (r, la) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(la)] = torch.tensor(la)
    return ids, lab


def reference_answer_loss(model, ids, labels):
    """The hand-written loss: cross-entropy of logits[:, :-1] against labels[:, 1:]."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


@torch.no_grad()
def reference_greedy(model, tokenizer, examples):
    """The straightforward loop: one example at a time, a full forward per new token."""
    model.eval()
    completions, hits = [], []
    for ex in examples:
        ids, labels = reference_lm_batch([ex], tokenizer)
        n_ans = int((labels != -100).sum())
        prompt = ids[:, : ids.shape[1] - n_ans]
        for _ in range(n_ans):
            nxt = model(input_ids=prompt).logits[:, -1].argmax(-1, keepdim=True)
            prompt = torch.cat([prompt, nxt], dim=1)
        completions.append(prompt[0, -n_ans:].tolist())
        hits.append(torch.equal(prompt[0, -n_ans:], ids[0, -n_ans:]))
    return completions, hits


@pytest.fixture(scope="module")
def all_linear(tiny_models):
    return plan_lora(tiny_models["llama"], "all-linear", rank=4)


@pytest.fixture(scope="module")
def trained(tiny_dirs, all_linear, tmp_path_factory):
    """CONFIG's run with its adapter saved: (result, adapter directory)."""
    # module fixtures run before the autouse one that sets the thread count, and a matmul
    # split over another number of threads rounds differently: pin it to the tests' one
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("lora") / "a"
    return train_lora(tiny_dirs["llama"], all_linear, CONFIG, device="cpu", out=out), out


@pytest.fixture(scope="module")
def reloaded(tiny_dirs, trained):
    """The saved adapter on a fresh copy of the base model (a PEFT model)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_hf_model(tiny_dirs["llama"], device="cpu"),
                                     str(trained[1]))


def test_split_is_fixed_and_disjoint():
    a_train, a_held = split(CONFIG)
    b_train, b_held = split(TrainConfig(family="arithmetic", seed=99, n_train=16, n_heldout=6))
    assert a_train == b_train and a_held == b_held
    assert not {e.prompt for e in a_train} & {e.prompt for e in a_held}
    assert len(split(TrainConfig(family="any", n_train=2, n_heldout=1))[1]) == 12


def test_training_lowers_loss_is_deterministic_and_reloads(tiny_dirs, all_linear, trained,
                                                          reloaded):
    r1, saved = trained
    assert r1.trainable_params == all_linear.trainable_params
    assert r1.heldout_loss_after < r1.heldout_loss_before
    assert sum(r1.losses[-3:]) < sum(r1.losses[:3])
    r2 = train_lora(tiny_dirs["llama"], all_linear, CONFIG, device="cpu")
    assert r1.losses == r2.losses
    # the saved adapter reloads to identical outputs
    loss, em = evaluate(reloaded, _tokenizer(tiny_dirs["llama"]), split(CONFIG)[1])
    assert loss == pytest.approx(r1.heldout_loss_after, abs=1e-5)
    assert em == r1.exact_match_after
    assert (saved / "result.json").exists()


def test_per_prompt_held_out_values_pool_to_the_reported_ones(tiny_dirs, trained, reloaded):
    """Each held-out prompt's loss and hit are recorded (what paired comparisons resample);
    pooled over answer tokens they give the run's held-out loss and exact match."""
    r, _ = trained
    held = split(CONFIG)[1]
    assert r.heldout_uids == tuple(ex.uid for ex in held)
    assert len(r.heldout_losses) == len(r.heldout_hits) == len(held)
    assert sum(r.heldout_hits) / len(held) == r.exact_match_after
    per = evaluate_examples(reloaded, _tokenizer(tiny_dirs["llama"]), held)
    assert per.hits == r.heldout_hits
    assert per.losses == pytest.approx(r.heldout_losses, abs=1e-5)
    assert per.loss == pytest.approx(r.heldout_loss_after, abs=1e-5)
    # per-prompt losses are means over each prompt's own answer tokens, by hand
    tok = _tokenizer(tiny_dirs["llama"])
    with torch.no_grad():
        for i, ex in enumerate(held[:3]):
            ids, labels = lm_batch([ex], tok)
            assert float(answer_loss(reloaded, ids, labels)) == pytest.approx(per.losses[i],
                                                                           abs=1e-5)


def test_flattening_is_the_relative_drop_over_the_last_fifth():
    assert flattening([1.0] * 20) == 0.0
    assert flattening([4.0] * 12 + [2.0] * 4 + [1.0] * 4) == pytest.approx(0.5)
    assert flattening([1.0] * 9) is None


def test_lm_batch_is_the_hand_written_padding(tiny_dirs):
    tok = _tokenizer(tiny_dirs["llama"])
    examples = list(build_suite("synthetic", per_family=2))
    ids, labels = lm_batch(examples, tok)
    ref_ids, ref_labels = reference_lm_batch(examples, tok)
    assert len({int((row != -100).sum()) for row in labels}) > 1  # answers of several lengths
    assert torch.equal(ids, ref_ids) and torch.equal(labels, ref_labels)


def test_labels_loss_equals_the_hand_written_cross_entropy(tiny_dirs, reloaded):
    """HF's labels= loss shifts internally and averages over every answer token of the
    batch (not per row), exactly as the hand-written cross-entropy did."""
    tok = _tokenizer(tiny_dirs["llama"])
    hf = load_hf_model(tiny_dirs["llama"], device="cpu", dtype=torch.float32).eval()
    examples = list(build_suite("synthetic", per_family=1))
    ids, labels = lm_batch(examples, tok)
    with torch.no_grad():
        for model in (hf, reloaded.eval()):
            got, ref = answer_loss(model, ids, labels), reference_answer_loss(model, ids, labels)
            assert float(got) == pytest.approx(float(ref), abs=1e-5)
            # the average is over answer tokens pooled across rows
            logp = model(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
            target = labels[:, 1:]
            keep = target != -100
            nll = -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0][keep]
            assert float(got) == pytest.approx(float(nll.sum() / keep.sum()), abs=1e-5)
            per_row = [float(-logp[i].gather(-1, target[i].clamp(min=0)[:, None])[:, 0]
                             [keep[i]].mean()) for i in range(len(examples))]
            assert abs(float(got) - sum(per_row) / len(per_row)) > 1e-4  # not a row mean


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_exact_match_equals_the_per_example_greedy_loop(tiny_dirs, reloaded, batch_size):
    tok = _tokenizer(tiny_dirs["llama"])
    train, held = split(CONFIG)
    # trained and held-out arithmetic (some hit) and other families (answers of other lengths)
    examples = train + held + list(build_suite("synthetic", per_family=1))
    ref_completions, ref_hits = reference_greedy(reloaded, tok, examples)
    assert any(ref_hits) and not all(ref_hits)
    assert greedy_completions(reloaded, tok, examples, batch_size) == ref_completions
    assert greedy_hits(reloaded, tok, examples, batch_size) == ref_hits
    assert evaluate(reloaded, tok, examples, batch_size)[1] == sum(ref_hits) / len(examples)


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
