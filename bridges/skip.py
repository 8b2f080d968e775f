"""Study (c), layer skip (DESIGN §5): drop blocks, measure the damage, try to recover it.

Skipping block L puts the identity in its place: ``resid_post[L] = resid_pre[L]``. That is
exactly the atlas's zero ablation of the ``block`` component at L at *every* position (the
block's whole write set to 0), so a one-block skip's KL is the block effect of an atlas
with ``positions_ablated="all"``; skipping several blocks at once is what the atlas does
not measure.

Measured at the scored position (the last prompt token) of held-out prompts, against the
*full* model every time:

- top-5 overlap: ``|top5_full ∩ top5_skipped| / 5``, mean over prompts (1 = same top 5);
- KL(p_full || p_skipped) in nats, per prompt and its mean.

:func:`layer_skip_study` puts the atlas's skip set (the ``k`` layers whose block ablation
it rates least important, family-averaged KL) in the distribution of all same-size sets
(or ``max_sets`` random ones; bridges.skip_sets): its percentile of KL, with Block
Influence's set (the ``k`` lowest 1 - cos(resid_pre, resid_post), ShortGPT) as the
baseline, and paired per-prompt differences with 95% CIs. The atlas's set and a random
one are then recovered by LoRA on the remaining layers, by default distilled to the full
model's next-token distribution (bridges.distill) on the training prompts of every family,
and measured again on the held-out prompts (never trained on).

Smoke size (CPU, SmolLM2-135M, a few minutes)::

    tlatlas study skip --atlas docs/results/studies/atlas/seed42 --k 4 --steps 20 \\
        --n-train 8 --n-heldout 2 --out skip.json
"""

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from bridges.distill import distill_lora
from bridges.export import plan_for_layers
from bridges.influence import block_influence
from bridges.names import MODULES
from bridges.skip_sets import DEFAULT_MAX_SETS, per_prompt_kl, percentile, skip_sets
from bridges.train import TrainConfig, answer_nll, evaluate, lm_batch, split, train_lora
from tlatlas.atlas.sums import AtlasSums, mean_effect
from tlatlas.errors import InvalidInputError, OutOfRangeError
from tlatlas.metrics import effects
from tlatlas.stats import paired_difference
from tlatlas.tasks import Example
from tlatlas.tokens import encode_batch

DEFAULT_RECOVERY = TrainConfig(family="any", steps=40, n_train=16, n_heldout=8, lr=1e-3)
"""Recovery fine-tune: 16 training and 8 held-out prompts per family (192 and 96 over the
twelve families), 40 distillation steps of 8 texts."""
TOP = 5
Objective = Literal["distill", "lm"]
OBJECTIVES: tuple[str, ...] = ("distill", "lm")
"""Recovery objectives: distillation to the full model, or the answers' LM loss."""


CACHE_KWARGS = ("cache", "past_key_values")
"""Names a decoder layer's KV cache argument has had across transformers versions."""


class SkippedBlock(nn.Module):
    """The identity in a skipped block's place: the residual stream passes unchanged.

    Decoder layers take the residual stream first and return it (transformers 5), with
    masks, rotary embeddings and the cache as further arguments. No other layer reads a
    skipped block's keys/values, but the cache's *length* is read from its layers (layer
    0's sets the mask and positions while ``generate`` decodes), so the block appends a
    zero placeholder one channel wide per position to its own cache layer.
    """

    def __init__(self, layer: int) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        cache = next((kwargs[k] for k in CACHE_KWARGS if kwargs.get(k) is not None), None)
        if cache is not None and hasattr(cache, "update"):
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1,
                                                  hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer)
        return hidden_states


def blocks_path(model) -> str:
    """Dotted path of the decoder's block list (``model.layers``), from the bridge's mapping."""
    return model.bridge.adapter.component_mapping["blocks"].name


