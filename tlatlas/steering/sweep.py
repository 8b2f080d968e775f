"""Steering (DESIGN §5 "Steering"): the scoped hook and the layer x scale sweep.

- **Vectors** (:mod:`tlatlas.steering.vectors`): difference of means
  on ``resid_post`` per family, or a user's contrastive pair, unit-normalised and scaled
  by the layer's typical residual norm.
- **Hook**: :func:`steering` adds ``delta`` to ``blocks.L.hook_resid_post`` at every
  position after BOS (never on BOS or padding) and removes itself in ``finally``.
- **Sweep**: :func:`steering_sweep` measures KL(p_clean ‖ p_steered) and Δlogp of each
  example's answer at the scored position for every layer and scale, next to two
  controls of the same norm (:mod:`tlatlas.steering.controls`): K isotropic random
  directions and M partition directions (halves of the family's own training prompts).
- Precision rows: :mod:`tlatlas.steering.precision`; transfer between models:
  :mod:`tlatlas.steering.transfer`; results and files: :mod:`tlatlas.steering.result`.
"""

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.atlas.engine import clean_batches
from tlatlas.hooks import HookFn, hooks_attached
from tlatlas.metrics import effects
from tlatlas.models import LoadedModel, check_layers
from tlatlas.models.forward import run_from_layer
from tlatlas.steering.config import SteeringConfig
from tlatlas.steering.controls import random_directions
from tlatlas.steering.result import (
    SteeringResult,
    canonical_example_order,
    examples_hash,
    precision_label,
)
from tlatlas.steering.vectors import SteeringError, SteeringVectors, resid_hook, steer_mask
from tlatlas.tasks import Example
from tlatlas.tasks.suite import canonical_order

# --------------------------------------------------------------------------- the hook


