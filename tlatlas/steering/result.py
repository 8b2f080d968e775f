"""Steering sweep configs, results and their files (``NAME.steering.safetensors`` + ``.json``).

A :class:`SteeringResult` holds *sums* per family (and a count per family), so results of
shards and ranks add exactly, with a precision axis: one row per copy of the model
(``fp32``, ``bf16``, ``nf4-fp32`` ...). Files are written atomically with
:func:`tlatlas.store.atomic_write` and validated on load like atlases are.
"""

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas import __version__
from tlatlas.errors import AtlasFileError, InvalidInputError, TlatlasError
from tlatlas.io import known_fields, read_result_files, write_result_files
from tlatlas.metrics import METRICS_VERSION
from tlatlas.models import Fingerprint, LoadedModel, dtype_label
from tlatlas.tasks import Example

RESULT_KIND = "tlatlas.steering"
RESULT_FORMAT_VERSION = 1
CONFIG_KIND = "tlatlas.steering_config"
CONFIG_FORMAT_VERSION = 1
TENSORS_SUFFIX = ".steering.safetensors"
META_SUFFIX = ".steering.json"
DEFAULT_SCALES = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)
REFERENCE_PRECISION = "fp32"
"""The full-precision row amplification ratios divide by."""


class SteeringFileError(AtlasFileError):
    """A steering result file that is missing, truncated, of another version or mis-shaped."""