@contextmanager
def skipped_blocks(hf_model: nn.Module, layers: Sequence[int], *, path: str = "model.layers"
                   ) -> Iterator[nn.Module]:
    """``hf_model`` with blocks ``layers`` replaced by the identity, restored on exit.

    ``path`` is where the block list lives (:func:`blocks_path` reads it from a bridge).
    Layer indices (``layer_idx``, per-layer mask types) of the kept blocks are unchanged.
    """
    blocks = hf_model.get_submodule(path)
    bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
    if bad:
        raise OutOfRangeError(f"cannot skip layers {bad}: the model has {len(blocks)} blocks")
    saved = {layer: blocks[layer] for layer in set(layers)}
    for layer in saved:
        blocks[layer] = SkippedBlock(layer)
    try:
        yield hf_model
    finally:
        for layer, block in saved.items():
            blocks[layer] = block


def least_important(sums: AtlasSums, k: int, *, metric: str = "kl") -> list[int]:
    """The ``k`` layers with the smallest family-averaged block effect (ties: lower layer)."""
    per_layer = mean_effect(sums, metric, "block").mean(1).tolist()
    if not 0 <= k <= len(per_layer):
        raise InvalidInputError(f"k must be in 0..{len(per_layer)}, got {k}")
    order = sorted(range(len(per_layer)), key=lambda i: (per_layer[i], i))
    return sorted(sums.layers[i] for i in order[:k])


def random_layers(n_layers: int, k: int, seed: int) -> list[int]:
    """``k`` distinct layers drawn with ``random.Random(seed)``."""
    return sorted(random.Random(seed).sample(range(n_layers), k))


@torch.no_grad()
def scored_logits(hf_model: nn.Module, tokenizer, examples: Sequence[Example], *,
                  batch_size: int = 8) -> Float[Tensor, "batch d_vocab"]:
    """Next-token logits at each prompt's scored position (fp32, on the CPU)."""
    hf_model.eval()
    dev = next(hf_model.parameters()).device
    out = []
    for i in range(0, len(examples), batch_size):
        batch = encode_batch(examples[i:i + batch_size], tokenizer)
        logits = hf_model(input_ids=batch.tokens.to(dev), use_cache=False).logits
        rows = torch.arange(len(batch), device=logits.device)
        out.append(logits[rows, batch.scored_pos.to(logits.device)].float().cpu())
    return torch.cat(out)


def set_kls(hf_model: nn.Module, tokenizer, examples: Sequence[Example],
            reference: Float[Tensor, "batch d_vocab"], sets: Sequence[Sequence[int]], *,
            path: str = "model.layers", batch_size: int = 8) -> Float[Tensor, "set batch"]:
    """KL of each skip set against ``reference`` (the full model's scored logits, computed
    with the same ``batch_size``: other batch shapes round differently), per prompt."""
    rows = []
    for layers in sets:
        with skipped_blocks(hf_model, list(layers), path=path):
            rows.append(per_prompt_kl(reference, scored_logits(hf_model, tokenizer, examples,
                                                               batch_size=batch_size)))
    return torch.stack(rows)


def top_overlap(full: Float[Tensor, "batch d_vocab"], other: Float[Tensor, "batch d_vocab"],
                top: int = TOP) -> Float[Tensor, " batch"]:
    """``|topk(full) ∩ topk(other)| / k`` per row."""
    a, b = full.topk(top, dim=-1).indices, other.topk(top, dim=-1).indices
    return (a[:, :, None] == b[:, None, :]).any(-1).float().mean(-1)


def skip_measures(full: Float[Tensor, "batch d_vocab"], other: Float[Tensor, "batch d_vocab"]
                  ) -> dict[str, float]:
    """Mean top-5 overlap (and each prompt's) and mean KL(full || other) in nats."""
    target = full.argmax(-1)  # unused by KL; effects() also wants a target
    overlap = top_overlap(full, other)
    return {"top5_overlap": float(overlap.mean()), "top5_per_prompt": overlap.tolist(),
            "kl": float(effects(full, other, target).kl.mean())}


