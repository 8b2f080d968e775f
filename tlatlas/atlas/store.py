"""Atlas files (DESIGN §6): ``NAME.atlas.safetensors`` + ``NAME.atlas.json``.

The safetensors file holds the summed effects (:class:`~tlatlas.atlas.AtlasSums`);
the JSON file holds everything needed to interpret and trust them: model fingerprint,
suite hash, seed, ablation, metric version, tool version, command line, timings.
Both are written atomically (temporary file, then rename), tensors first, so a reader
never sees a JSON file whose tensors are missing or half-written.
"""

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tlatlas import __version__
from tlatlas.atlas.config import COMPONENTS, POS_COMPONENTS
from tlatlas.atlas.sums import AtlasSums
from tlatlas.errors import AtlasFileError
from tlatlas.io import known_fields, read_result_files, write_result_files
from tlatlas.metrics import METRICS, METRICS_VERSION
from tlatlas.models import Fingerprint
from tlatlas.tokens import ROLES

ATLAS_KIND = "tlatlas.atlas"
ATLAS_FORMAT_VERSION = 2
"""2: per-example effects (``example.*`` tensors) and the ablation's position policy.
Format-1 files (sums only) still load; they have no intervals."""
READABLE_VERSIONS = (1, 2)
TENSORS_SUFFIX = ".atlas.safetensors"
META_SUFFIX = ".atlas.json"


@dataclass(frozen=True, kw_only=True)
class AtlasMeta:
    """Provenance of an atlas."""

    model: str
    """The model source as given (name, path or hub id)."""
    fingerprint: Fingerprint
    """Identity of the model that produced the atlas."""
    suite_kind: str
    """``synthetic`` or ``nl``."""
    suite_hash: str
    """Content hash of the whole (unsharded) suite the atlas covers."""
    seed: int
    """Suite seed (seeds resample the suite)."""
    ablation: str
    """``zero``, ``mean`` or ``resample``."""
    method: str
    """``exact``, ``naive``, ``attribution`` or ``verify`` (estimate, then verify)."""
    n_examples: int
    """Examples scored (in this shard, if sharded)."""
    shard: tuple[int, int] | None = None
    """``(index, count)`` for a shard, None for a whole suite."""
    reference_hash: str | None = None
    """Content hash of the reference set of mean ablation."""
    metrics_version: int = METRICS_VERSION
    """Version of the metric definitions (tlatlas.metrics)."""
    tool_version: str = __version__
    """tlatlas version that wrote the atlas."""
    command: str = ""
    """Command line that produced the atlas."""
    timings: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds of each stage."""
    world_size: int = 1
    """Processes that computed it together (torchrun ranks); 1 for a single process.
    Added without a format bump: files written before it load with the default."""
    positions_ablated: str = "all"
    """Which positions a layer ablation touched: ``all``, ``all-but-bos`` or ``bos-only``
    (format-1 files ablated all positions)."""
    correct_only: bool = False
    """Whether only examples the clean model answers correctly were scored."""
    min_family_examples: int = 1
    """Families scored on fewer examples are left out of the hub."""
    dtype: str = "fp32"
    """The dtype the model computed in (``fp32``, ``bf16``, ...)."""
    components: tuple[str, ...] = COMPONENTS
    """Layer-map components computed (the others are NaN). Added without a format bump:
    older files computed all three."""
    estimate: dict[str, Any] = field(default_factory=dict)
    """For ``attribution`` and ``verify``: the estimator (method, steps); for ``verify``
    also top_k, patience, rank metric, the stopping rule, entries and cells verified out
    of how many, layer rounds and the seconds of each stage. Empty for exact atlases.
    Added without a format bump: older files load with the default."""
    format_version: int = ATLAS_FORMAT_VERSION
    """The file format it was read from (1: sums only, no per-example effects)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint.to_dict()
        d["shard"] = list(self.shard) if self.shard else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AtlasMeta":
        d = dict(d)
        d["fingerprint"] = Fingerprint.from_dict(d["fingerprint"])
        d["shard"] = tuple(d["shard"]) if d.get("shard") else None
        if "components" in d:
            d["components"] = tuple(d["components"])
        return cls(**known_fields(cls, d))


@dataclass(frozen=True, kw_only=True, eq=False)
class Atlas:
    """Summed effects plus their provenance."""

    sums: AtlasSums
    meta: AtlasMeta


