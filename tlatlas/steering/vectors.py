"""Steering vectors (DESIGN §5 "Steering"): difference of means on ``resid_post``.

Per family and layer, v_L = mean(resid_post[L] on the family's prompts) - the mean of the
other families' means, unit-normalised; the added vector is ``s * v_L * n_L`` with n_L the
layer's typical residual norm (mean ‖resid_post[L]‖). Means and norms are taken over
every real position after BOS (the positions a vector is added at). Everything streams
as sums and counts (:class:`SteeringSums`, :func:`steering_sums`), so shards and
``torch.distributed`` ranks combine exactly; :func:`vectors_from_sums` is the pure step
from sums to vectors. Contrastive pairs (two prompt lists) give one vector:
mean(positive) - mean(negative). :mod:`tlatlas.steering` re-exports all of it.

The same pass also sums the halves of the partition control
(:mod:`tlatlas.steering.controls`) when asked, so the control costs no extra forward;
vectors remember the ids of the prompts they were estimated on (``train_uids``), so a
sweep can record whether its scored prompts were held out.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tlatlas.atlas.engine import clean_token_batches
from tlatlas.errors import InvalidInputError, TlatlasError
from tlatlas.hooks import hook_name
from tlatlas.models import Fingerprint, LoadedModel, check_layers
from tlatlas.steering.controls import (
    partition_directions,
    partition_membership,
    random_directions,
    unit,
)
from tlatlas.tasks import Example
from tlatlas.tasks.suite import canonical_order
from tlatlas.tokens import ROLE_BOS, ROLE_PAD, encode_prompts

VECTORS_KIND = "tlatlas.steering_vectors"
VECTORS_FORMAT_VERSION = 1

class SteeringError(TlatlasError):
    """Bad input to a steering computation (no prompts, a missing family, a wrong width)."""


def resid_hook(layer: int) -> str:
    """The hook a steering vector is added at: ``blocks.{layer}.hook_resid_post``."""
    return hook_name(layer, "hook_resid_post")


def steer_mask(roles: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """Positions a steering vector is added at: every real token after BOS."""
    return (roles != ROLE_PAD) & (roles != ROLE_BOS)


# --------------------------------------------------------------------------- vectors


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringSums:
    """Streaming sums of ``resid_post`` per group (family or prompt list) and layer.

    Sums and counts, never means, so shards and ``torch.distributed`` ranks all-reduce
    them exactly before :func:`vectors_from_sums`.
    """

    groups: tuple[str, ...]
    """Group of each index of the group axis (family names, or positive/negative)."""
    layers: tuple[int, ...]
    """Layer of each index of the layer axis."""
    sums: Float[Tensor, "layer group d_model"]
    """Sum of resid_post over the positions after BOS of the group's prompts (fp64, CPU)."""
    norm_sums: Float[Tensor, "layer group"]
    """Sum of ‖resid_post‖ over the same positions (fp64, CPU)."""
    counts: Float[Tensor, " group"]
    """Number of positions summed per group (fp64, so all-reduce treats it like the sums)."""
    fingerprint: Fingerprint
    """The model the activations came from."""

    def merged(self, other: "SteeringSums") -> "SteeringSums":
        if (self.groups, self.layers) != (other.groups, other.layers):
            raise SteeringError("cannot merge steering sums over different groups or layers")
        return SteeringSums(groups=self.groups, layers=self.layers,
                            sums=self.sums + other.sums, norm_sums=self.norm_sums + other.norm_sums,
                            counts=self.counts + other.counts, fingerprint=self.fingerprint)


