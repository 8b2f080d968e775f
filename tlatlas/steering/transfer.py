"""Carry steering vectors from model A to model B through a linear map (issue 5, step 4).

On paired prompts, fit ridge least squares from A's ``resid_post[La]`` to B's
``resid_post[Lb]`` (held-out R² on prompts never used in the fit), map A's unit
directions through it, re-normalise, scale by B's typical norm at Lb, and sweep B with
them next to B's own vectors and B's random control (all norm-matched at each scale).

The two models are never in memory at once: A's activations and vectors are written to
disk, A is freed, then B is loaded.

Samples are token positions after BOS when A and B tokenize every prompt identically
(same tokenizer: position i is the same token in both), else the last prompt token only.
"""

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.atlas.engine import clean_token_batches
from tlatlas.errors import InvalidInputError, TlatlasError
from tlatlas.io import atomic_write
from tlatlas.models import LoadedModel, load_model
from tlatlas.steering.precision import free_model
from tlatlas.steering.result import (
    SteeringConfig,
    SteeringResult,
    examples_hash,
    load_steering,
    save_steering,
)
from tlatlas.steering.steerability import transfer_slopes
from tlatlas.steering.sweep import steering_sweep
from tlatlas.steering.vectors import (
    SteeringVectors,
    resid_hook,
    steer_mask,
    steering_vectors,
)
from tlatlas.tasks import Example
from tlatlas.tokens import encode_prompts

TRANSFER_KIND = "tlatlas.steering_transfer"
TRANSFER_FORMAT_VERSION = 1


class TransferError(TlatlasError):
    """Bad transfer input (layer pairs out of range, too few prompts, positions that do not align)."""


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """How the A -> B map is fitted."""

    layer_pairs: tuple[tuple[int, int], ...] | None = None
    """``(La, Lb)`` pairs; default one pair: A's middle layer and B's layer at the same depth."""
    ridge: float = 1e-4
    """Ridge strength relative to the mean eigenvalue of X^T X (lambda = ridge * tr / d)."""
    holdout_every: int = 5
    """Every n-th prompt is held out of the fit and scores R²."""
    positions: Literal["auto", "all", "last"] = "auto"
    """Samples: every position after BOS (``all``; needs identical tokenization), the last
    prompt token (``last``), or ``all`` when possible else ``last`` (``auto``)."""
    batch_size: int = 8
    """Prompts per forward when caching activations."""

    def __post_init__(self) -> None:
        if self.ridge < 0 or self.holdout_every < 2 or self.batch_size < 1:
            raise InvalidInputError("need ridge >= 0, holdout_every >= 2, batch_size >= 1")
        if self.positions not in ("auto", "all", "last"):
            raise InvalidInputError(f"unknown positions {self.positions!r}; choose auto, all or last")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layer_pairs"] = [list(p) for p in self.layer_pairs] if self.layer_pairs else None
        return d


def default_pairs(n_a: int, n_b: int) -> tuple[tuple[int, int], ...]:
    la = n_a // 2
    return ((la, round(la * (n_b - 1) / max(n_a - 1, 1))),)


# --------------------------------------------------------------------------- activations


def cache_activations(model: LoadedModel, prompts: Sequence[str], layers: Sequence[int],
                      path: Path, *, batch_size: int = 8) -> Path:
    """Write resid_post at every position after BOS of every prompt, per layer, to ``path``.

    Tensors: ``L{layer}`` [position d_model] (fp32), ``ids`` [position] (token ids),
    ``prompt`` [position] (prompt index), ``last`` [position] (1 at the last token).
    """
    from safetensors.torch import save_file

    parts: dict[str, list[Tensor]] = {k: [] for k in ["ids", "prompt", "last"] + [f"L{x}" for x in layers]}
    hooks = [resid_hook(layer) for layer in layers]
    encoded = (encode_prompts(prompts[i:i + batch_size], model.tokenizer)
               for i in range(0, len(prompts), batch_size))
    for cb in clean_token_batches(model, encoded, hooks):
        start = cb.index * batch_size
        tokens, roles, scored, clean = cb.batch.tokens, cb.batch.roles, cb.batch.scored_pos, cb.clean
        sel = steer_mask(roles)
        rows = torch.arange(tokens.shape[0])[:, None].expand_as(tokens)
        parts["ids"].append(tokens[sel])
        parts["prompt"].append(rows[sel] + start)
        parts["last"].append((torch.arange(tokens.shape[1])[None] == scored[:, None])[sel].long())
        for layer, name in zip(layers, hooks, strict=True):
            parts[f"L{layer}"].append(clean.acts[name].float().cpu()[sel])
    tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
    atomic_write(path, lambda p: save_file(tensors, p))
    return path


