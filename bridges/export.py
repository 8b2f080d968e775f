"""From an atlas to a PEFT LoRA configuration naming exact module paths.

Strategies (DESIGN §5, LoRA comparison):

- ``atlas``: the layers the atlas ranks most important (family-averaged block KL), as
  many as ``top_k`` or as fit in the trainable-parameter ``budget``; from an
  estimate-then-verify atlas, its verified layers only (:func:`rank_layers`);
- ``random``: the same number of layers, drawn at random (seeded): the matched control.
  Every block has the same shapes, so its count equals the atlas plan's;
- ``all-linear``: every linear module of every block (standard practice).

The trainable-parameter count is computed from the actual module shapes,
``rank * (in_features + out_features)`` per adapted linear module (plus nothing else:
no bias, no modules_to_save), and tests check it equals PEFT's own count.
"""

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from bridges.names import MODULES, ModuleName, hf_module_names
from tlatlas.atlas.hubs import verified_layers
from tlatlas.atlas.sums import AtlasSums, mean_effect
from tlatlas.errors import InvalidInputError

Strategy = Literal["atlas", "random", "all-linear"]
STRATEGIES: tuple[Strategy, ...] = ("atlas", "random", "all-linear")
PLAN_FILE = "tlatlas-lora-plan.json"


@dataclass(frozen=True, kw_only=True)
class LoraPlan:
    """Which modules get LoRA adapters, and how many parameters that trains."""

    strategy: str
    """``atlas``, ``random`` or ``all-linear``."""
    layers: tuple[int, ...]
    """Adapted layers, sorted."""
    modules: tuple[str, ...]
    """Short module names adapted in each layer (see bridges.names.MODULES)."""
    rank: int
    """LoRA rank r."""
    target_modules: tuple[str, ...]
    """Exact Hugging Face module paths (what PEFT's ``target_modules`` receives)."""
    trainable_params: int
    """rank * (in + out) summed over the adapted modules."""
    budget: int | None
    """The parameter budget asked for, if any (never exceeded)."""
    seed: int
    """Seed of the random strategy."""

    def lora_config(self, *, alpha: int | None = None, dropout: float = 0.0,
                    base_model: str | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=alpha or 2 * self.rank, lora_dropout=dropout,
                          target_modules=list(self.target_modules), bias="none",
                          task_type="CAUSAL_LM", base_model_name_or_path=base_model)

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.lora_plan", "format_version": 1, **asdict(self)}


def rank_layers(sums: AtlasSums, *, metric: str = "kl", component: str = "block") -> list[int]:
    """Layers sorted by family-averaged effect, most important first (ties: lower layer).

    An estimate-then-verify atlas ranks its verified layers only
    (:func:`tlatlas.atlas.hubs.verified_layers`): the others hold an estimate (or a
    magnitude score), not an effect, so the list can be shorter than the atlas's layers.
    """
    exact = set(verified_layers(sums, component))
    if not exact:
        raise InvalidInputError(f"no layer of {component} is verified in this atlas: it has no "
                                "exact effect to rank layers by")
    per_layer = mean_effect(sums, metric, component).mean(1).tolist()
    order = sorted((i for i, layer in enumerate(sums.layers) if layer in exact),
                   key=lambda i: (-per_layer[i], i))
    return [sums.layers[i] for i in order]


def module_params(model, names: Sequence[ModuleName], rank: int) -> int:
    """LoRA parameters for ``names``: rank * (in + out) each, read from the live weights."""
    total = 0
    for n in names:
        out_f, in_f = model.hf_model.get_submodule(n.hf_path).weight.shape
        total += rank * (in_f + out_f)
    return total


def _fit_budget(model, ranked: Sequence[int], modules: Sequence[str], rank: int,
                budget: int) -> list[int]:
    chosen: list[int] = []
    used = 0
    for layer in ranked:
        cost = module_params(model, hf_module_names(model, [layer], modules), rank)
        if used + cost > budget:
            break
        chosen.append(layer)
        used += cost
    if not chosen:
        one = module_params(model, hf_module_names(model, [ranked[0]], modules), rank)
        raise InvalidInputError(f"budget {budget} is below one layer's adapters ({one} params at "
                         f"rank {rank} on {', '.join(modules)})")
    return chosen


