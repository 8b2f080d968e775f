"""Steering results and their files (``NAME.steering.safetensors`` + ``.json``).

A :class:`SteeringResult` has a precision axis (one row per copy of the model: ``fp32``,
``bf16``, ``nf4-fp32`` ...) and holds, for the vector and both controls (K random
draws, M partition draws), *sums* per family (so family means need no examples) and,
since format 2, every scored example's values (so intervals are computed after the
fact: :mod:`tlatlas.steering.steerability`), with the ids of the scored prompts and of
the vectors' training prompts. Every KL is KL(p_clean ‖ p_steered) of the *same*
precision copy (its own clean run against its own steered run); a copy's drift from
the reference is recorded separately (``example.drift_kl``). Format-1 files (sums only,
random control only) still load; what needs examples then says so. Files are written
atomically and validated on load like atlases are. Configs live in
:mod:`tlatlas.steering.config` (re-exported here).
"""

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tlatlas import __version__
from tlatlas.errors import AtlasFileError, InvalidInputError
from tlatlas.io import known_fields, read_result_files, write_result_files
from tlatlas.metrics import METRICS_VERSION
from tlatlas.models import Fingerprint, LoadedModel, dtype_label
from tlatlas.steering.config import DEFAULT_SCALES, SteeringConfig, parse_scales
from tlatlas.steering.provenance import weights_provenance
from tlatlas.tasks import Example

RESULT_KIND = "tlatlas.steering"
RESULT_FORMAT_VERSION = 2
"""2: per-example values, partition control, scored / training ids (1: sums, random only)."""
READABLE_VERSIONS = (1, 2)
TENSORS_SUFFIX = ".steering.safetensors"
META_SUFFIX = ".steering.json"
REFERENCE_PRECISION = "fp32"
"""The row amplification ratios and drift divide by / compare with (when present; else
the first row). It is only as full-precision as its weights: see each row's
``precision_specs[i]["weights"]`` (the embedded SmolLM2 is a dequantized Q4_1 GGUF)."""


class SteeringFileError(AtlasFileError):
    """A steering result file that is missing, truncated, of another version or mis-shaped."""


def examples_hash(examples: Iterable[Example]) -> str:
    """The suite content hash of these examples (equal to ``Suite.content_hash``)."""
    content = getattr(examples, "content_hash", None)
    if isinstance(content, str):
        return content
    rows = [[ex.family, ex.prompt, ex.answer] for ex in examples]
    text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_example_order(uids: Int[Tensor, " example"], families: Sequence[str]
                            ) -> Int[Tensor, " example"]:
    """The permutation that sorts examples by family (canonical order), then id (stable):
    the order of every per-example tensor of a steering result."""
    from tlatlas.tasks.suite import canonical_order

    names = canonical_order(list(families))
    fam = torch.tensor([names.index(f) for f in families], dtype=torch.long)
    order = torch.argsort(uids, stable=True)
    return order[torch.argsort(fam[order], stable=True)]


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
    """Each row's precision, fully specified (dtype, or the QuantSpec and its compute
    dtype), and since format 2 where its weights came from (``weights``:
    :func:`~tlatlas.steering.provenance.weights_provenance`)."""
    vectors: dict[str, Any]
    """The steering vectors' provenance (names, fingerprint, origin)."""
    config: dict[str, Any]
    """The :class:`SteeringConfig`, as a dict."""
    suite_hash: str
    """Content hash of the steered examples."""
    n_examples: int
    """Examples steered (scored)."""
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
                            "device": str(model.device), "weights": weights_provenance(model)}
    if q is not None and model.fingerprint.quantization != "none":
        qd = q.to_dict() if hasattr(q, "to_dict") else dict(q)
        keep = ("quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant", "llm_int8_threshold")
        spec["bitsandbytes"] = {k: str(qd[k]) if k == "bnb_4bit_compute_dtype" else qd[k]
                                for k in keep if k in qd}
    return spec


# tensors with a precision axis first
_PRECISION_TENSORS = ("kl.sum", "dlogp.sum", "random.kl.sum", "random.dlogp.sum",
                      "partition.kl.sum", "partition.dlogp.sum", "forward_s", "example.kl",
                      "example.dlogp", "example.random.kl", "example.random.dlogp",
                      "example.partition.kl", "example.partition.dlogp", "example.clean_logp",
                      "example.clean_correct", "example.drift_kl", "example.top1_agree")
