"""Adapter studies that test the atlas (issue: bridges). Each returns result rows (dicts).

- :func:`strategy_study`: atlas-guided vs random-matched vs all-linear LoRA, and, at the
  *same* trainable-parameter budget as the atlas plan, the cheap baselines a fair reader
  asks for: first-k and last-k layers, layers ranked by Block Influence, ``o`` on every
  layer at the largest rank that fits, and PEFT's AdaLoRA on every layer's modules with its
  final budget matched (bridges.adalora; its initial and final counts are both reported).
  Budgets are reported per row.
- :func:`module_sweep`: ``o`` vs ``q,k,v`` vs MLP vs all modules with the *set of layers
  held fixed* (the origin report changed layers and modules at once).

Both are thin loops over :func:`bridges.train.train_lora`. Studies (c) and (d) live in
bridges.skip and bridges.stability.
"""

from collections.abc import Callable, Sequence
from dataclasses import replace

from bridges.adalora import AdaLoraPlan, adalora_plan, train_adalora
from bridges.export import plan_for_layers, plan_lora, rank_for_budget
from bridges.influence import block_influence
from bridges.names import MODULES
from bridges.train import TrainConfig, train_lora
from tlatlas.atlas.sums import AtlasSums
from tlatlas.tasks import build_suite

MODULE_SETS = {"o": ("o",), "qkv": ("q", "k", "v"), "mlp": ("gate", "in", "out"), "all": MODULES}
DEFAULT_TRAIN = TrainConfig()
NOT_RUN: dict[str, str] = {}
"""Strategies the study never runs, with why (none at present)."""


def _row(result, **extra) -> dict:
    return {**extra, "trainable_params": result.trainable_params, "layers": result.plan["layers"],
            "modules": result.plan["modules"], "rank": result.plan["rank"],
            "heldout_loss_before": result.heldout_loss_before,
            "heldout_loss_after": result.heldout_loss_after,
            "exact_match_before": result.exact_match_before,
            "exact_match_after": result.exact_match_after}


def _adalora_row(result, **extra) -> dict:
    row = _row(result.train, **extra)
    row.update(trainable_params=result.final_params, initial_params=result.initial_params,
               peft_final_params=result.peft_final_params,
               target_r=result.train.plan["target_r"], final_ranks=result.final_ranks)
    return row


def baseline_plans(model, atlas: AtlasSums, *, top_k: int, modules: Sequence[str], rank: int,
                   seed: int, steps: int = DEFAULT_TRAIN.steps) -> tuple[dict, dict[str, str]]:
    """Plans of every strategy for one seed, and the strategies skipped (with why).

    ``steps`` schedules AdaLoRA's pruning (it must know the training length up front).
    """
    atlas_plan = plan_lora(model, "atlas", atlas=atlas, top_k=top_k, modules=modules, rank=rank)
    budget = atlas_plan.trainable_params
    n = model.n_layers
    bi = block_influence(model, list(build_suite("synthetic", per_family=4)))
    bi_layers = sorted(range(n), key=lambda i: (-float(bi[i]), i))[:top_k]
    plans = {
        "atlas": atlas_plan,
        "random": plan_lora(model, "random", atlas=atlas, top_k=top_k, modules=modules,
                            rank=rank, seed=seed),
        "first-k": plan_for_layers(model, "first-k", range(top_k), modules=modules, rank=rank,
                                   budget=budget),
        "last-k": plan_for_layers(model, "last-k", range(n - top_k, n), modules=modules,
                                  rank=rank, budget=budget),
        "block-influence": plan_for_layers(model, "block-influence", bi_layers, modules=modules,
                                           rank=rank, budget=budget),
        "all-linear": plan_lora(model, "all-linear", rank=rank),
    }
    skipped = dict(NOT_RUN)
    try:
        r = rank_for_budget(model, range(n), ("o",), budget)
        plans["uniform-o"] = plan_for_layers(model, "uniform-o", range(n), modules=("o",),
                                             rank=r, budget=budget)
    except ValueError as err:
        skipped["uniform-o"] = str(err)
    try:
        plans["adalora"] = adalora_plan(model, budget, steps, modules=modules, init_r=rank)
    except ValueError as err:
        skipped["adalora"] = str(err)
    return plans, skipped


def strategy_study(source, model, atlas: AtlasSums, *, families: Sequence[str] = ("json", "factual", "code"),
                   seeds: Sequence[int] = (0, 1, 2), top_k: int = 4, modules: Sequence[str] = ("o",),
                   rank: int = 8, train: TrainConfig = DEFAULT_TRAIN,
                   on_run: Callable[[str], None] | None = None) -> dict:
    """Train every strategy on every family and seed; return rows and skipped strategies."""
    rows, skipped = [], {}
    for seed in seeds:
        plans, skipped = baseline_plans(model, atlas, top_k=top_k, modules=modules, rank=rank,
                                        seed=seed, steps=train.steps)
        for family in families:
            for name, plan in plans.items():
                if on_run is not None:
                    on_run(f"{name} {family} seed {seed}")
                config = replace(train, family=family, seed=seed)
                extra = dict(strategy=name, family=family, seed=seed,
                             budget=plans["atlas"].trainable_params)
                if isinstance(plan, AdaLoraPlan):
                    rows.append(_adalora_row(train_adalora(source, plan, config), **extra))
                else:
                    rows.append(_row(train_lora(source, plan, config), **extra))
    return {"rows": rows, "skipped": skipped, "top_k": top_k, "rank": rank}


def module_sweep(source, model, layers: Sequence[int], *, family: str = "json",
                 seeds: Sequence[int] = (0,), rank: int = 8, train: TrainConfig = DEFAULT_TRAIN,
                 on_run: Callable[[str], None] | None = None) -> dict:
    """Each module set on the same ``layers``: loss against trainable parameters."""
    rows = []
    for seed in seeds:
        for name, mods in MODULE_SETS.items():
            if on_run is not None:
                on_run(f"{name} seed {seed}")
            plan = plan_for_layers(model, f"modules-{name}", layers, modules=mods, rank=rank)
            result = train_lora(source, plan, replace(train, family=family, seed=seed))
            rows.append(_row(result, module_set=name, family=family, seed=seed))
    return {"rows": rows, "layers": list(layers), "rank": rank}