def atlas_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(tensors, meta)`` paths for a stem such as ``out/seed42``."""
    s = str(stem)
    for suffix in (TENSORS_SUFFIX, META_SUFFIX):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    return Path(s + TENSORS_SUFFIX), Path(s + META_SUFFIX)


def save_atlas(atlas: Atlas, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write an atlas; returns the two paths."""
    tensors_path, meta_path = atlas_paths(stem)
    s = atlas.sums
    header = {
        "kind": ATLAS_KIND,
        "format_version": ATLAS_FORMAT_VERSION,
        "families": list(s.families),
        "layers": list(s.layers),
        "max_offset": s.max_offset,
        "components": list(COMPONENTS),
        "pos_components": list(POS_COMPONENTS) if s.has_positions else [],
        "roles": list(ROLES),
        "metrics": list(METRICS),
        "tensors": {k: list(v.shape) for k, v in s.tensors.items()},
        "meta": atlas.meta.to_dict(),
    }
    return write_result_files(tensors_path, meta_path, s.tensors, header)


def load_atlas(stem: str | os.PathLike[str], *, fingerprint: Fingerprint | None = None,
               force: bool = False) -> Atlas:
    """Read and validate an atlas.

    Raises AtlasFileError for a missing, truncated, foreign or mis-shaped file, and
    FingerprintMismatchError when ``fingerprint`` (the model in hand) differs from the
    atlas's model, unless ``force``.
    """
    tensors_path, meta_path = atlas_paths(stem)
    header, tensors = read_result_files(tensors_path, meta_path, kind=ATLAS_KIND,
                                        format_version=READABLE_VERSIONS, noun="atlas",
                                        error=AtlasFileError)
    meta = replace(AtlasMeta.from_dict(header["meta"]), format_version=header["format_version"])
    f, n_l = len(header["families"]), len(header["layers"])
    if tensors["layer.sum"].shape != (len(METRICS), len(COMPONENTS), n_l, f):
        raise AtlasFileError(f"{tensors_path}: layer.sum does not match "
                             f"{n_l} layers x {f} families")
    if "example.layer" in tensors:
        n = tensors["example.id"].shape[0]
        if tensors["example.layer"].shape != (len(METRICS), len(COMPONENTS), n_l, n) or \
                int(tensors["count"].sum()) != n:
            raise AtlasFileError(f"{tensors_path}: per-example effects do not match the "
                                 f"counts ({n} rows, {int(tensors['count'].sum())} counted)")
    if "layer.verified" in tensors and \
            tensors["layer.verified"].shape != (len(COMPONENTS), n_l, f):
        raise AtlasFileError(f"{tensors_path}: layer.verified does not match "
                             f"{n_l} layers x {f} families")
    if fingerprint is not None and not force:
        fingerprint.check_matches(meta.fingerprint, what=f"atlas {meta_path}")
    sums = AtlasSums(families=tuple(header["families"]), layers=tuple(header["layers"]),
                     max_offset=int(header["max_offset"]), tensors=tensors)
    return Atlas(sums=sums, meta=meta)


def find_atlases(directory: str | os.PathLike[str]) -> list[Path]:
    """Stems of every atlas in a directory, sorted."""
    d = Path(directory)
    if not d.is_dir():
        raise AtlasFileError(f"{d} is not a directory")
    return sorted(Path(str(p)[: -len(META_SUFFIX)]) for p in d.glob("*" + META_SUFFIX))


def merge_atlases(atlases: list[Atlas]) -> Atlas:
    """Combine the shards ``0..n-1`` of one sweep into the atlas of the whole suite.

    Sums and counts are added (never averages of averages), so the result equals the
    unsharded atlas up to floating-point summation order.
    """
    if not atlases:
        raise AtlasFileError("nothing to merge")
    first = atlases[0].meta
    same = ("fingerprint", "suite_kind", "suite_hash", "seed", "ablation", "method",
            "reference_hash", "metrics_version", "positions_ablated", "correct_only", "dtype",
            "components")
    for a in atlases[1:]:
        for key in same:
            if getattr(a.meta, key) != getattr(first, key):
                raise AtlasFileError(f"cannot merge: shards differ in {key} "
                                     f"({getattr(first, key)!r} vs {getattr(a.meta, key)!r})")
    shards = [a.meta.shard for a in atlases]
    if any(s is None for s in shards):
        raise AtlasFileError("cannot merge: an input is a whole-suite atlas, not a shard")
    count = shards[0][1]
    indices = sorted(s[0] for s in shards)
    if any(s[1] != count for s in shards) or indices != list(range(count)):
        raise AtlasFileError(f"cannot merge: need shards 0..{count - 1} exactly once, "
                             f"got {sorted(shards)}")
    sums = atlases[0].sums
    for a in atlases[1:]:
        sums = sums.merged(a.sums)
    timings = {k: sum(a.meta.timings.get(k, 0.0) for a in atlases) for k in first.timings}
    meta = replace(first, shard=None, n_examples=sum(a.meta.n_examples for a in atlases),
                   timings=timings, command=first.command + f"  [merged {count} shards]")
    return Atlas(sums=sums, meta=meta)


__all__ = ["Atlas", "AtlasMeta", "save_atlas", "load_atlas", "merge_atlases", "find_atlases",
           "atlas_paths"]
