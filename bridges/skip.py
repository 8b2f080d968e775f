"""Study (c), layer skip (DESIGN §5): drop blocks, measure the damage, try to recover it.

Skipping block L puts the identity in its place: ``resid_post[L] = resid_pre[L]``. That is
exactly the atlas's zero ablation of the ``block`` component at L (the block's whole write
set to 0), so a one-block skip's KL is the atlas's block effect of that layer; skipping
several blocks at once is what the atlas does not measure.

Measured at the scored position (the last prompt token) of held-out prompts, against the
*full* model every time:

- top-5 overlap: ``|top5_full ∩ top5_skipped| / 5``, mean over prompts (1 = same top 5);
- KL(p_full || p_skipped) in nats, mean over prompts.

Skip sets of size ``k``: the ``k`` layers whose block ablation the atlas rates least
important (family-averaged KL), and ``k`` layers drawn at random (seeded). Each skipped
model then gets a short recovery LoRA fine-tune on the remaining layers (bridges.train on
family ``any``; its held-out prompts are the ones measured here, never trained on), and is
measured again.

Smoke size (CPU, SmolLM2-135M, a few minutes)::

    tlatlas study skip --atlas docs/results/studies/atlas/seed42 --k 4 --steps 20 \\
        --n-train 8 --n-heldout 2 --out skip.json
"""

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace

import torch
from jaxtyping import Float
from torch import Tensor, nn

from bridges.export import plan_for_layers
from bridges.names import MODULES
from bridges.train import TrainConfig, evaluate, split, train_lora
from tlatlas.atlas.sums import AtlasSums, mean_effect
from tlatlas.errors import InvalidInputError, OutOfRangeError
from tlatlas.metrics import effects
from tlatlas.tasks import Example
from tlatlas.tokens import encode_batch

DEFAULT_RECOVERY = TrainConfig(family="any", steps=30, n_train=8, n_heldout=2)
TOP = 5


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


def top_overlap(full: Float[Tensor, "batch d_vocab"], other: Float[Tensor, "batch d_vocab"],
                top: int = TOP) -> Float[Tensor, " batch"]:
    """``|topk(full) ∩ topk(other)| / k`` per row."""
    a, b = full.topk(top, dim=-1).indices, other.topk(top, dim=-1).indices
    return (a[:, :, None] == b[:, None, :]).any(-1).float().mean(-1)


def skip_measures(full: Float[Tensor, "batch d_vocab"], other: Float[Tensor, "batch d_vocab"]
                  ) -> dict[str, float]:
    """Mean top-5 overlap and mean KL(full || other) in nats."""
    target = full.argmax(-1)  # unused by KL; effects() also wants a target
    return {"top5_overlap": float(top_overlap(full, other).mean()),
            "kl": float(effects(full, other, target).kl.mean())}


def _load(source, device):
    from transformers import AutoTokenizer

    from tlatlas.models import load_hf_model, weights_dir

    return (load_hf_model(source, device=device, dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(weights_dir(source))))


def skip_and_recover(source, model, layers: Sequence[int], recovery: TrainConfig, *,
                     modules: Sequence[str] = MODULES, rank: int = 8, device=None,
                     reference: Tensor | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Skip ``layers`` of a fresh fp32 copy of ``source``; measure; recover with LoRA; measure.

    ``model`` (a LoadedModel of ``source``) names the modules; ``reference`` is the full
    model's scored logits on the held-out prompts (computed when None).
    """
    hf, tokenizer = _load(source, device)
    held = split(recovery)[1]
    if reference is None:
        reference = scored_logits(hf, tokenizer, held)
    kept = [layer for layer in range(model.n_layers) if layer not in set(layers)]
    row = {"layers_skipped": sorted(layers), "k": len(layers)}
    with skipped_blocks(hf, layers, path=blocks_path(model)):
        row["before"] = skip_measures(reference, scored_logits(hf, tokenizer, held))
        if not kept or recovery.steps == 0:
            return row
        plan = plan_for_layers(model, "recovery", kept, modules=modules, rank=rank)
        result = train_lora(source, plan, recovery, base=hf, on_step=on_step)
        # PEFT injected the trained adapters into ``hf`` in place
        row["after"] = skip_measures(reference, scored_logits(hf, tokenizer, held))
    row.update(trainable_params=result.trainable_params, modules=list(modules), rank=rank,
               heldout_loss_before=result.heldout_loss_before,
               heldout_loss_after=result.heldout_loss_after,
               exact_match_before=result.exact_match_before,
               exact_match_after=result.exact_match_after)
    return row


def layer_skip_study(source, model, atlas_sums: AtlasSums, *, k: int, seed: int = 0,
                     recovery: TrainConfig = DEFAULT_RECOVERY, modules: Sequence[str] = MODULES,
                     rank: int = 8, device=None,
                     on_run: Callable[[str], None] | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Atlas-chosen vs random skip sets of size ``k``: measures before and after recovery.

    ``recovery`` is the fine-tune (family ``any`` by default; its seed is set to ``seed``).
    Also returns the full model's held-out loss and exact match as the reference.
    """
    recovery = replace(recovery, seed=seed)
    hf, tokenizer = _load(source, device)
    held = split(recovery)[1]
    reference = scored_logits(hf, tokenizer, held)
    full_loss, full_em = evaluate(hf, tokenizer, held)
    del hf
    sets = {"atlas": least_important(atlas_sums, k),
            "random": random_layers(model.n_layers, k, seed)}
    rows = []
    for name, layers in sets.items():
        if on_run is not None:
            on_run(f"skip {name} {layers}")
        row = skip_and_recover(source, model, layers, recovery, modules=modules, rank=rank,
                               device=device, reference=reference, on_step=on_step)
        rows.append({"skip_set": name, "seed": seed, **row})
    return {"rows": rows, "k": k, "seed": seed, "n_prompts": len(held),
            "full": {"heldout_loss": full_loss, "exact_match": full_em},
            "recovery": {**asdict(recovery), "modules": list(modules), "rank": rank}}