def load_activations(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _samples(a: dict[str, Tensor], b: dict[str, Tensor], mode: str) -> tuple[Tensor, Tensor, str]:
    """Row selections into A's and B's caches that pair the same samples, and the mode used."""
    same = a["ids"].shape == b["ids"].shape and torch.equal(a["ids"], b["ids"]) and \
        torch.equal(a["prompt"], b["prompt"])
    if mode == "all" and not same:
        raise TransferError("positions='all' needs identical tokenization of every prompt in "
                            "both models; use positions='last' (or 'auto')")
    if mode == "all" or (mode == "auto" and same):
        idx = torch.arange(a["ids"].shape[0])
        return idx, idx, "all"
    ia, ib = torch.nonzero(a["last"])[:, 0], torch.nonzero(b["last"])[:, 0]
    return ia, ib, "last"


# --------------------------------------------------------------------------- the map


@dataclass(frozen=True, kw_only=True, eq=False)
class LinearMap:
    """y = x @ weight + bias, from A's residual space to B's."""

    weight: Float[Tensor, "d_a d_b"]
    """Map matrix (fp64)."""
    bias: Float[Tensor, " d_b"]
    """Offset (fp64)."""
    r2: float
    """Held-out R² (1 - SSE / SST, pooled over B's dimensions; SST about the train mean)."""
    n_train: int
    """Samples fitted."""
    n_test: int
    """Held-out samples scored."""


def fit_ridge(x: Float[Tensor, "sample d_a"], y: Float[Tensor, "sample d_b"],
              x_test: Float[Tensor, "test d_a"], y_test: Float[Tensor, "test d_b"],
              *, ridge: float) -> LinearMap:
    """Ridge least squares on centred data, in fp64, with the held-out R²."""
    x, y, x_test, y_test = (t.double() for t in (x, y, x_test, y_test))
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * float(gram.trace()) / gram.shape[0]
    weight = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    bias = my - mx @ weight
    pred = x_test @ weight + bias
    sse = float(((y_test - pred) ** 2).sum())
    sst = float(((y_test - my) ** 2).sum())
    return LinearMap(weight=weight, bias=bias, r2=1.0 - sse / max(sst, 1e-30),
                     n_train=int(x.shape[0]), n_test=int(x_test.shape[0]))


def map_vectors(vectors: SteeringVectors, maps: dict[tuple[int, int], LinearMap],
                target: SteeringVectors) -> SteeringVectors:
    """A's unit directions at each La through the map, re-normalised, on B's layers and norms."""
    dirs = []
    for (la, lb) in maps:
        mapped = vectors.directions[:, vectors.layer_index(la)].double() @ maps[(la, lb)].weight
        dirs.append((mapped / mapped.norm(dim=-1, keepdim=True).clamp(min=1e-12)).float())
    lbs = tuple(lb for _, lb in maps)
    norms = target.norms[[target.layer_index(lb) for lb in lbs]]
    pairs = ", ".join(f"L{la}->L{lb}" for la, lb in maps)
    return SteeringVectors(names=vectors.names, layers=lbs, directions=torch.stack(dirs, 1),
                           norms=norms, fingerprint=target.fingerprint,
                           origin=f"transferred from {vectors.fingerprint.short} {pairs}",
                           extra={"r2": [m.r2 for m in maps.values()]})


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True, kw_only=True, eq=False)
class TransferResult:
    """B steered with its own vectors (and random control) and with A's mapped vectors."""

    pairs: tuple[tuple[int, int], ...]
    """``(La, Lb)`` of each map."""
    maps: dict[tuple[int, int], LinearMap]
    """The fitted maps."""
    positions: str
    """Which samples fitted the maps: ``all`` positions or ``last`` token."""
    cosine: Float[Tensor, "concept pair"]
    """Cosine between each transferred direction and B's own direction at Lb."""
    own: SteeringResult
    """B's sweep with its own vectors, with the random control."""
    transferred: SteeringResult
    """B's sweep with A's mapped vectors (no random control: it is ``own``'s)."""
    meta: dict[str, Any]
    """model_a, model_b, fingerprints, suite hash, configs, command line."""

    def summary(self) -> dict[str, Any]:
        own, tr = self.own.mean_kl()[0], self.transferred.mean_kl()[0]  # [layer scale]
        rnd, rnd_std = self.own.random_kl()
        return {"kind": TRANSFER_KIND, "format_version": TRANSFER_FORMAT_VERSION,
                "pairs": [list(p) for p in self.pairs], "positions": self.positions,
                "r2": [self.maps[p].r2 for p in self.pairs],
                "n_train": [self.maps[p].n_train for p in self.pairs],
                "n_test": [self.maps[p].n_test for p in self.pairs],
                "families": list(self.own.families), "scales": list(self.own.scales),
                "cosine": self.cosine.tolist(), "own_kl": own.tolist(),
                "transferred_kl": tr.tolist(), "random_kl": rnd[0].tolist(),
                "random_kl_std": rnd_std[0].tolist(),
                "slopes": transfer_slopes(self.own, self.transferred), "meta": self.meta}


