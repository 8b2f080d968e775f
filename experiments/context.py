"""What a block sees while it runs: its models, seed, parameters, suites and shared atlases.

Models are loaded on first use and kept in a one-slot cache, so at most one model is
resident at a time (a two-model block loads them in turn). Atlases that several blocks need
(the zero-ablation atlas of a seed feeds the hub, LoRA, skip and stability blocks) are
computed once and kept under ``<root>/artifacts/``, keyed by the model weights, suite hash,
configuration and code version.
"""

import gc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlatlas.tasks import Suite, build_suite

ARTIFACTS_DIR = "artifacts"
_RESIDENT: dict[str, Any] = {}


def load_resident(name: str):
    """``tlatlas.models.load_model(name)``, keeping at most one model in memory."""
    if name not in _RESIDENT:
        _RESIDENT.clear()
        gc.collect()
        from tlatlas.models import load_model

        _RESIDENT[name] = load_model(name)
    return _RESIDENT[name]


def release_models() -> None:
    """Drop the resident model (e.g. before a block loads its own quantized copies)."""
    _RESIDENT.clear()
    gc.collect()


def suite_kinds(params: dict) -> tuple[str, ...]:
    return tuple(params.get("suites", ("synthetic",)))


def block_suite(params: dict, seed: int, kind: str | None = None) -> Suite:
    """The suite a block scores at ``seed``: its kind, ``per_family`` and ``families``."""
    kind = kind or suite_kinds(params)[0]
    fams = params.get("families")
    return build_suite(kind, seed=seed, per_family=params.get("per_family"),
                       families=list(fams) if fams else None)


def suite_hash(params: dict, seed: int) -> str:
    """One hash over every suite the block scores (the provenance of its result)."""
    hashes = [block_suite(params, seed, k).content_hash for k in suite_kinds(params)]
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("+".join(hashes).encode()).hexdigest()


@dataclass(kw_only=True)
class BlockContext:
    """Everything one block run needs; built by the runner."""

    models: tuple[str, ...]
    """Model names (one, or two for comparison blocks)."""
    seed: int
    """Suite seed of this run."""
    size: str
    """``smoke``, ``small`` or ``full``."""
    params: dict[str, Any]
    """The block's parameters at this size."""
    root: Path
    """The experiments root (results, registry, artifacts)."""
    code_version: str
    """Code version the result is recorded under."""
    say: Callable[[str], None] = lambda _: None
    """Progress messages (the runner shows them; the library never prints)."""
    artifacts: list[str] = field(default_factory=list)
    """Artifact files this run read or wrote (recorded in its result)."""
    fingerprints: dict[str, dict] = field(default_factory=dict)
    """Fingerprint of every model this run loaded, by name (recorded in its result)."""

    @property
    def model_name(self) -> str:
        return self.models[0]

    def model(self, i: int = 0):
        """The ``i``-th model, loaded (one resident at a time)."""
        loaded = load_resident(self.models[i])
        self.fingerprints[self.models[i]] = loaded.fingerprint.to_dict()
        return loaded

    def suite(self, kind: str | None = None, seed: int | None = None) -> Suite:
        return block_suite(self.params, self.seed if seed is None else seed, kind)

    def atlas(self, *, model: int = 0, kind: str = "synthetic", ablation: str = "zero",
              positions: bool = False, layers: Sequence[int] | None = None,
              families: Sequence[str] | None = None, positions_ablated: str | None = None):
        """The atlas of ``models[model]`` on this run's suite, computed once and kept on disk.

        ``positions_ablated`` defaults to the block's ``positions_ablated`` parameter, else
        the library default (:class:`~tlatlas.atlas.config.AtlasConfig`); the layer-map
        components computed are the block's ``components`` parameter (default all)."""
        from tlatlas.atlas.config import AtlasConfig
        from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
        from tlatlas.atlas.store import atlas_paths, load_atlas, save_atlas

        loaded = self.model(model)
        fams = families if families is not None else self.params.get("families")
        spec = SuiteSpec(kind=kind, seed=self.seed, per_family=self.params.get("per_family"),
                         families=tuple(fams) if fams else None)
        policy = positions_ablated or self.params.get("positions_ablated")
        components = self.params.get("components")
        config = AtlasConfig(ablation=ablation, positions=positions,
                             **({"components": tuple(components)} if components else {}),
                             layers=tuple(layers) if layers is not None else None,
                             batch_size=int(self.params.get("batch_size", 8)),
                             **({"positions_ablated": policy} if policy else {}))
        key = json.dumps({"w": loaded.fingerprint.weights_sha256, "spec": repr(spec),
                          "config": repr(config), "code": self.code_version}, sort_keys=True)
        stem = (self.root / ARTIFACTS_DIR / Path(loaded.fingerprint.weights_sha256[:12])
                / f"atlas-{hashlib.sha256(key.encode()).hexdigest()[:16]}")
        rel = str(atlas_paths(stem)[1].relative_to(self.root))
        if rel not in self.artifacts:
            self.artifacts.append(rel)
        if atlas_paths(stem)[1].exists():
            return load_atlas(stem, fingerprint=loaded.fingerprint)
        self.say(f"atlas {kind} {ablation}{' +positions' if positions else ''} seed {self.seed}")
        atlas = build_atlas(loaded, spec, config, command="experiments block " + self.size)
        save_atlas(atlas, stem)
        return atlas