def add_steering(
    act: Float[Tensor, "batch pos d_model"],
    delta: Float[Tensor, "batch d_model"],
    mask: Bool[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_model"]:
    """``act + delta`` at masked positions, ``act`` itself elsewhere (pure)."""
    added = act + delta.to(device=act.device, dtype=act.dtype)[:, None, :]
    return torch.where(mask.to(act.device)[..., None], added, act)


def steering_hook(delta: Float[Tensor, "batch d_model"], mask: Bool[Tensor, "batch pos"]) -> HookFn:
    def hook(act: Tensor, hook: object = None) -> Tensor:
        return add_steering(act, delta, mask)

    return hook


@contextmanager
def steering(
    model: LoadedModel,
    layer: int,
    delta: Float[Tensor, "batch d_model"],
    roles: Int[Tensor, "batch pos"],
) -> Iterator[None]:
    """Add ``delta`` (already ``s * v * norm``) to ``resid_post[layer]`` at every position
    after BOS for the duration of the block; BOS and padding are left untouched."""
    check_layers(model, [layer])
    with hooks_attached(model.bridge, [(resid_hook(layer), steering_hook(delta, steer_mask(roles)))]):
        yield


# --------------------------------------------------------------------------- the sweep


def _sweep_layers(model: LoadedModel, vectors: SteeringVectors, config: SteeringConfig) -> tuple[int, ...]:
    layers = config.layers if config.layers is not None else vectors.layers
    check_layers(model, layers)
    for layer in layers:
        vectors.layer_index(layer)
    return tuple(layers)


def _scored_logits(model: LoadedModel, tokens: Tensor, scored: Tensor) -> Tensor:
    with torch.inference_mode():
        logits = model.bridge(tokens)
    return logits[torch.arange(tokens.shape[0], device=logits.device), scored.to(logits.device)]


def _steered_logits(model: LoadedModel, method: str, layer: int, batch, clean, mask: Tensor,
                    delta: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_vocab"]:
    """Logits at the scored positions with ``delta[row]`` added at ``layer``; rows are
    ``n_variants`` copies of the batch, variant-major."""
    nv = delta.shape[0] // len(batch)
    dev = model.device
    scored = batch.scored_pos.to(dev).repeat(nv)
    if method == "naive":
        tokens = batch.tokens.to(dev).repeat(nv, 1)
        with steering(model, layer, delta, batch.roles.repeat(nv, 1)):
            return _scored_logits(model, tokens, scored).float()
    # exact: layers <= L are the clean run; resume at L + 1 from the steered residual
    resid = add_steering(clean.acts[resid_hook(layer)].repeat(nv, 1, 1), delta, mask.repeat(nv, 1))
    return run_from_layer(model, resid, layer + 1, scored)


def steering_sweep(
    model: LoadedModel,
    examples: Iterable[Example],
    vectors: SteeringVectors,
    config: SteeringConfig,
    *,
    on_batch: Callable[[int], None] | None = None,
    command: str = "",
) -> SteeringResult:
    """KL(p_clean ‖ p_steered) and Δlogp of each example's answer at the scored position,
    for every layer x scale, for the vector and its two controls (DESIGN §5, issue 15):
    ``config.random_draws`` norm-matched random directions and the vectors' partition
    directions (``vectors.partition``; none when the vectors have none).

    Clean and steered runs are the *same* model copy, so at a quantized precision the KL
    is that copy's response to steering, not its drift from full precision. Each layer's
    nonzero scales and directions are stacked along the batch axis (``config.max_rows``
    rows per forward). The ``exact`` method resumes the forward at layer L + 1 from the
    clean run's steered ``resid_post[L]``; ``naive`` runs the whole hooked model. Scale 0
    is the clean run itself, so its effects are exactly 0.

    Returns a :class:`SteeringResult` with one precision row (the model as loaded), family
    sums and per-example values, the scored ids and the vectors' training ids (whether
    the examples were held out is :attr:`SteeringResult.heldout`).
    """
    if vectors.d_model != model.d_model:
        raise SteeringError(f"vectors have width {vectors.d_model}, {model.name} has "
                            f"d_model {model.d_model}; transfer them first (steer-transfer)")
    model.fingerprint.check_matches(
        replace(vectors.fingerprint, quantization=model.fingerprint.quantization),
        what="these steering vectors")
    suite_hash, suite_kind = examples_hash(examples), getattr(examples, "kind", "")
    seed = getattr(examples, "seed", None)
    examples = list(examples)
    if not examples:
        raise SteeringError("no examples to steer")
    layers = _sweep_layers(model, vectors, config)
    families = canonical_order([e.family for e in examples])
    scales = torch.tensor(config.scales, dtype=torch.float32)
    nz = torch.nonzero(scales != 0)[:, 0]
    k, m = config.random_draws, vectors.partition_draws
    vi_all = [vectors.layer_index(x) for x in layers]
    rand = random_directions(model.d_model, model.n_layers, k, seed=config.random_seed)[:, list(layers)]
    part = (vectors.partition[:, :, vi_all] if m else
            torch.zeros(0, len(vectors.names), len(layers), model.d_model))
    n, n_l, n_s = len(examples), len(layers), len(scales)
    rows = {name: torch.zeros(n_l, n_s, 1 + k + m, n) for name in ("kl", "dlogp")}
    clean_logp, clean_correct = torch.zeros(n), torch.zeros(n)
    uids, fam = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    dev = model.device
    start = time.perf_counter()
    hooks = [resid_hook(layer) for layer in layers]
    off = 0
    for cb in clean_batches(model, examples, hooks, batch_size=config.batch_size):
        batch, clean = cb.batch, cb.clean
        b = len(batch)
        cols = slice(off, off + b)
        off += b
        clean_logits = (_scored_logits(model, batch.tokens.to(dev), batch.scored_pos)
                        if config.method == "naive" else clean.scored_logits)
        uids[cols] = torch.tensor([e.uid for e in cb.examples])
        fam[cols] = torch.tensor([families.index(f) for f in batch.families])
        lp = clean_logits.float().log_softmax(-1)
        tgt = batch.target.to(lp.device)
        clean_logp[cols] = lp.gather(-1, tgt[:, None])[:, 0].cpu()
        clean_correct[cols] = (lp.argmax(-1) == tgt).float().cpu()
        mask = steer_mask(batch.roles).to(dev)
        concept = vectors.concept_index(batch.families)
        per_chunk = max(1, config.max_rows // b)
        for li, layer in enumerate(layers):
            vi = vi_all[li]
            dirs = torch.cat([vectors.directions[concept, vi][None],
                              rand[:, li][:, None].expand(k, b, -1),
                              part[:, concept, li]])  # [1+k+m batch d_model]
            unit = dirs * vectors.norms[vi]
            delta = (scales[nz][:, None, None, None] * unit[None]).reshape(-1, model.d_model)
            kl, dlogp = [], []
            for c0 in range(0, delta.shape[0] // b, per_chunk):
                d = delta[c0 * b:(c0 + per_chunk) * b].to(dev)
                logits = _steered_logits(model, config.method, layer, batch, clean, mask, d)
                nv = d.shape[0] // b
                e = effects(clean_logits.repeat(nv, 1), logits, batch.target.repeat(nv))
                kl.append(e.kl.float().cpu())
                dlogp.append(e.dlogp.float().cpu())
            for name, vals in (("kl", kl), ("dlogp", dlogp)):
                rows[name][li, nz, :, cols] = torch.cat(vals).view(len(nz), 1 + k + m, b)
        if on_batch is not None:
            on_batch(b)
    t = _result_tensors(rows, uids, fam, clean_logp, clean_correct, k, families)
    t["forward_s"] = torch.full((1,), float("nan"), dtype=torch.float64)
    t["vectors.directions"] = vectors.directions[:, vi_all].contiguous()
    t["vectors.norms"] = vectors.norms[vi_all].contiguous()
    t["random.directions"] = rand.contiguous()
    t["partition.directions"] = part.contiguous()
    t["split.train_id"] = torch.tensor(sorted(set(vectors.train_uids)), dtype=torch.long)
    return SteeringResult.single(
        model=model, families=families, layers=layers, scales=tuple(float(s) for s in scales),
        precision=precision_label(model), tensors=t, vectors=vectors, config=config,
        suite_hash=suite_hash, n_examples=len(examples), command=command,
        seconds=time.perf_counter() - start, suite_kind=suite_kind, seed=seed)


def _result_tensors(rows: dict[str, Tensor], uids: Tensor, fam: Tensor, clean_logp: Tensor,
                    clean_correct: Tensor, k: int, families: tuple[str, ...]) -> dict[str, Tensor]:
    """Per-example rows (``[layer scale 1+k+m example]``) in canonical order (family, then
    id), split into vector / random / partition, with their family sums (fp64)."""
    order = canonical_example_order(uids, [families[i] for i in fam.tolist()])
    onehot = torch.nn.functional.one_hot(fam[order], len(families)).double()  # [example family]
    t: dict[str, Tensor] = {"count": onehot.sum(0)}
    for name, r in rows.items():
        r = r[..., order]
        parts = {"": r[:, :, 0], "random.": r[:, :, 1:1 + k], "partition.": r[:, :, 1 + k:]}
        for prefix, v in parts.items():
            t[f"example.{prefix}{name}"] = v[None].contiguous()
            t[f"{prefix}{name}.sum"] = torch.einsum("...e,ef->...f", v[None].double(), onehot)
    t["example.id"], t["example.family"] = uids[order].contiguous(), fam[order].contiguous()
    t["example.clean_logp"] = clean_logp[order][None].contiguous()
    t["example.clean_correct"] = clean_correct[order][None].contiguous()
    nan = torch.full((1, len(uids)), float("nan"))
    t["example.drift_kl"], t["example.top1_agree"] = nan, nan.clone()
    return t