@dataclass(frozen=True, kw_only=True, eq=False)
class SteeringVectors:
    """Unit steering directions per concept and layer, with the layers' typical norms."""

    names: tuple[str, ...]
    """Concept of each direction: a family name, or the contrastive pair's name."""
    layers: tuple[int, ...]
    """Model layer of each index of the layer axis."""
    directions: Float[Tensor, "concept layer d_model"]
    """Unit-norm directions (fp32, CPU)."""
    norms: Float[Tensor, " layer"]
    """Typical residual norm at each layer: mean ‖resid_post[L]‖ after BOS (fp32)."""
    fingerprint: Fingerprint
    """The model the directions are *for* (the target model, for transferred vectors)."""
    origin: str = "difference-of-means"
    """How the directions were made: ``difference-of-means``, ``contrastive`` or
    ``transferred from <model fingerprint> L<a> -> L<b>``."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (e.g. the transfer map's R²)."""
    partition: Float[Tensor, "draw concept layer d_model"] | None = None
    """The partition control's unit directions (halves of each family's own training
    prompts, :mod:`tlatlas.steering.controls`), or None when not computed."""
    train_uids: tuple[int, ...] = ()
    """:attr:`Example.uid` of every prompt the directions were estimated on (empty when
    unknown: contrastive or transferred vectors)."""

    def __post_init__(self) -> None:
        c, n_l, d = self.directions.shape
        if c != len(self.names) or n_l != len(self.layers) or self.norms.shape != (n_l,):
            raise SteeringError(f"directions {tuple(self.directions.shape)} do not match "
                                f"{len(self.names)} names x {len(self.layers)} layers")
        if self.partition is not None and tuple(self.partition.shape[1:]) != (c, n_l, d):
            raise SteeringError(f"partition directions {tuple(self.partition.shape)} do not "
                                f"match directions {tuple(self.directions.shape)}")

    @property
    def partition_draws(self) -> int:
        """Partition-control draws available (0 when there is none)."""
        return 0 if self.partition is None else int(self.partition.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.directions.shape[-1])

    def concept_index(self, families: Sequence[str]) -> Int[Tensor, " batch"]:
        """Which direction steers each example: its family's, or the single contrastive one."""
        if len(self.names) == 1:
            return torch.zeros(len(families), dtype=torch.long)
        missing = sorted(set(families) - set(self.names))
        if missing:
            raise SteeringError(f"no steering vector for famil{'ies' if len(missing) > 1 else 'y'} "
                                f"{', '.join(missing)}; vectors exist for {', '.join(self.names)}")
        return torch.tensor([self.names.index(f) for f in families])

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise SteeringError(f"no steering vector at layer {layer}; vectors cover {list(self.layers)}")
        return self.layers.index(layer)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": VECTORS_KIND, "format_version": VECTORS_FORMAT_VERSION,
                "names": list(self.names), "layers": list(self.layers),
                "fingerprint": self.fingerprint.to_dict(), "origin": self.origin,
                "extra": dict(self.extra), "partition_draws": self.partition_draws,
                "train_uids": list(self.train_uids)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], directions: Tensor, norms: Tensor) -> "SteeringVectors":
        if d.get("kind") != VECTORS_KIND or d.get("format_version") != VECTORS_FORMAT_VERSION:
            raise SteeringError(f"not steering vectors of format {VECTORS_FORMAT_VERSION}: "
                                f"{d.get('kind')!r} v{d.get('format_version')}")
        return cls(names=tuple(d["names"]), layers=tuple(d["layers"]), directions=directions,
                   norms=norms, fingerprint=Fingerprint.from_dict(d["fingerprint"]),
                   origin=d.get("origin", ""), extra=dict(d.get("extra", {})),
                   train_uids=tuple(int(u) for u in d.get("train_uids", ())))