def parse_scales(text: str) -> tuple[float, ...]:
    """``lo:hi:n`` (n evenly spaced, ends included) or a comma list: ``-4:4:9``, ``-2,0,2``."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            n_i = int(n)
            if n_i < 1:
                raise ValueError
            if n_i == 1:
                return (float(lo),)
            return tuple(round(float(v), 6) for v in torch.linspace(float(lo), float(hi), n_i).tolist())
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TlatlasError(f"scales {text!r}: want lo:hi:n (e.g. -4:4:9) or a list (-2,0,2)") from None


@dataclass(frozen=True, kw_only=True)
class SteeringConfig:
    """How a steering sweep is run."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    """Multiples s of the layer's typical residual norm; the added vector is s·v·n_L."""
    layers: tuple[int, ...] | None = None
    """Layers to steer (default: every layer the vectors cover, i.e. all of them)."""
    random_draws: int = 4
    """K norm-matched random directions per layer for the control (0: no control)."""
    random_seed: int = 0
    """Seed of the random directions (the same draws for every precision)."""
    batch_size: int = 8
    """Examples per clean forward."""
    max_rows: int = 256
    """At most this many steered rows (scale x direction x example) per forward."""
    method: Literal["exact", "naive"] = "exact"
    """``exact``: resume at L + 1 from the cached clean residual; ``naive``: full hooked forwards."""

    def __post_init__(self) -> None:
        if not self.scales or not all(math.isfinite(s) for s in self.scales):
            raise InvalidInputError(f"scales must be a non-empty list of finite numbers, got {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise InvalidInputError(f"scales repeat: {self.scales}")
        if self.random_draws < 0:
            raise InvalidInputError("random_draws must be >= 0")
        if self.batch_size < 1 or self.max_rows < 1:
            raise InvalidInputError("batch_size and max_rows must be >= 1")
        if self.method not in ("exact", "naive"):
            raise InvalidInputError(f"unknown method {self.method!r}; choose exact or naive")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return {"kind": CONFIG_KIND, "format_version": CONFIG_FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SteeringConfig":
        if d.get("kind", CONFIG_KIND) != CONFIG_KIND:
            raise InvalidInputError(f"not a steering config: kind {d.get('kind')!r}")
        kw = known_fields(cls, d)
        kw["scales"] = tuple(kw.get("scales", DEFAULT_SCALES))
        if kw.get("layers") is not None:
            kw["layers"] = tuple(kw["layers"])
        return cls(**kw)


def examples_hash(examples: Iterable[Example]) -> str:
    """The suite content hash of these examples (equal to ``Suite.content_hash``)."""
    content = getattr(examples, "content_hash", None)
    if isinstance(content, str):
        return content
    rows = [[ex.family, ex.prompt, ex.answer] for ex in examples]
    text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def precision_label(model: LoadedModel) -> str:
    """``nf4-fp32`` / ``int8`` for bitsandbytes copies, else the dtype: fp32, bf16, fp16."""
    if model.fingerprint.quantization != "none":
        return model.fingerprint.quantization
    return dtype_label(model.dtype)


@dataclass(frozen=True, kw_only=True)
class SteeringMeta:
    """Provenance of a steering result."""

    model: str
    """The model source as given."""
    fingerprints: tuple[Fingerprint, ...]
    """Fingerprint of each precision row's model copy."""
    precision_specs: tuple[dict[str, Any], ...]
    """Each row's precision, fully specified (dtype, or the QuantSpec and its compute dtype)."""
    vectors: dict[str, Any]
    """The steering vectors' provenance (names, fingerprint, origin)."""
    config: dict[str, Any]
    """The :class:`SteeringConfig`, as a dict."""
    suite_hash: str
    """Content hash of the steered examples."""
    n_examples: int
    """Examples steered."""
    suite_kind: str = ""
    """``synthetic`` or ``nl`` when the examples are a suite."""
    seed: int | None = None
    """Suite seed, when known."""
    metrics_version: int = METRICS_VERSION
    """Version of the metric definitions."""
    tool_version: str = __version__
    """tlatlas version that wrote the result."""
    command: str = ""
    """Command line that produced the result."""
    timings: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage (``sweep.<precision>`` ...)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fingerprints"] = [f.to_dict() for f in self.fingerprints]
        d["precision_specs"] = [dict(p) for p in self.precision_specs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SteeringMeta":
        d = dict(d)
        d["fingerprints"] = tuple(Fingerprint.from_dict(f) for f in d["fingerprints"])
        d["precision_specs"] = tuple(d["precision_specs"])
        return cls(**known_fields(cls, d))


def _precision_spec(model: LoadedModel, label: str) -> dict[str, Any]:
    q = getattr(model.hf_model.config, "quantization_config", None)
    spec: dict[str, Any] = {"label": label, "dtype": str(model.dtype).removeprefix("torch."),
                            "device": str(model.device)}
    if q is not None and model.fingerprint.quantization != "none":
        qd = q.to_dict() if hasattr(q, "to_dict") else dict(q)
        keep = ("quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant", "llm_int8_threshold")
        spec["bitsandbytes"] = {k: str(qd[k]) if k == "bnb_4bit_compute_dtype" else qd[k]
                                for k in keep if k in qd}
    return spec


# tensors with a precision axis first, and the axes after it
_PRECISION_TENSORS = ("kl.sum", "dlogp.sum", "random.kl.sum", "random.dlogp.sum", "forward_s")


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringResult:
    """Summed steering effects per precision, layer, scale and family, plus provenance."""

    families: tuple[str, ...]
    """Family of each index of the family axis."""
    layers: tuple[int, ...]
    """Steered layer of each index of the layer axis."""
    scales: tuple[float, ...]
    """Scale of each index of the scale axis."""
    precisions: tuple[str, ...]
    """Precision label of each row (``fp32``, ``bf16``, ``nf4-fp32``, ``int8`` ...)."""
    tensors: dict[str, Tensor]
    """``kl.sum``/``dlogp.sum`` [precision layer scale family], ``random.kl.sum``/
    ``random.dlogp.sum`` [precision layer scale draw family], ``count`` [family],
    ``forward_s`` [precision] (seconds per clean forward pass over the examples; NaN if
    not timed), ``vectors.directions`` [concept layer d_model], ``vectors.norms`` [layer],
    ``random.directions`` [draw layer d_model]."""
    meta: SteeringMeta
    """Provenance."""

    @classmethod
    def single(cls, *, model: LoadedModel, families, layers, scales, precision: str, tensors,
               vectors, config, suite_hash: str, n_examples: int, command: str = "",
               seconds: float = 0.0, suite_kind: str = "", seed: int | None = None
               ) -> "SteeringResult":
        meta = SteeringMeta(model=model.name, fingerprints=(model.fingerprint,),
                            precision_specs=(_precision_spec(model, precision),),
                            vectors=vectors.to_dict(), config=config.to_dict(),
                            suite_hash=suite_hash, n_examples=n_examples, command=command,
                            suite_kind=suite_kind, seed=seed, timings={f"sweep.{precision}": seconds})
        return cls(families=tuple(families), layers=tuple(layers), scales=tuple(scales),
                   precisions=(precision,), tensors=tensors, meta=meta)

    @classmethod
    def stack(cls, results: Sequence["SteeringResult"]) -> "SteeringResult":
        """Rows of several precisions (same examples, vectors, layers, scales) in one result."""
        if not results:
            raise SteeringFileError("nothing to stack")
        first = results[0]
        for r in results[1:]:
            same = (r.families, r.layers, r.scales) == (first.families, first.layers, first.scales)
            if not same or r.meta.suite_hash != first.meta.suite_hash or \
                    not torch.equal(r.tensors["count"], first.tensors["count"]) or \
                    not torch.equal(r.tensors["vectors.directions"], first.tensors["vectors.directions"]):
                raise SteeringFileError("cannot stack steering results of different examples, "
                                        "vectors, layers or scales")
        precisions = tuple(p for r in results for p in r.precisions)
        if len(set(precisions)) != len(precisions):
            raise SteeringFileError(f"precision rows repeat: {precisions}")
        tensors = dict(first.tensors)
        for name in _PRECISION_TENSORS:
            tensors[name] = torch.cat([r.tensors[name] for r in results])
        timings: dict[str, float] = {}
        for r in results:
            timings.update(r.meta.timings)
        m = first.meta
        meta = SteeringMeta(
            model=m.model, fingerprints=tuple(f for r in results for f in r.meta.fingerprints),
            precision_specs=tuple(p for r in results for p in r.meta.precision_specs),
            vectors=m.vectors, config=m.config, suite_hash=m.suite_hash, n_examples=m.n_examples,
            suite_kind=m.suite_kind, seed=m.seed, command=m.command, timings=timings)
        return cls(families=first.families, layers=first.layers, scales=first.scales,
                   precisions=precisions, tensors=tensors, meta=meta)

    # ---- means (sum / count)
    def _count(self) -> Tensor:
        return self.tensors["count"].clamp(min=1)

    def kl(self) -> Float[Tensor, "precision layer scale family"]:
        """Mean KL(p_clean ‖ p_steered) in nats."""
        return self.tensors["kl.sum"] / self._count()

    def dlogp(self) -> Float[Tensor, "precision layer scale family"]:
        """Mean log p_clean(answer) - log p_steered(answer) in nats."""
        return self.tensors["dlogp.sum"] / self._count()

    def random_kl(self) -> tuple[Float[Tensor, "precision layer scale"], Float[Tensor, "precision layer scale"]]:
        """Random control, family-averaged KL: (mean, std) over the K draws."""
        per_draw = (self.tensors["random.kl.sum"] / self._count()).mean(-1)  # [p l s draw]
        if per_draw.shape[-1] == 0:
            nan = torch.full(per_draw.shape[:-1], float("nan"), dtype=per_draw.dtype)
            return nan, nan
        std = per_draw.std(-1) if per_draw.shape[-1] > 1 else torch.zeros(per_draw.shape[:-1],
                                                                          dtype=per_draw.dtype)
        return per_draw.mean(-1), std

    def mean_kl(self) -> Float[Tensor, "precision layer scale"]:
        """Family-averaged KL of the steering vectors."""
        return self.kl().mean(-1)

    def amplification(self, reference: str = REFERENCE_PRECISION) -> Float[Tensor, "precision layer scale"]:
        """Family-averaged KL of each precision / that of ``reference`` (NaN where it is 0)."""
        if reference not in self.precisions:
            raise SteeringFileError(f"no {reference} row to compare with; rows: {list(self.precisions)}")
        kl = self.mean_kl()
        ref = kl[self.precisions.index(reference)]
        return torch.where(ref > 0, kl / ref.clamp(min=1e-30), torch.nan)

    def slowdown(self, reference: str = REFERENCE_PRECISION) -> Float[Tensor, " precision"]:
        """Forward time of each precision / that of ``reference``."""
        f = self.tensors["forward_s"]
        if reference not in self.precisions:
            return torch.full_like(f, float("nan"))
        return f / f[self.precisions.index(reference)]

    def most_steerable(self, precision: str | None = None) -> dict[str, tuple[int, float]]:
        """Per family: the layer whose steering has the largest mean KL over the scale grid."""
        p = self.precisions.index(precision) if precision else 0
        per_layer = self.kl()[p].mean(1)  # [layer family]
        best = per_layer.argmax(0)
        return {f: (self.layers[int(best[i])], float(per_layer[best[i], i]))
                for i, f in enumerate(self.families)}


def steering_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    s = str(stem)
    for suffix in (TENSORS_SUFFIX, META_SUFFIX):
        s = s.removesuffix(suffix)
    return Path(s + TENSORS_SUFFIX), Path(s + META_SUFFIX)


def _expected_shapes(h: dict[str, Any]) -> dict[str, list[int]]:
    p, n_l, n_s, n_f = len(h["precisions"]), len(h["layers"]), len(h["scales"]), len(h["families"])
    k = int(h["meta"]["config"]["random_draws"])
    return {"kl.sum": [p, n_l, n_s, n_f], "dlogp.sum": [p, n_l, n_s, n_f],
            "random.kl.sum": [p, n_l, n_s, k, n_f], "random.dlogp.sum": [p, n_l, n_s, k, n_f],
            "count": [n_f], "forward_s": [p], "vectors.norms": [n_l]}


def save_steering(result: SteeringResult, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the tensors, then the JSON (each atomically); returns the two paths."""
    tensors_path, meta_path = steering_paths(stem)
    header = {"kind": RESULT_KIND, "format_version": RESULT_FORMAT_VERSION,
              "families": list(result.families), "layers": list(result.layers),
              "scales": list(result.scales), "precisions": list(result.precisions),
              "tensors": {k: list(v.shape) for k, v in result.tensors.items()},
              "meta": result.meta.to_dict()}
    return write_result_files(tensors_path, meta_path, result.tensors, header)


def load_steering(stem: str | os.PathLike[str], *, fingerprint: Fingerprint | None = None,
                  force: bool = False) -> SteeringResult:
    """Read and validate a steering result.

    Raises SteeringFileError for a missing, truncated, foreign, other-version or mis-shaped
    file, and FingerprintMismatchError when ``fingerprint`` is not the full-precision model
    of the result (unless ``force``).
    """
    tensors_path, meta_path = steering_paths(stem)
    header, tensors = read_result_files(
        tensors_path, meta_path, kind=RESULT_KIND, format_version=RESULT_FORMAT_VERSION,
        noun="steering result", error=SteeringFileError, expected_shapes=_expected_shapes)
    meta = SteeringMeta.from_dict(header["meta"])
    if fingerprint is not None and not force:
        from dataclasses import replace

        fingerprint.check_matches(replace(meta.fingerprints[0], quantization=fingerprint.quantization),
                                  what=f"steering result {meta_path}")
    return SteeringResult(families=tuple(header["families"]), layers=tuple(header["layers"]),
                          scales=tuple(header["scales"]), precisions=tuple(header["precisions"]),
                          tensors=tensors, meta=meta)


__all__ = ["SteeringConfig", "SteeringMeta", "SteeringResult", "SteeringFileError",
           "save_steering", "load_steering", "steering_paths", "parse_scales", "DEFAULT_SCALES"]