def lowest_influence(bi: Float[Tensor, " layer"], k: int) -> list[int]:
    """The ``k`` layers with the smallest Block Influence (ShortGPT's skip choice; ties:
    lower layer)."""
    if not 0 <= k <= bi.shape[0]:
        raise InvalidInputError(f"k must be in 0..{bi.shape[0]}, got {k}")
    return sorted(sorted(range(bi.shape[0]), key=lambda i: (float(bi[i]), i))[:k])


def _load(source, device):
    from transformers import AutoTokenizer

    from tlatlas.models import load_hf_model, weights_dir

    return (load_hf_model(source, device=device, dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(weights_dir(source))))


def _answer_loss(hf_model, tokenizer, examples: Sequence[Example]) -> float:
    """Held-out answer loss pooled over answer tokens (nats); no generation (cheap)."""
    total, n = 0.0, 0
    for i in range(0, len(examples), 8):
        s, c = answer_nll(hf_model, *lm_batch(examples[i:i + 8], tokenizer))
        total, n = total + float(s.sum()), n + int(c.sum())
    return total / max(n, 1)


def skip_and_recover(source, model, layers: Sequence[int], recovery: TrainConfig, *,
                     modules: Sequence[str] = MODULES, rank: int = 8, device=None,
                     reference: Tensor | None = None, teacher: nn.Module | None = None,
                     objective: Objective = "distill",
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Skip ``layers`` of a fresh fp32 copy of ``source``; measure; recover with LoRA; measure.

    ``model`` (a LoadedModel of ``source``) names the modules; ``reference`` is the full
    model's scored logits on the held-out prompts and ``teacher`` the full model (both
    computed or loaded when None). ``objective``: ``distill`` trains towards the full
    model's next-token distributions (bridges.distill); ``lm`` trains on the answers
    (bridges.train). Per-prompt KL before and after is recorded, with the paired
    interval of the drop (``recovery``: KL before - after, positive = recovered).
    """
    if objective not in OBJECTIVES:
        raise InvalidInputError(f"unknown recovery objective {objective!r}; choose "
                                f"{', '.join(OBJECTIVES)}")
    hf, tokenizer = _load(source, device)
    held = split(recovery)[1]
    if teacher is None and (reference is None or objective == "distill"):
        teacher = _load(source, device)[0]
    if reference is None:
        reference = scored_logits(teacher, tokenizer, held)
    kept = [layer for layer in range(model.n_layers) if layer not in set(layers)]
    row = {"layers_skipped": sorted(layers), "k": len(layers), "objective": objective}
    with skipped_blocks(hf, layers, path=blocks_path(model)):
        logits_before = scored_logits(hf, tokenizer, held)
        before = per_prompt_kl(reference, logits_before)
        row["before"] = skip_measures(reference, logits_before)
        row["kl_before_per_prompt"] = before.tolist()
        if not kept or recovery.steps == 0:
            return row
        plan = plan_for_layers(model, "recovery", kept, modules=modules, rank=rank)
        if objective == "distill":
            loss_before = _answer_loss(hf, tokenizer, held)
            result = distill_lora(hf, teacher, tokenizer, plan, recovery, on_step=on_step)
            trained = {"heldout_loss_before": loss_before,
                       "heldout_loss_after": _answer_loss(hf, tokenizer, held)}
        else:
            result = train_lora(source, plan, recovery, base=hf, on_step=on_step)
            trained = {"heldout_loss_before": result.heldout_loss_before,
                       "heldout_loss_after": result.heldout_loss_after,
                       "exact_match_before": result.exact_match_before,
                       "exact_match_after": result.exact_match_after}
        # PEFT injected the trained adapters into ``hf`` in place
        logits_after = scored_logits(hf, tokenizer, held)
        after = per_prompt_kl(reference, logits_after)
        row["after"] = skip_measures(reference, logits_after)
        row["kl_after_per_prompt"] = after.tolist()
    strata = _strata(held)
    row.update(trainable_params=result.trainable_params, modules=list(modules), rank=rank,
               train_losses=list(result.losses),
               recovery=paired_difference(before, after, strata=strata).to_dict(), **trained)
    return row


def _strata(examples: Sequence[Example]) -> Tensor:
    index = {f: i for i, f in enumerate(sorted({ex.family for ex in examples}))}
    return torch.tensor([index[ex.family] for ex in examples])


def layer_skip_study(source, model, atlas_sums: AtlasSums, *, k: int, seed: int = 0,
                     recovery: TrainConfig = DEFAULT_RECOVERY, modules: Sequence[str] = MODULES,
                     rank: int = 8, device=None, max_sets: int = DEFAULT_MAX_SETS,
                     objective: Objective = "distill",
                     on_run: Callable[[str], None] | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """The atlas's skip set of size ``k`` against every (or ``max_sets`` random) same-size
    set, Block Influence's set and a random one; then recovery of the atlas's and the
    random set.

    ``recovery`` is the fine-tune (family ``any`` by default; its seed is set to ``seed``);
    its held-out prompts are the ones every KL is measured on, its training prompts the
    ones distillation (and Block Influence) sees. Returns ``rows`` (recovered sets),
    ``sets`` (each chosen set's layers, mean KL, per-prompt KL and percentile),
    ``distribution`` (the sets measured and their mean KL), ``comparisons`` (paired
    per-prompt KL differences: the random sets' mean minus the atlas's, Block Influence's
    minus the atlas's; positive = the atlas's set is safer) and the full model's
    held-out loss and exact match.
    """
    recovery = replace(recovery, seed=seed)
    teacher, tokenizer = _load(source, device)
    train, held = split(recovery)
    reference = scored_logits(teacher, tokenizer, held)
    full_loss, full_em = evaluate(teacher, tokenizer, held)
    path = blocks_path(model)
    strata = _strata(held)
    if on_run is not None:
        on_run("Block Influence")
    bi = block_influence(model, train)
    chosen = {"atlas": least_important(atlas_sums, k), "block-influence": lowest_influence(bi, k),
              "random": random_layers(model.n_layers, k, seed)}
    if on_run is not None:
        on_run(f"distribution of skip sets of {k}")
    sets, exhaustive = skip_sets(model.n_layers, k, max_sets=max_sets, seed=seed)
    dist = set_kls(teacher, tokenizer, held, reference, sets, path=path)
    chosen_kl = set_kls(teacher, tokenizer, held, reference, list(chosen.values()), path=path)
    summary = {}
    for (name, layers), kl in zip(chosen.items(), chosen_kl, strict=True):
        summary[name] = {"layers": layers, "kl": float(kl.mean()), "kl_per_prompt": kl.tolist(),
                         "percentile": percentile(kl, dist, strata=strata).to_dict()}
    atlas_kl = chosen_kl[0]
    comparisons = {
        "random_sets_minus_atlas": paired_difference(dist.mean(0), atlas_kl,
                                                     strata=strata).to_dict(),
        "block_influence_minus_atlas": paired_difference(chosen_kl[1], atlas_kl,
                                                         strata=strata).to_dict()}
    rows = []
    for name in ("atlas", "random"):
        if on_run is not None:
            on_run(f"skip {name} {chosen[name]}")
        row = skip_and_recover(source, model, chosen[name], recovery, modules=modules,
                               rank=rank, device=device, reference=reference, teacher=teacher,
                               objective=objective, on_step=on_step)
        rows.append({"skip_set": name, "seed": seed, **row})
    return {"rows": rows, "k": k, "seed": seed, "n_prompts": len(held),
            "families": sorted({ex.family for ex in held}),
            "full": {"heldout_loss": full_loss, "exact_match": full_em},
            "sets": summary, "comparisons": comparisons,
            "comparison": "per-prompt KL(full || skipped) at the scored position; other minus "
                          "atlas, positive = the atlas's set is safer; paired bootstrap over "
                          "held-out prompts, stratified by family",
            "distribution": {"n_sets": len(sets), "exhaustive": exhaustive,
                             "total_sets": math.comb(model.n_layers, k),
                             "sets": [list(x) for x in sets],
                             "mean_kl": dist.mean(1).tolist()},
            "recovery": {**asdict(recovery), "modules": list(modules), "rank": rank,
                         "objective": objective}}