Loader = Callable[[object], LoadedModel]


def steering_transfer(
    source_a,
    source_b,
    examples: Iterable[Example],
    *,
    workdir: str | os.PathLike[str],
    config: TransferConfig | None = None,
    sweep: SteeringConfig | None = None,
    map_prompts: Sequence[str] | None = None,
    loader: Loader | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    command: str = "",
) -> TransferResult:
    """Fit A -> B maps, carry A's vectors to B and sweep B (one model resident at a time).

    ``map_prompts`` (default: the examples' prompts) are the paired prompts of the fit;
    ``loader(source)`` defaults to an fp32 :func:`load_model`. A's activations go to
    ``workdir/a.acts.safetensors`` and its vectors to ``workdir/a.vectors.safetensors``.
    """
    from safetensors.torch import save_file

    config = config or TransferConfig()
    sweep = sweep or SteeringConfig()
    load = loader or (lambda src: load_model(src, dtype=torch.float32))
    stage = on_stage or (lambda s: None)
    examples = list(examples)
    prompts = list(map_prompts) if map_prompts is not None else [e.prompt for e in examples]
    held = set(range(0, len(prompts), config.holdout_every))
    if len(prompts) - len(held) < 2 or not held:
        raise TransferError(f"{len(prompts)} paired prompts are too few to fit and score a map")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)

    stage(f"A: {source_a}")
    model = load(source_a)
    pairs = config.layer_pairs or default_pairs(model.n_layers, -1)
    n_a, fp_a = model.n_layers, model.fingerprint
    if any(not 0 <= la < n_a for la, _ in pairs):
        raise TransferError(f"source layers {[la for la, _ in pairs]} out of range 0..{n_a - 1}")
    vec_a = steering_vectors(model, examples, layers=sorted({la for la, _ in pairs}),
                             batch_size=config.batch_size, on_batch=on_batch)
    acts_a = cache_activations(model, prompts, vec_a.layers, work / "a.acts.safetensors",
                               batch_size=config.batch_size)
    vec_path = work / "a.vectors.safetensors"
    atomic_write(vec_path, lambda p: save_file(
        {"directions": vec_a.directions, "norms": vec_a.norms}, p,
        metadata={"vectors": json.dumps(vec_a.to_dict())}))
    del model, vec_a
    free_model()

    stage(f"B: {source_b}")
    model = load(source_b)
    if config.layer_pairs is None:
        pairs = default_pairs(n_a, model.n_layers)
    if any(not 0 <= lb < model.n_layers for _, lb in pairs):
        raise TransferError(f"target layers {[lb for _, lb in pairs]} out of range "
                            f"0..{model.n_layers - 1}")
    if len({lb for _, lb in pairs}) != len(pairs):
        raise TransferError(f"each target layer may appear once in the pairs, got {pairs}")
    lbs = tuple(lb for _, lb in pairs)
    acts_b = cache_activations(model, prompts, sorted(set(lbs)), work / "b.acts.safetensors",
                               batch_size=config.batch_size)
    a, b = load_activations(acts_a), load_activations(acts_b)
    ia, ib, mode = _samples(a, b, config.positions)
    test_a = torch.tensor([int(p) in held for p in a["prompt"][ia]])
    test_b = torch.tensor([int(p) in held for p in b["prompt"][ib]])
    maps = {}
    for la, lb in pairs:
        xa, yb = a[f"L{la}"][ia], b[f"L{lb}"][ib]
        maps[(la, lb)] = fit_ridge(xa[~test_a], yb[~test_b], xa[test_a], yb[test_b],
                                   ridge=config.ridge)
    vec_a = _load_vectors(vec_path)
    vec_b = steering_vectors(model, examples, layers=sorted(set(lbs)), batch_size=config.batch_size)
    vec_t = map_vectors(vec_a, maps, vec_b)
    own_dirs = vec_b.directions[:, [vec_b.layer_index(lb) for lb in lbs]]
    cosine = (own_dirs * vec_t.directions).sum(-1)
    stage("sweep B: own vectors + random control")
    cfg = replace(sweep, layers=lbs)
    own = steering_sweep(model, examples, vec_b, cfg, on_batch=on_batch, command=command)
    stage("sweep B: transferred vectors")
    transferred = steering_sweep(model, examples, vec_t, replace(cfg, random_draws=0),
                                 on_batch=on_batch, command=command)
    fp_b = model.fingerprint
    del model
    free_model()
    meta = {"model_a": str(source_a), "model_b": str(source_b), "fingerprint_a": fp_a.to_dict(),
            "fingerprint_b": fp_b.to_dict(), "suite_hash": examples_hash(examples),
            "n_map_prompts": len(prompts), "config": config.to_dict(),
            "sweep": sweep.to_dict(), "command": command}
    return TransferResult(pairs=tuple(pairs), maps=maps, positions=mode, cosine=cosine,
                          own=own, transferred=transferred, meta=meta)