def plan_lora(model, strategy: Strategy, *, atlas: AtlasSums | None = None,
              budget: int | None = None, top_k: int | None = None,
              modules: Sequence[str] = ("o",), rank: int = 8, seed: int = 0) -> LoraPlan:
    """Choose adapter targets. ``model`` is a tlatlas LoadedModel (its bridge names modules).

    ``atlas`` and ``random`` need ``atlas`` and exactly one of ``budget`` / ``top_k``;
    ``random`` draws as many layers as ``atlas`` would pick.
    """
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    if rank < 1:
        raise InvalidInputError(f"rank must be >= 1, got {rank}")
    bad = [m for m in modules if m not in MODULES]
    if bad:
        raise InvalidInputError(f"unknown modules {bad}; choose from {', '.join(MODULES)}")
    if strategy == "all-linear":
        layers, modules = list(range(model.n_layers)), list(MODULES)
    else:
        if atlas is None:
            raise InvalidInputError(f"strategy {strategy!r} needs an atlas")
        if (budget is None) == (top_k is None):
            raise InvalidInputError("give exactly one of budget or top_k")
        ranked = rank_layers(atlas)
        if top_k is not None:
            if not 1 <= top_k <= len(ranked):
                what = (f" (the atlas's verified layers: {len(ranked)} of {len(atlas.layers)})"
                        if len(ranked) < len(atlas.layers) else "")
                raise InvalidInputError(f"top_k must be in 1..{len(ranked)}, got {top_k}{what}")
            layers = ranked[:top_k]
        else:
            layers = _fit_budget(model, ranked, modules, rank, budget)
        if strategy == "random":
            layers = random.Random(seed).sample(range(model.n_layers), len(layers))
    names = hf_module_names(model, sorted(layers), modules)
    params = module_params(model, names, rank)
    if budget is not None and strategy != "all-linear" and params > budget:
        raise AssertionError("budget matching exceeded the budget")  # _fit_budget guarantees it
    return LoraPlan(strategy=strategy, layers=tuple(sorted(layers)), modules=tuple(modules),
                    rank=rank, target_modules=tuple(n.hf_path for n in names),
                    trainable_params=params, budget=budget, seed=seed)


def plan_for_layers(model, strategy: str, layers: Sequence[int], *, modules: Sequence[str] = ("o",),
                    rank: int = 8, budget: int | None = None, seed: int = 0) -> LoraPlan:
    """A plan adapting exactly ``layers`` (for baselines: first-k, last-k, Block Influence)."""
    if not layers:
        raise InvalidInputError("no layers to adapt")
    names = hf_module_names(model, sorted(layers), modules)
    return LoraPlan(strategy=strategy, layers=tuple(sorted(layers)), modules=tuple(modules),
                    rank=rank, target_modules=tuple(n.hf_path for n in names),
                    trainable_params=module_params(model, names, rank), budget=budget, seed=seed)


def rank_for_budget(model, layers: Sequence[int], modules: Sequence[str], budget: int) -> int:
    """The largest LoRA rank whose adapters on ``layers`` x ``modules`` fit in ``budget``."""
    per_rank = module_params(model, hf_module_names(model, layers, modules), 1)
    if per_rank > budget:
        raise InvalidInputError(f"budget {budget} is below rank 1 on {len(layers)} layers ({per_rank})")
    return budget // per_rank


def write_adapter_config(plan: LoraPlan, out: str | Path, *, base_model: str | None = None,
                         alpha: int | None = None, dropout: float = 0.0) -> Path:
    """Write ``adapter_config.json`` (stock PEFT reads it) and the plan beside it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan.lora_config(alpha=alpha, dropout=dropout, base_model=base_model).save_pretrained(str(out))
    (out / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1))
    return out / "adapter_config.json"
