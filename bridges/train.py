"""LoRA fine-tuning on a task family, with a fixed held-out split (DESIGN §5, LoRA comparison).

Metrics: held-out loss (mean cross-entropy over answer tokens, in nats) and exact match
of the greedy completion (batched ``generate``) against the answer, pooled and per held-out
example (:class:`HeldOut`; the per-example values are what paired comparisons of two runs
resample). The split does not
depend on the training seed: the family's examples of the seed-42 suite, first
``n_train`` for training and the last ``n_heldout`` held out. Training is deterministic given ``seed`` on the CPU.
"""

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas.errors import InvalidInputError
from tlatlas.tasks import DEFAULT_SEED, Example, build_suite
from tlatlas.tokens import pad_id, pad_right, prompt_ids


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
    heldout_uids: tuple[int, ...] = ()
    """``Example.uid`` of each held-out example, in the split's order (what paired
    comparisons of two runs match on)."""
    heldout_losses: tuple[float, ...] = ()
    """Per held-out example after training: mean cross-entropy over its answer tokens."""
    heldout_hits: tuple[bool, ...] = ()
    """Per held-out example after training: does greedy decoding reproduce the answer?"""

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


def _with_answers(examples: Sequence[Example], tokenizer) -> tuple[list[list[int]], list[int]]:
    """Each example's ``prompt + answer`` ids (BOS first, as the one encoder writes prompts)
    and the index where its answer starts."""
    rows = prompt_ids([ex.prompt + ex.answer for ex in examples], tokenizer)
    starts = [len(p) for p in prompt_ids([ex.prompt for ex in examples], tokenizer)]
    return rows, starts


def lm_batch(examples: Sequence[Example], tokenizer) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-padded ``prompt + answer`` ids and labels (-100 outside the answer)."""
    rows, starts = _with_answers(examples, tokenizer)
    labels = [[-100] * s + r[s:] for r, s in zip(rows, starts, strict=True)]
    return pad_right(rows, pad_id(tokenizer)), pad_right(labels, -100)


def causal_lm(model):
    """The transformers model under a PEFT wrapper (its adapters stay injected), else ``model``.

    Called with ``labels``, a PEFT AdaLoRA model adds its orthogonal regularisation to the
    loss, in eval mode too; the plain model returns the answer loss alone.
    """
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def answer_loss(model, ids: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over answer tokens (nats): the causal LM's own ``labels=`` loss
    (it shifts the labels and ignores -100), without any adapter's regularisation."""
    dev = next(model.parameters()).device
    return causal_lm(model)(input_ids=ids.to(dev), labels=labels.to(dev)).loss


@torch.no_grad()
def greedy_completions(model, tokenizer, examples: Sequence[Example], batch_size: int = 8
                       ) -> list[list[int]]:
    """Per example, the tokens greedy decoding appends to its prompt: as many as its answer
    has (fewer only where generation stopped at EOS).

    Batched ``generate`` with a KV cache: prompts left-padded with an attention mask, as
    many new tokens as the batch's longest answer, each example cut to its own answer's
    length.
    """
    model.eval()
    lm = causal_lm(model)
    dev = next(model.parameters()).device
    fill = pad_id(tokenizer)
    completions = []
    for i in range(0, len(examples), batch_size):
        rows, starts = _with_answers(examples[i:i + batch_size], tokenizer)
        prompts = [r[:s] for r, s in zip(rows, starts, strict=True)]
        lengths = [len(r) - s for r, s in zip(rows, starts, strict=True)]
        # left padding = right padding of the reversed rows, flipped back
        ids = pad_right([p[::-1] for p in prompts], fill).flip(1)
        mask = pad_right([[1] * len(p) for p in prompts], 0).flip(1)
        out = lm.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                          num_beams=1, max_new_tokens=max(lengths), pad_token_id=fill)
        new = out[:, ids.shape[1]:].cpu()  # narrower when every row stopped at EOS early
        completions += [new[j, :n].tolist() for j, n in enumerate(lengths)]
    return completions


def greedy_hits(model, tokenizer, examples: Sequence[Example], batch_size: int = 8) -> list[bool]:
    """Per example: does greedy decoding from the prompt reproduce the answer's tokens?"""
    rows, starts = _with_answers(examples, tokenizer)
    got = greedy_completions(model, tokenizer, examples, batch_size)
    return [c == r[s:] for c, r, s in zip(got, rows, starts, strict=True)]


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """Per-example held-out measures of one model (DESIGN §5, LoRA comparison)."""

    uids: tuple[int, ...]
    """``Example.uid`` of each example, in order."""
    nll_sums: tuple[float, ...]
    """Summed cross-entropy over each example's answer tokens (nats)."""
    n_tokens: tuple[int, ...]
    """Answer tokens of each example."""
    hits: tuple[bool, ...]
    """Greedy exact match of each example."""

    @property
    def losses(self) -> tuple[float, ...]:
        """Mean cross-entropy over each example's own answer tokens (nats)."""
        return tuple(s / max(n, 1) for s, n in zip(self.nll_sums, self.n_tokens, strict=True))

    @property
    def loss(self) -> float:
        """Cross-entropy pooled over every answer token of every example (nats)."""
        return sum(self.nll_sums) / max(sum(self.n_tokens), 1)

    @property
    def exact_match(self) -> float:
        return sum(self.hits) / max(len(self.hits), 1)