def membership_sums(
    model: LoadedModel,
    prompts: Sequence[str],
    membership: Float[Tensor, "prompt group"],
    group_names: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> SteeringSums:
    """Sums of ``resid_post`` over the positions after BOS of each group's prompts, where
    ``membership[i, g]`` (0/1) says whether prompt ``i`` belongs to group ``g`` (a prompt
    may be in several groups: its family and the halves of partition draws)."""
    if not prompts or membership.shape != (len(prompts), len(group_names)):
        raise SteeringError(f"need at least one prompt and a membership matrix of shape "
                            f"({len(prompts)}, {len(group_names)}), got {tuple(membership.shape)}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    lays = check_layers(model, layers)
    names = tuple(group_names)
    d = model.d_model
    sums = torch.zeros(len(lays), len(names), d, dtype=torch.float64)
    norm_sums = torch.zeros(len(lays), len(names), dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
    hooks = [resid_hook(layer) for layer in lays]
    member = membership.double()
    encoded = (encode_prompts(prompts[i:i + batch_size], model.tokenizer)
               for i in range(0, len(prompts), batch_size))
    start = 0
    for cb in clean_token_batches(model, encoded, hooks):
        roles, clean = cb.batch.roles, cb.clean
        b = roles.shape[0]
        weight = steer_mask(roles).double()[..., None] * member[start:start + b, None, :]
        start += b  # weight: [batch pos group]
        counts += weight.sum((0, 1))
        for li, name in enumerate(hooks):
            act = clean.acts[name].double().cpu()  # [batch pos d_model]
            sums[li] += torch.einsum("bpd,bpg->gd", act, weight)
            norm_sums[li] += torch.einsum("bp,bpg->g", act.norm(dim=-1), weight)
        if on_batch is not None:
            on_batch(b)
    return SteeringSums(groups=names, layers=lays, sums=sums, norm_sums=norm_sums, counts=counts,
                        fingerprint=model.fingerprint)


def prompt_sums(
    model: LoadedModel,
    groups: Sequence[str],
    prompts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    group_names: Sequence[str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> SteeringSums:
    """Sums of ``resid_post`` per group over the positions after BOS, streaming in batches.

    ``groups[i]`` names the group of ``prompts[i]``; ``group_names`` fixes the group axis
    order (default: order of first appearance).
    """
    if len(groups) != len(prompts) or not prompts:
        raise SteeringError(f"need one group per prompt and at least one prompt "
                            f"({len(groups)} groups, {len(prompts)} prompts)")
    names = tuple(group_names) if group_names is not None else tuple(dict.fromkeys(groups))
    unknown = sorted(set(groups) - set(names))
    if unknown:
        raise SteeringError(f"groups {unknown} are not in group_names {list(names)}")
    idx = torch.tensor([names.index(g) for g in groups])
    member = torch.nn.functional.one_hot(idx, len(names)).double()
    return membership_sums(model, prompts, member, names, layers=layers, batch_size=batch_size,
                           on_batch=on_batch)


def steering_sums(
    model: LoadedModel,
    examples: Iterable[Example],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    families: Sequence[str] | None = None,
    partition_draws: int = 0,
    partition_seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> SteeringSums:
    """Per-family raw sums over a suite (the part ranks all-reduce), and with
    ``partition_draws`` the sums of each family's random halves (the partition control)."""
    examples = list(examples)
    if not examples:
        raise SteeringError("need at least one prompt to compute steering sums")
    fams = tuple(families) if families is not None else tuple(dict.fromkeys(e.family for e in examples))
    unknown = sorted({e.family for e in examples} - set(fams))
    if unknown:
        raise SteeringError(f"groups {unknown} are not in group_names {list(fams)}")
    member = torch.nn.functional.one_hot(
        torch.tensor([fams.index(e.family) for e in examples]), len(fams)).double()
    names = fams
    if partition_draws:
        part_names, part = partition_membership([e.family for e in examples],
                                                [e.uid for e in examples], fams, partition_draws,
                                                seed=partition_seed)
        names, member = fams + part_names, torch.cat([member, part], 1)
    return membership_sums(model, [e.prompt for e in examples], member, names, layers=layers,
                           batch_size=batch_size, on_batch=on_batch)


def _means(sums: SteeringSums) -> Float[Tensor, "layer group d_model"]:
    empty = [g for g, c in zip(sums.groups, sums.counts.tolist(), strict=True) if c == 0]
    if empty:
        raise SteeringError(f"no positions for group(s) {empty}: every group needs prompts")
    return sums.sums / sums.counts[None, :, None]


def typical_norms(sums: SteeringSums) -> Float[Tensor, " layer"]:
    """Mean ‖resid_post[L]‖ over every summed position, pooled over groups (fp32); with
    partition groups present, over the family groups only (each position once)."""
    keep = [i for i, g in enumerate(sums.groups) if not g.startswith("partition/")]
    return (sums.norm_sums[:, keep].sum(1) / sums.counts[keep].sum().clamp(min=1)).float()


def vectors_from_sums(sums: SteeringSums, *, train_uids: Sequence[int] = ()) -> SteeringVectors:
    """One-vs-rest difference of means per group: each family's mean minus the mean of the
    other families' means (families weigh equally, however long their prompts). With
    partition groups in ``sums`` (from ``steering_sums(partition_draws=M)``), the
    partition control's directions come along."""
    fam = [i for i, g in enumerate(sums.groups) if not g.startswith("partition/")]
    names = tuple(sums.groups[i] for i in fam)
    if len(names) < 2:
        raise SteeringError("a difference of means needs at least two families")
    all_means = _means(sums)  # [layer group d_model]
    means = all_means[:, fam]
    g = len(names)
    rest = (means.sum(1, keepdim=True) - means) / (g - 1)
    directions = unit((means - rest).permute(1, 0, 2)).float()
    draws = sum(1 for grp in sums.groups if grp.startswith("partition/")) // (2 * g)
    partition = partition_directions(all_means, sums.groups, names, draws) if draws else None
    return SteeringVectors(names=names, layers=sums.layers, directions=directions.contiguous(),
                           norms=typical_norms(sums), fingerprint=sums.fingerprint,
                           partition=partition, train_uids=tuple(int(u) for u in train_uids))


def contrast_from_sums(sums: SteeringSums, *, positive: str = "positive",
                       negative: str = "negative", name: str = "contrast") -> SteeringVectors:
    """mean(positive group) - mean(negative group), unit-normalised, as one concept."""
    means = _means(sums)
    i, j = sums.groups.index(positive), sums.groups.index(negative)
    direction = unit(means[:, i] - means[:, j]).float()[None]
    return SteeringVectors(names=(name,), layers=sums.layers, directions=direction.contiguous(),
                           norms=typical_norms(sums), fingerprint=sums.fingerprint,
                           origin="contrastive")


def steering_vectors(
    model: LoadedModel,
    examples: Iterable[Example],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    partition_draws: int = 0,
    partition_seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> SteeringVectors:
    """Difference-of-means steering vectors of every family in ``examples`` (DESIGN §5),
    with ``partition_draws`` partition-control directions from the same prompts; the
    vectors record the prompts' ids as ``train_uids``."""
    examples = list(examples)
    families = canonical_order([e.family for e in examples])
    sums = steering_sums(model, examples, layers=layers, batch_size=batch_size,
                         families=families, partition_draws=partition_draws,
                         partition_seed=partition_seed, on_batch=on_batch)
    return vectors_from_sums(sums, train_uids=[e.uid for e in examples])


def contrastive_vectors(
    model: LoadedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    name: str = "contrast",
    on_batch: Callable[[int], None] | None = None,
) -> SteeringVectors:
    """A user concept from two prompt lists: mean(positive) - mean(negative)."""
    if not positive or not negative:
        raise SteeringError("contrastive vectors need at least one positive and one negative prompt")
    groups = ["positive"] * len(positive) + ["negative"] * len(negative)
    sums = prompt_sums(model, groups, list(positive) + list(negative), layers=layers,
                       batch_size=batch_size, group_names=("positive", "negative"),
                       on_batch=on_batch)
    return contrast_from_sums(sums, name=name)


__all__ = ["SteeringError", "SteeringSums", "SteeringVectors", "resid_hook", "steer_mask",
           "membership_sums", "prompt_sums", "steering_sums", "typical_norms",
           "vectors_from_sums", "contrast_from_sums", "steering_vectors", "contrastive_vectors",
           "random_directions"]