_SHARED_TENSORS = ("count", "example.id", "example.family", "split.train_id",
                   "vectors.directions", "vectors.norms", "random.directions",
                   "partition.directions")
_NO_EXAMPLES = ("this steering result keeps family sums only (format 1, written before "
                "per-example values): it has no per-example slopes or intervals; recompute it")


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringResult:
    """Steering effects per precision, layer, scale (and family sums / per example), with
    both controls and provenance."""

    families: tuple[str, ...]
    """Family of each index of the family axis."""
    layers: tuple[int, ...]
    """Steered layer of each index of the layer axis."""
    scales: tuple[float, ...]
    """Scale of each index of the scale axis."""
    precisions: tuple[str, ...]
    """Precision label of each row (``fp32``, ``bf16``, ``nf4-fp32``, ``int8`` ...)."""
    tensors: dict[str, Tensor]
    """Sums (fp64): ``kl.sum``/``dlogp.sum`` [precision layer scale family],
    ``random.kl.sum``/``random.dlogp.sum`` [precision layer scale draw family],
    ``partition.kl.sum``/``partition.dlogp.sum`` [precision layer scale pdraw family],
    ``count`` [family]. Per example (fp32, examples sorted by family then id):
    ``example.kl``/``example.dlogp`` [precision layer scale example],
    ``example.random.*`` [precision layer scale draw example], ``example.partition.*``
    [precision layer scale pdraw example], ``example.clean_logp`` (log p of the answer in
    that precision's clean run) and ``example.clean_correct`` [precision example],
    ``example.drift_kl`` (KL(p_reference_clean ‖ p_row_clean), nats) and
    ``example.top1_agree`` (1 where the row's clean top-1 token is the reference's)
    [precision example] (NaN when not measured), ``example.id`` [example] (int64
    :attr:`Example.uid`), ``example.family`` [example] (index into ``families``);
    ``split.train_id`` [train] (ids of the vectors' training prompts; empty when
    unknown). Also ``forward_s`` [precision] (seconds per clean pass; NaN if not timed),
    ``vectors.directions`` [concept layer d_model], ``vectors.norms`` [layer],
    ``random.directions`` [draw layer d_model], ``partition.directions``
    [pdraw concept layer d_model]. ``dlogp`` is log p_clean(answer) - log p_steered(answer)
    (DESIGN §5: positive = the answer lost probability). Format-1 files have the sums,
    ``forward_s`` and the directions of the vector and random control only."""
    meta: SteeringMeta
    """Provenance."""
    format_version: int = RESULT_FORMAT_VERSION
    """File format the result has (1 when loaded from a format-1 file)."""

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
        """Rows of several precisions (same examples, vectors, controls, layers, scales)."""
        if not results:
            raise SteeringFileError("nothing to stack")
        first = results[0]
        shared = [k for k in _SHARED_TENSORS if k in first.tensors]
        for r in results[1:]:
            same = (r.families, r.layers, r.scales, r.format_version) == (
                first.families, first.layers, first.scales, first.format_version)
            if not same or r.meta.suite_hash != first.meta.suite_hash or \
                    set(r.tensors) != set(first.tensors) or \
                    not all(torch.equal(r.tensors[k], first.tensors[k]) for k in shared):
                raise SteeringFileError("cannot stack steering results of different examples, "
                                        "vectors, controls, layers or scales")
        precisions = tuple(p for r in results for p in r.precisions)
        if len(set(precisions)) != len(precisions):
            raise SteeringFileError(f"precision rows repeat: {precisions}")
        tensors = dict(first.tensors)
        for name in _PRECISION_TENSORS:
            if name in first.tensors:
                tensors[name] = torch.cat([r.tensors[name] for r in results])
        timings: dict[str, float] = {}
        for r in results:
            timings.update(r.meta.timings)
        meta = replace(first.meta,
                       fingerprints=tuple(f for r in results for f in r.meta.fingerprints),
                       precision_specs=tuple(p for r in results for p in r.meta.precision_specs),
                       timings=timings)
        return cls(families=first.families, layers=first.layers, scales=first.scales,
                   precisions=precisions, tensors=tensors, meta=meta,
                   format_version=first.format_version)

    # ---- shape of the result
    @property
    def has_examples(self) -> bool:
        """Whether per-example values are stored (format 2; needed for slopes and intervals)."""
        return "example.kl" in self.tensors

    @property
    def random_draws(self) -> int:
        return int(self.tensors["random.kl.sum"].shape[3])

    @property
    def partition_draws(self) -> int:
        t = self.tensors.get("partition.kl.sum")
        return 0 if t is None else int(t.shape[3])

    @property
    def reference(self) -> str:
        """The row amplification and drift compare with: fp32 if present, else the first."""
        return REFERENCE_PRECISION if REFERENCE_PRECISION in self.precisions else self.precisions[0]

    def row(self, precision: str | None) -> int:
        """Index of a precision row (None: the reference row)."""
        label = self.reference if precision is None else precision
        if label not in self.precisions:
            raise InvalidInputError(f"no {label} row; rows: {list(self.precisions)}")
        return self.precisions.index(label)

    def example_values(self, name: str) -> Tensor:
        """A per-example tensor (``kl``, ``dlogp``, ``random.kl``, ``partition.dlogp``,
        ``clean_logp``, ``drift_kl``, ``id``, ``family`` ...); an error for format 1."""
        if not self.has_examples:
            raise InvalidInputError(_NO_EXAMPLES)
        return self.tensors[f"example.{name}"]

    @property
    def train_ids(self) -> Int[Tensor, " train"]:
        """Ids of the prompts the vectors were estimated on (empty when unknown)."""
        return self.tensors.get("split.train_id", torch.zeros(0, dtype=torch.long))

    @property
    def overlap(self) -> int:
        """Scored examples whose id is also a training id (0 for a held-out sweep)."""
        if not self.has_examples:
            return -1
        ids = self.tensors["example.id"]
        return int(torch.isin(ids, self.train_ids).sum())

    @property
    def heldout(self) -> bool:
        """True when the training ids are known and no scored example is among them."""
        return self.has_examples and self.train_ids.numel() > 0 and self.overlap == 0

    # ---- family means (sum / count)
    def _count(self) -> Tensor:
        return self.tensors["count"].clamp(min=1)

    def kl(self) -> Float[Tensor, "precision layer scale family"]:
        """Mean KL(p_clean ‖ p_steered) in nats, both from the row's own precision."""
        return self.tensors["kl.sum"] / self._count()

    def dlogp(self) -> Float[Tensor, "precision layer scale family"]:
        """Mean log p_clean(answer) - log p_steered(answer) in nats."""
        return self.tensors["dlogp.sum"] / self._count()

    def _control_kl(self, name: str) -> tuple[Float[Tensor, "precision layer scale"],
                                              Float[Tensor, "precision layer scale"]]:
        t = self.tensors.get(f"{name}.kl.sum")
        if t is None or t.shape[3] == 0:
            shape = self.tensors["kl.sum"].shape[:3]
            nan = torch.full(shape, float("nan"), dtype=torch.float64)
            return nan, nan
        per_draw = (t / self._count()).mean(-1)  # [p l s draw], family-averaged
        std = per_draw.std(-1) if per_draw.shape[-1] > 1 else torch.zeros(per_draw.shape[:-1],
                                                                          dtype=per_draw.dtype)
        return per_draw.mean(-1), std

    def random_kl(self) -> tuple[Float[Tensor, "precision layer scale"], Float[Tensor, "precision layer scale"]]:
        """Random control, family-averaged KL: (mean, std) over the K draws (NaN if none)."""
        return self._control_kl("random")

    def partition_kl(self) -> tuple[Float[Tensor, "precision layer scale"], Float[Tensor, "precision layer scale"]]:
        """Partition control, family-averaged KL: (mean, std) over the M draws (NaN if none)."""
        return self._control_kl("partition")

    def mean_kl(self) -> Float[Tensor, "precision layer scale"]:
        """Family-averaged KL of the steering vectors."""
        return self.kl().mean(-1)

    def amplification(self, reference: str = REFERENCE_PRECISION) -> Float[Tensor, "precision layer scale"]:
        """Family-averaged KL of each precision / that of ``reference`` at the same scale
        (so the same sign), NaN where it is 0; intervals:
        :func:`tlatlas.steering.steerability.amplification_intervals`."""
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

    def most_disruptive(self, precision: str | None = None) -> dict[str, tuple[int, float]]:
        """Per family: the layer whose steering has the largest mean KL over the grid (how
        much it moves the output, not how specifically: format 1's "most steerable"; the
        most *specific* layer is :func:`tlatlas.steering.steerability.most_steerable`)."""
        per_layer = self.kl()[self.row(precision)].mean(1)  # [layer family]
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
    k = int(h.get("random_draws", h["meta"]["config"]["random_draws"]))
    shapes = {"kl.sum": [p, n_l, n_s, n_f], "dlogp.sum": [p, n_l, n_s, n_f],
              "random.kl.sum": [p, n_l, n_s, k, n_f], "random.dlogp.sum": [p, n_l, n_s, k, n_f],
              "count": [n_f], "forward_s": [p], "vectors.norms": [n_l]}
    if h["format_version"] >= 2:
        m, e, t = int(h["partition_draws"]), int(h["meta"]["n_examples"]), int(h["n_train"])
        shapes.update({"partition.kl.sum": [p, n_l, n_s, m, n_f],
                       "partition.dlogp.sum": [p, n_l, n_s, m, n_f],
                       "example.id": [e], "example.family": [e], "split.train_id": [t]})
        for metric in ("kl", "dlogp"):
            shapes[f"example.{metric}"] = [p, n_l, n_s, e]
            shapes[f"example.random.{metric}"] = [p, n_l, n_s, k, e]
            shapes[f"example.partition.{metric}"] = [p, n_l, n_s, m, e]
        for name in ("clean_logp", "clean_correct", "drift_kl", "top1_agree"):
            shapes[f"example.{name}"] = [p, e]
    return shapes