@torch.no_grad()
def answer_nll(model, ids: Int[Tensor, "batch pos"], labels: Int[Tensor, "batch pos"]
               ) -> tuple[Float[Tensor, " batch"], Int[Tensor, " batch"]]:
    """(summed cross-entropy, answer-token count) per row, as the ``labels=`` loss shifts
    them: logits at position t score the label at t + 1."""
    dev = next(model.parameters()).device
    logits = causal_lm(model)(input_ids=ids.to(dev)).logits[:, :-1].float()
    target = labels[:, 1:].to(dev)
    keep = target != -100
    logp = logits.log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    return -(logp * keep).sum(-1).cpu().double(), keep.sum(-1).cpu()


@torch.no_grad()
def evaluate_examples(model, tokenizer, examples: Sequence[Example], batch_size: int = 8
                      ) -> HeldOut:
    """Per-example answer loss and greedy exact match of ``model`` on ``examples``."""
    model.eval()
    sums, counts = [], []
    for i in range(0, len(examples), batch_size):
        s, n = answer_nll(model, *lm_batch(examples[i:i + batch_size], tokenizer))
        sums += s.tolist()
        counts += n.tolist()
    hits = greedy_hits(model, tokenizer, examples, batch_size)
    return HeldOut(uids=tuple(ex.uid for ex in examples), nll_sums=tuple(sums),
                   n_tokens=tuple(counts), hits=tuple(hits))


def evaluate(model, tokenizer, examples: Sequence[Example], batch_size: int = 8) -> tuple[float, float]:
    """(held-out loss pooled over answer tokens, greedy exact match) of ``model``."""
    held = evaluate_examples(model, tokenizer, examples, batch_size)
    return held.loss, held.exact_match


def flattening(losses: Sequence[float], *, window: float = 0.2) -> float | None:
    """How much the training loss still falls at the end: the relative drop from the mean of
    the second-to-last ``window`` of the steps to the mean of the last (0.03 = 3%; near 0
    or negative: flat). None with fewer than 10 steps."""
    w = int(len(losses) * window)
    if len(losses) < 10 or w < 1:
        return None
    before, last = losses[-2 * w:-w], losses[-w:]
    a, b = sum(before) / len(before), sum(last) / len(last)
    return (a - b) / a if a > 0 else 0.0


def train_lora(source, plan, config: TrainConfig, *, quantization=None, device=None,
               base=None, out: str | Path | None = None,
               before: tuple[float, float] | None = None,
               on_step: Callable[[int, float], None] | None = None,
               after_step: Callable[[object, int], None] | None = None) -> TrainResult:
    """Fine-tune the adapters ``plan`` describes on ``source``.

    ``plan`` is a bridges.export.LoraPlan, or any plan with ``lora_config()`` (a PEFT
    config) and ``to_dict()`` (bridges.adalora.AdaLoraPlan).
    ``quantization`` (a tlatlas.models.quant.QuantSpec) trains QLoRA-style on a quantized copy.
    ``base``: an already loaded plain HF model to adapt instead of loading ``source`` (e.g.
    one with blocks skipped); PEFT injects the adapters into it in place, so after the
    call ``base`` computes with the trained adapters.
    ``after_step(peft_model, steps_done)`` runs once before training (0) and after every
    optimizer step, before the gradients are cleared (AdaLoRA's rank allocation,
    checkpoints). The optimized loss is the PEFT model's own ``labels=`` loss, which for
    AdaLoRA includes its orthogonal regularisation; ``losses`` record the answer loss alone.
    ``before``: the base model's (held-out loss, exact match) on this split when already
    measured (a study's earlier run of the same family), so it is not measured again.
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
    loss0, em0 = before if before is not None else evaluate(base, tokenizer, held)
    model = get_peft_model(base, plan.lora_config())
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    order = random.Random(config.seed)
    losses = []
    model.train()
    if after_step is not None:
        after_step(model, 0)
    dev = next(model.parameters()).device
    loss_function = causal_lm(model).loss_function  # the answer loss alone, to record
    for step in range(config.steps):
        batch = order.sample(train, min(config.batch_size, len(train)))
        ids, labels = (t.to(dev) for t in lm_batch(batch, tokenizer))
        output = model(input_ids=ids, labels=labels)
        opt.zero_grad()
        output.loss.backward()
        opt.step()
        with torch.no_grad():
            answer = loss_function(logits=output.logits, labels=labels,
                                   vocab_size=output.logits.shape[-1])
        losses.append(float(answer))
        if after_step is not None:
            after_step(model, step + 1)
        if on_step is not None:
            on_step(step, losses[-1])
    after = evaluate_examples(model, tokenizer, held)
    result = TrainResult(config=asdict(config), plan=plan.to_dict(), trainable_params=n_params,
                         losses=tuple(losses), heldout_loss_before=loss0,
                         heldout_loss_after=after.loss, exact_match_before=em0,
                         exact_match_after=after.exact_match, heldout_uids=after.uids,
                         heldout_losses=after.losses, heldout_hits=after.hits)
    if out is not None:
        out = Path(out)
        model.save_pretrained(str(out))
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1))
    return result
