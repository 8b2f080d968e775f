"""The same steering vectors on copies of a model in other precisions (issue 5, step 3;
issue 15, item 5).

Vectors (and the partition control) always come from the reference model; each row of
the result applies them to one copy: ``fp32``, ``bf16``, ``fp16`` (CUDA only), and
bitsandbytes copies with explicit settings (``nf4-fp32`` and ``nf4-bf16`` are separate
rows, so a dtype effect can be told apart from a quantization effect; ``int8`` is
LLM.int8). One copy is resident at a time: each is freed before the next loads.

Within a row, every KL is KL(p_clean ‖ p_steered) of that copy against itself. Beside
it each row records its own **drift** from the reference row (fp32 when swept, else the
first): per example, KL(p_reference_clean ‖ p_row_clean) at the scored position and
whether the two clean top-1 tokens agree; a quantized copy whose clean drift is as large
as the steering effects being compared cannot support an amplification claim. The
reference is swept first (its clean distributions are kept in memory: examples x
d_vocab fp32). Each row also records the time of a clean forward pass over the same
prompts, for the slowdown relative to fp32, and where its weights came from
(:mod:`tlatlas.steering.provenance`).
"""

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas.atlas.engine import encoded_batches
from tlatlas.errors import InvalidInputError, TlatlasError
from tlatlas.models import DTYPES, LoadedModel, default_device, load_model
from tlatlas.steering.config import SteeringConfig
from tlatlas.steering.result import (
    REFERENCE_PRECISION,
    SteeringResult,
    canonical_example_order,
    examples_hash,
)
from tlatlas.steering.sweep import steering_sweep
from tlatlas.steering.vectors import SteeringVectors
from tlatlas.tasks import Example

DEFAULT_PRECISIONS = ("fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8")


class PrecisionUnavailableError(TlatlasError):
    """A precision this machine cannot run (fp16 on CPU, bitsandbytes missing ...)."""


def normalise_precision(label: str) -> str:
    """Canonical label: ``nf4`` -> ``nf4-fp32``; unknown labels are a clear error."""
    from tlatlas.models.quant import parse_precision

    if label in DTYPES:
        return label
    try:
        return parse_precision(label).label  # type: ignore[union-attr]
    except ValueError as err:
        raise PrecisionUnavailableError(
            f"unknown precision {label!r}; choose from fp32, bf16, fp16, nf4-fp32, nf4-bf16, "
            "int8") from err


def check_precision(label: str, device: torch.device | str | None = None) -> str:
    """Raise PrecisionUnavailableError unless ``label`` runs on ``device``; returns the label."""
    label = normalise_precision(label)
    dev = torch.device(device) if device is not None else default_device()
    if label == "fp16" and dev.type != "cuda":
        raise PrecisionUnavailableError(
            f"fp16 runs only on CUDA here (device is {dev.type}); use fp32 or bf16 on CPU")
    if label == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionUnavailableError("this GPU does not support bf16; use fp16 or fp32")
    if label not in DTYPES:
        from tlatlas.models.quant import (
            QuantizationUnavailableError,
            check_quantization_available,
            parse_precision,
        )

        spec = parse_precision(label)
        try:
            check_quantization_available(dev)
        except QuantizationUnavailableError as err:
            raise PrecisionUnavailableError(f"{label}: {err}") from err
        if dev.type == "cpu" and spec is not None and spec.compute == "fp16":
            raise PrecisionUnavailableError(f"{label}: fp16 compute runs only on CUDA here")
    return label


def load_precision(source, label: str, *, device: torch.device | str | None = None) -> LoadedModel:
    """A copy of ``source`` in precision ``label`` (checked first)."""
    label = check_precision(label, device)
    if label in DTYPES:
        return load_model(source, device=device, dtype=DTYPES[label])
    from tlatlas.models.quant import load_quantized_model, parse_precision

    return load_quantized_model(source, parse_precision(label), device=device)


def forward_times(model: LoadedModel, examples: Iterable[Example], *, batch_size: int = 8,
                  repeats: int = 3) -> Float[Tensor, "repeat batch"]:
    """Seconds of each batch's clean forward in each of ``repeats`` passes over
    ``examples`` (family batches, in suite order; after one warm-up batch). Two models
    timed on the same examples have the same batches, so their times pair by batch."""
    if repeats < 1:
        raise InvalidInputError(f"repeats must be >= 1, got {repeats}")
    batches = [batch.tokens.to(model.device)
               for _, batch in encoded_batches(list(examples), model.tokenizer,
                                               batch_size=batch_size)]
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    times = torch.zeros(repeats, len(batches), dtype=torch.float64)
    with torch.inference_mode():
        model.hf_model(batches[0])
        for r in range(repeats):
            for i, tokens in enumerate(batches):
                sync()
                t0 = time.perf_counter()
                model.hf_model(tokens)
                sync()
                times[r, i] = time.perf_counter() - t0
    return times


