"""LoRA fine-tuning on a task family, with a fixed held-out split (DESIGN §5, LoRA comparison).

Metrics: held-out loss (mean cross-entropy over answer tokens, in nats) and exact match
of the greedy completion against the answer. The split does not depend on the training
seed: the family's examples of the seed-42 suite, first ``n_train`` for training and the
last ``n_heldout`` held out. Training is deterministic given ``seed`` on the CPU.
"""

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from tlatlas.errors import InvalidInputError
from tlatlas.tasks import DEFAULT_SEED, Example, build_suite


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One LoRA run."""

    family: str = "json"
    """Task family, or ``any`` for all twelve."""
    steps: int = 30
    """Optimizer steps."""
    lr: float = 2e-3
    """AdamW learning rate."""
    batch_size: int = 8
    """Examples per step."""
    n_train: int = 64
    """Training examples (per family for ``any``)."""
    n_heldout: int = 16
    """Held-out examples (per family for ``any``)."""
    seed: int = 0
    """Seeds the adapter init and the data order."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.n_train < 1 or self.n_heldout < 1:
            raise InvalidInputError("steps >= 0, batch_size >= 1, n_train >= 1, n_heldout >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a run measured."""

    config: dict
    """The TrainConfig as a dict."""
    plan: dict
    """The LoRA plan (bridges.export.LoraPlan.to_dict())."""
    trainable_params: int
    """Trainable parameters as PEFT counts them."""
    losses: tuple[float, ...]
    """Training loss per step."""
    heldout_loss_before: float
    """Held-out loss of the base model."""
    heldout_loss_after: float
    """Held-out loss after training."""
    exact_match_before: float
    """Greedy exact match of the base model, in [0, 1]."""
    exact_match_after: float
    """Greedy exact match after training."""

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.lora_train", "format_version": 1, **asdict(self)}


def split(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """The fixed (train, held-out) split."""
    families = None if config.family == "any" else [config.family]
    suite = build_suite("synthetic", seed=DEFAULT_SEED, families=families)
    train, held = [], []
    for exs in suite.by_family().values():
        if len(exs) < config.n_train + config.n_heldout:
            raise InvalidInputError(f"family has {len(exs)} examples, need {config.n_train + config.n_heldout}")
        train += exs[: config.n_train]
        held += exs[len(exs) - config.n_heldout:]
    return train, held


def lm_batch(examples: Sequence[Example], tokenizer) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded ``prompt + answer`` ids and labels (-100 outside the answer)."""
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


def answer_loss(model, ids: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over answer tokens (nats)."""
    dev = next(model.parameters()).device
    logits = model(input_ids=ids.to(dev)).logits[:, :-1].float()
    target = labels[:, 1:].to(dev)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             target.reshape(-1), ignore_index=-100)


@torch.no_grad()
def evaluate(model, tokenizer, examples: Sequence[Example], batch_size: int = 8) -> tuple[float, float]:
    """(held-out loss, greedy exact match) of ``model`` on ``examples``."""
    model.eval()
    dev = next(model.parameters()).device
    total, n_tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, labels = lm_batch(examples[i:i + batch_size], tokenizer)
        n = int((labels[:, 1:] != -100).sum())
        total += float(answer_loss(model, ids, labels)) * n
        n_tokens += n
    hits = 0
    for ex in examples:  # greedy decode as many tokens as the answer has
        ids, labels = lm_batch([ex], tokenizer)
        n_ans = int((labels != -100).sum())
        prompt = ids[:, : ids.shape[1] - n_ans].to(dev)
        for _ in range(n_ans):
            nxt = model(input_ids=prompt).logits[:, -1].argmax(-1, keepdim=True)
            prompt = torch.cat([prompt, nxt], dim=1)
        hits += int(torch.equal(prompt[0, -n_ans:].cpu(), ids[0, -n_ans:]))
    return total / max(n_tokens, 1), hits / len(examples)


def train_lora(source, plan, config: TrainConfig, *, quantization=None, device=None,
               base=None, out: str | Path | None = None,
               on_step: Callable[[int, float], None] | None = None,
               after_step: Callable[[object, int], None] | None = None,
               penalty: Callable[[object], Tensor] | None = None) -> TrainResult:
    """Fine-tune the adapters ``plan`` describes on ``source``.

    ``plan`` is a bridges.export.LoraPlan, or any plan with ``lora_config()`` (a PEFT
    config) and ``to_dict()`` (bridges.adalora.AdaLoraPlan).
    ``quantization`` (a bridges.quant.QuantSpec) trains QLoRA-style on a quantized copy.
    ``base``: an already loaded plain HF model to adapt instead of loading ``source`` (e.g.
    one with blocks skipped); PEFT injects the adapters into it in place, so after the
    call ``base`` computes with the trained adapters.
    ``after_step(peft_model, steps_done)`` runs once before training (0) and after every
    optimizer step, before the gradients are cleared (AdaLoRA's rank allocation,
    checkpoints). ``penalty(peft_model)`` is added to the optimized loss (AdaLoRA's
    orthogonal regularisation); ``losses`` record the answer loss alone.
    With ``out``, the adapter is saved with PEFT's ``save_pretrained`` plus ``result.json``.
    """
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from tlatlas.models import load_hf_model, weights_dir

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(weights_dir(source)))
    if base is None and quantization is not None:
        from tlatlas.models.quant import load_quantized_hf

        base = load_quantized_hf(source, quantization, device=device)
    elif base is None:
        base = load_hf_model(source, device=device, dtype=torch.float32)
    train, held = split(config)
    loss0, em0 = evaluate(base, tokenizer, held)
    model = get_peft_model(base, plan.lora_config())
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    order = random.Random(config.seed)
    losses = []
    model.train()
    if after_step is not None:
        after_step(model, 0)
    for step in range(config.steps):
        batch = order.sample(train, min(config.batch_size, len(train)))
        ids, labels = lm_batch(batch, tokenizer)
        loss = answer_loss(model, ids, labels)
        opt.zero_grad()
        (loss if penalty is None else loss + penalty(model)).backward()
        opt.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(model, step + 1)
        if on_step is not None:
            on_step(step, losses[-1])
    loss1, em1 = evaluate(model, tokenizer, held)
    result = TrainResult(config=asdict(config), plan=plan.to_dict(), trainable_params=n_params,
                         losses=tuple(losses), heldout_loss_before=loss0,
                         heldout_loss_after=loss1, exact_match_before=em0, exact_match_after=em1)
    if out is not None:
        out = Path(out)
        model.save_pretrained(str(out))
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result