def _load_vectors(path: Path) -> SteeringVectors:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        header = json.loads(fh.metadata()["vectors"])
        return SteeringVectors.from_dict(header, fh.get_tensor("directions"), fh.get_tensor("norms"))


def save_transfer(result: TransferResult, stem: str | os.PathLike[str]) -> Path:
    """``STEM.own.steering.*``, ``STEM.transferred.steering.*`` and ``STEM.transfer.json``."""
    save_steering(result.own, f"{stem}.own")
    save_steering(result.transferred, f"{stem}.transferred")
    path = Path(f"{stem}.transfer.json")
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(result.summary(), indent=1)))
    return path


def load_transfer_summary(stem: str | os.PathLike[str]) -> tuple[dict[str, Any], SteeringResult,
                                                                  SteeringResult]:
    """The JSON summary and the two sweeps of a saved transfer."""
    path = Path(f"{stem}.transfer.json")
    if not path.exists():
        raise TransferError(f"missing transfer file {path}")
    summary = json.loads(path.read_text())
    if summary.get("kind") != TRANSFER_KIND or summary.get("format_version") != TRANSFER_FORMAT_VERSION:
        raise TransferError(f"{path} is not a tlatlas transfer of format {TRANSFER_FORMAT_VERSION}")
    return summary, load_steering(f"{stem}.own"), load_steering(f"{stem}.transferred")