def time_forward(model: LoadedModel, examples: Iterable[Example], *, batch_size: int = 8,
                 repeats: int = 3) -> float:
    """Median seconds of one clean forward pass over ``examples`` (after one warm-up batch)."""
    return pass_seconds(forward_times(model, examples, batch_size=batch_size, repeats=repeats))


def pass_seconds(times: Float[Tensor, "repeat batch"]) -> float:
    """Seconds of one whole pass: the median over repeats of each pass's summed batch times
    (``times`` as :func:`forward_times` returns them)."""
    return statistics.median(times.sum(1).tolist())


def free_model() -> None:
    """Collect a dropped model now (the bridge holds reference cycles) and empty CUDA's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def clean_log_probs(model: LoadedModel, examples: Sequence[Example], *, batch_size: int = 8
                    ) -> tuple[Int[Tensor, " example"], Float[Tensor, "example d_vocab"]]:
    """Example ids and clean next-token log-probabilities at the scored position (fp32,
    CPU), in the order of a sweep's per-example tensors (family, then id)."""
    uids, logps, batch_order = [], [], []
    with torch.inference_mode():
        for exs, batch in encoded_batches(list(examples), model.tokenizer, batch_size=batch_size):
            batch_order += exs
            logits = model.hf_model(batch.tokens.to(model.device)).logits
            rows = torch.arange(len(exs), device=logits.device)
            scored = logits[rows, batch.scored_pos.to(logits.device)]
            logps.append(scored.float().log_softmax(-1).cpu())
            uids += [e.uid for e in exs]
    ids = torch.tensor(uids, dtype=torch.long)
    order = canonical_example_order(ids, [e.family for e in batch_order])
    return ids[order], torch.cat(logps)[order]


def drift(reference: Float[Tensor, "example d_vocab"], row: Float[Tensor, "example d_vocab"]
          ) -> tuple[Float[Tensor, " example"], Float[Tensor, " example"]]:
    """Per example: KL(p_reference ‖ p_row) in nats and 1.0 where the top-1 tokens agree."""
    kl = (reference.exp() * (reference - row)).sum(-1).clamp(min=0.0)
    agree = (reference.argmax(-1) == row.argmax(-1)).float()
    return kl, agree


def precision_sweep(
    source,
    examples: Iterable[Example],
    vectors: SteeringVectors,
    config: SteeringConfig,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    *,
    device: torch.device | str | None = None,
    timing_repeats: int = 3,
    loader: Callable[[object, str], LoadedModel] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_precision: Callable[[str], None] | None = None,
    command: str = "",
) -> SteeringResult:
    """Sweep the same vectors (and controls) on each precision copy of ``source``, one
    copy at a time, reference row first (fp32 when asked for, else the first label); the
    rows keep the order of ``precisions``. Each row's ``example.drift_kl`` /
    ``example.top1_agree`` compare its clean next-token distribution with the
    reference's (0 and 1 on the reference row itself).

    Every precision is checked before any work starts, so an unavailable one fails fast.
    ``loader(source, label)`` defaults to :func:`load_precision`.
    """
    labels = [check_precision(p, device) for p in precisions]
    if len(set(labels)) != len(labels):
        raise PrecisionUnavailableError(f"precisions repeat: {labels}")
    load = loader or (lambda src, label: load_precision(src, label, device=device))
    suite_hash, kind, seed = examples_hash(examples), getattr(examples, "kind", ""), \
        getattr(examples, "seed", None)
    examples = list(examples)
    ref_label = REFERENCE_PRECISION if REFERENCE_PRECISION in labels else labels[0]
    rows: dict[str, SteeringResult] = {}
    ref_ids = ref_logp = None
    for label in [ref_label] + [p for p in labels if p != ref_label]:
        if on_precision is not None:
            on_precision(label)
        model = load(source, label)
        try:
            row = steering_sweep(model, examples, vectors, config, on_batch=on_batch,
                                 command=command)
            ids, logp = clean_log_probs(model, examples, batch_size=config.batch_size)
            seconds = time_forward(model, examples, batch_size=config.batch_size,
                                   repeats=timing_repeats)
        finally:
            del model
            free_model()
        if ref_logp is None:
            ref_ids, ref_logp = ids, logp
        if not torch.equal(ids, ref_ids) or not torch.equal(ids, row.tensors["example.id"]):
            raise PrecisionUnavailableError(f"{label}: examples came back in another order")
        kl, agree = drift(ref_logp, logp)
        row.tensors["example.drift_kl"][0], row.tensors["example.top1_agree"][0] = kl, agree
        row.tensors["forward_s"][0] = seconds
        rows[label] = row
        del logp
    result = SteeringResult.stack([rows[label] for label in labels])
    meta = replace(result.meta, suite_hash=suite_hash, suite_kind=kind, seed=seed)
    return replace(result, meta=meta)
