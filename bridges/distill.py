"""Recovery by distillation: LoRA on a skipped model, trained towards the full model.

A recovery fine-tune that optimises the answer loss moves the skipped model towards the
*answers* of a small training set, not towards the full model; it can raise the KL it is
meant to lower (an LM-loss recovery took KL 0.29 -> 0.55 on SmolLM2-135M). Distillation
optimises what the skip study measures: the loss is

    KL(p_full || p_student), summed over the vocabulary, averaged over every real token
    position of the training texts (prompt + answer),

with the full model's next-token distribution computed on the fly by a frozen teacher
(a second copy of the full model, so nothing vocabulary-sized is stored). Measured
afterwards on the held-out prompts, never trained on.
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from bridges.train import TrainConfig, split
from tlatlas.tasks import Example
from tlatlas.tokens import pad_id, pad_right, prompt_ids


@dataclass(frozen=True, kw_only=True)
class DistillResult:
    """What a distillation recovery measured during training."""

    config: dict
    """The TrainConfig as a dict (``steps``, ``lr``, ``batch_size``, ``n_train``, ``seed``)."""
    plan: dict
    """The LoRA plan (bridges.export.LoraPlan.to_dict())."""
    trainable_params: int
    """Trainable parameters as PEFT counts them."""
    losses: tuple[float, ...]
    """Distillation loss (mean KL per position, nats) per step."""

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.distill", "format_version": 1, **asdict(self)}


def text_batch(examples: Sequence[Example], tokenizer
               ) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Right-padded ``prompt + answer`` ids (BOS first) and the mask of real tokens."""
    rows = prompt_ids([ex.prompt + ex.answer for ex in examples], tokenizer)
    ids = pad_right(rows, pad_id(tokenizer))
    mask = torch.arange(ids.shape[1])[None] < torch.tensor([len(r) for r in rows])[:, None]
    return ids, mask


def distill_kl(teacher_logits: Float[Tensor, "batch pos d_vocab"],
               student_logits: Float[Tensor, "batch pos d_vocab"],
               mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """Mean over real positions of KL(p_teacher || p_student), in nats."""
    lt = teacher_logits.float().log_softmax(-1)
    ls = student_logits.float().log_softmax(-1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    m = mask.to(kl.device)
    return (kl * m).sum() / m.sum().clamp(min=1)


def distill_lora(student: nn.Module, teacher: nn.Module, tokenizer, plan, config: TrainConfig,
                 *, on_step: Callable[[int, float], None] | None = None) -> DistillResult:
    """Train the adapters ``plan`` describes on ``student`` (a plain HF model, e.g. with
    blocks skipped) to match ``teacher``'s next-token distributions on ``config``'s
    training split. PEFT injects the adapters into ``student`` in place, so after the call
    ``student`` computes with them. Deterministic given ``config.seed`` on the CPU."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    train = split(config)[0]
    teacher.eval()
    model = get_peft_model(student, plan.lora_config())
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    order = random.Random(config.seed)
    dev = next(model.parameters()).device
    losses = []
    model.train()
    for step in range(config.steps):
        ids, mask = text_batch(order.sample(train, min(config.batch_size, len(train))),
                               tokenizer)
        ids = ids.to(dev)
        with torch.no_grad():
            target = teacher(input_ids=ids, use_cache=False).logits
        loss = distill_kl(target, model(input_ids=ids, use_cache=False).logits, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return DistillResult(config=asdict(config), plan=plan.to_dict(), trainable_params=n_params,
                         losses=tuple(losses))