def save_steering(result: SteeringResult, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the tensors, then the JSON (each atomically); returns the two paths."""
    tensors_path, meta_path = steering_paths(stem)
    header = {"kind": RESULT_KIND, "format_version": result.format_version,
              "families": list(result.families), "layers": list(result.layers),
              "scales": list(result.scales), "precisions": list(result.precisions),
              "random_draws": result.random_draws, "partition_draws": result.partition_draws,
              "n_train": int(result.train_ids.numel()),
              "tensors": {k: list(v.shape) for k, v in result.tensors.items()},
              "meta": result.meta.to_dict()}
    return write_result_files(tensors_path, meta_path, result.tensors, header)


def load_steering(stem: str | os.PathLike[str], *, fingerprint: Fingerprint | None = None,
                  force: bool = False) -> SteeringResult:
    """Read and validate a steering result (format 2, or format 1: sums only).

    Raises SteeringFileError for a missing, truncated, foreign, other-version or mis-shaped
    file, and FingerprintMismatchError when ``fingerprint`` is not the full-precision model
    of the result (unless ``force``).
    """
    tensors_path, meta_path = steering_paths(stem)
    header, tensors = read_result_files(
        tensors_path, meta_path, kind=RESULT_KIND, format_version=READABLE_VERSIONS,
        noun="steering result", error=SteeringFileError, expected_shapes=_expected_shapes)
    meta = SteeringMeta.from_dict(header["meta"])
    if fingerprint is not None and not force:
        fingerprint.check_matches(replace(meta.fingerprints[0], quantization=fingerprint.quantization),
                                  what=f"steering result {meta_path}")
    return SteeringResult(families=tuple(header["families"]), layers=tuple(header["layers"]),
                          scales=tuple(header["scales"]), precisions=tuple(header["precisions"]),
                          tensors=tensors, meta=meta, format_version=int(header["format_version"]))


__all__ = ["SteeringConfig", "SteeringMeta", "SteeringResult", "SteeringFileError",
           "save_steering", "load_steering", "steering_paths", "parse_scales", "DEFAULT_SCALES",
           "REFERENCE_PRECISION", "RESULT_FORMAT_VERSION", "READABLE_VERSIONS"]
