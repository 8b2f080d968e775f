"""Study (a), adapter strategies at a matched budget: does the atlas say where to adapt?

:func:`strategy_study` trains, on each family and training seed, atlas-guided LoRA (the
``top_k`` layers the atlas ranks most important) and, at the *same* trainable-parameter
budget, the baselines a fair reader asks for: ``random_draws`` random layer sets of the
same size (the same draws for every seed, so seeds and draws vary independently), first-k
and last-k layers, layers ranked by Block Influence, ``o`` on every layer at the largest
rank that fits, and PEFT's AdaLoRA on every layer's modules with its final budget matched
(bridges.adalora); plus all-linear (standard practice, not budget-matched).

Power. Every run records its per-prompt held-out loss and exact match, and each strategy
is compared to atlas-guided by a paired bootstrap over (seed, family, held-out prompt)
pairs, stratified by family (bridges.compare): the study reports differences with 95%
CIs, positive when atlas-guided is better. Defaults: 2 seeds x 3 random draws, 32
held-out prompts per family, 60 steps (enough for all-linear's training loss to flatten on
SmolLM2-135M, docs/studies.md); n = seeds x families x 32 pairs per comparison.

The atlas that chooses the layers is recorded (:func:`chooser_record`): its families,
examples per family, ablation and position policy; an atlas with fewer than
:data:`MIN_CHOOSER_PER_FAMILY` examples in some family is flagged ``powered: false``.

AdaLoRA runs only with a schedule that can prune (:data:`MIN_ADALORA_STEPS`); otherwise it
is listed in ``skipped`` with why.

The module sweep (study b) lives in bridges.module_sweep (re-exported here); studies (c)
and (d) in bridges.skip and bridges.stability.
"""

from collections.abc import Callable, Sequence
from dataclasses import replace

from bridges.adalora import AdaLoraPlan, adalora_plan, train_adalora
from bridges.compare import compare_to, run_row
from bridges.export import plan_for_layers, plan_lora, rank_for_budget
from bridges.influence import block_influence
from bridges.module_sweep import MODULE_SETS, module_sweep
from bridges.train import TrainConfig, train_lora
from tlatlas.atlas.sums import AtlasSums
from tlatlas.errors import InvalidInputError
from tlatlas.tasks import build_suite

__all__ = ["MODULE_SETS", "module_sweep", "strategy_study", "baseline_plans", "chooser_record"]

DEFAULT_TRAIN = TrainConfig(steps=60, n_heldout=32)
"""The study's training run: 60 steps, 64 training and 32 held-out prompts per family."""
DEFAULT_SEEDS = (0, 1)
"""Training seeds (adapter init and data order)."""
DEFAULT_DRAWS = 3
"""Random layer sets per study (each trained with every seed)."""
MIN_CHOOSER_PER_FAMILY = 16
"""Examples per family the layer-choosing atlas needs to count as powered."""
MIN_ADALORA_STEPS = 50
"""AdaLoRA's schedule (bridges.adalora) then has >= 5 warm-up steps, >= 10 steps at the
final allocation and >= 35 pruning steps between; shorter runs are not run."""
NOT_RUN: dict[str, str] = {}
"""Strategies the study never runs, with why (none at present)."""


def chooser_record(atlas) -> dict:
    """What chose the layers: an Atlas (sums and meta) or bare AtlasSums (no policy known)."""
    sums: AtlasSums = getattr(atlas, "sums", atlas)
    meta = getattr(atlas, "meta", None)
    counts = [int(c) for c in sums.tensors["count"].tolist()]
    per_family = dict(zip(sums.families, counts, strict=True))
    return {"families": list(sums.families), "examples_per_family": per_family,
            "min_per_family": min(counts),
            "powered": min(counts) >= MIN_CHOOSER_PER_FAMILY,
            "ablation": meta.ablation if meta else None,
            "positions_ablated": meta.positions_ablated if meta else None,
            "method": meta.method if meta else None,
            "suite_hash": meta.suite_hash if meta else None,
            "seed": meta.seed if meta else None}


def baseline_plans(model, atlas: AtlasSums, *, top_k: int, modules: Sequence[str], rank: int,
                   draws: int = DEFAULT_DRAWS, steps: int = DEFAULT_TRAIN.steps
                   ) -> tuple[dict[str, list], dict[str, str]]:
    """Plans of every strategy (a list each: one per random draw, else one), and the
    strategies skipped, with why. ``steps`` schedules AdaLoRA's pruning."""
    if draws < 1:
        raise InvalidInputError(f"need at least one random draw, got {draws}")
    atlas_plan = plan_lora(model, "atlas", atlas=atlas, top_k=top_k, modules=modules, rank=rank)
    budget = atlas_plan.trainable_params
    n = model.n_layers
    bi = block_influence(model, list(build_suite("synthetic", per_family=4)))
    bi_layers = sorted(range(n), key=lambda i: (-float(bi[i]), i))[:top_k]
    plans = {
        "atlas": [atlas_plan],
        "random": [plan_lora(model, "random", atlas=atlas, top_k=top_k, modules=modules,
                             rank=rank, seed=d) for d in range(draws)],
        "first-k": [plan_for_layers(model, "first-k", range(top_k), modules=modules, rank=rank,
                                    budget=budget)],
        "last-k": [plan_for_layers(model, "last-k", range(n - top_k, n), modules=modules,
                                   rank=rank, budget=budget)],
        "block-influence": [plan_for_layers(model, "block-influence", bi_layers,
                                            modules=modules, rank=rank, budget=budget)],
        "all-linear": [plan_lora(model, "all-linear", rank=rank)],
    }
    skipped = dict(NOT_RUN)
    try:
        r = rank_for_budget(model, range(n), ("o",), budget)
        plans["uniform-o"] = [plan_for_layers(model, "uniform-o", range(n), modules=("o",),
                                              rank=r, budget=budget)]
    except InvalidInputError as err:
        skipped["uniform-o"] = str(err)
    if steps < MIN_ADALORA_STEPS:
        skipped["adalora"] = (f"not run: {steps} steps cannot hold AdaLoRA's warm-up, pruning "
                              f"and final phases (needs >= {MIN_ADALORA_STEPS} steps)")
    else:
        try:
            plans["adalora"] = [adalora_plan(model, budget, steps, modules=modules,
                                             init_r=rank)]
        except InvalidInputError as err:
            skipped["adalora"] = f"not run: {err}"
    return plans, skipped


def _adalora_row(result, **extra) -> dict:
    row = run_row(result.train, **extra)
    initial = result.train.plan["init_r"] * len(result.final_ranks)
    row.update(trainable_params=result.final_params, initial_params=result.initial_params,
               peft_final_params=result.peft_final_params,
               target_r=result.train.plan["target_r"], final_ranks=result.final_ranks,
               schedule={k: result.train.plan[k] for k in ("tinit", "tfinal", "total_step")},
               pruned=sum(result.final_ranks.values()) < initial)
    return row


def strategy_study(source, model, atlas, *, families: Sequence[str] = ("json", "factual", "code"),
                   seeds: Sequence[int] = DEFAULT_SEEDS, random_draws: int = DEFAULT_DRAWS,
                   top_k: int = 4, modules: Sequence[str] = ("o",), rank: int = 8,
                   train: TrainConfig = DEFAULT_TRAIN,
                   on_run: Callable[[str], None] | None = None) -> dict:
    """Train every strategy on every family and seed; compare each to atlas-guided.

    ``atlas`` is the Atlas (or AtlasSums) that chooses the layers. Returns ``rows`` (one
    per run, with per-prompt held-out values; random rows carry their ``draw``),
    ``skipped``, ``comparisons`` (strategy -> bridges.compare.compare_to against
    ``atlas``), ``chooser`` (:func:`chooser_record`) and the ``design``.
    """
    sums = getattr(atlas, "sums", atlas)
    plans, skipped = baseline_plans(model, sums, top_k=top_k, modules=modules, rank=rank,
                                    draws=random_draws, steps=train.steps)
    budget = plans["atlas"][0].trainable_params
    rows, before = [], {}
    for seed in seeds:
        for family in families:
            config = replace(train, family=family, seed=seed)
            for name, variants in plans.items():
                for draw, plan in enumerate(variants):
                    label = f"{name}{f' draw {draw}' if len(variants) > 1 else ''}"
                    if on_run is not None:
                        on_run(f"{label} {family} seed {seed}")
                    extra = dict(strategy=name, family=family, seed=seed, budget=budget)
                    if len(variants) > 1:
                        extra["draw"] = draw
                    if isinstance(plan, AdaLoraPlan):
                        rows.append(_adalora_row(train_adalora(source, plan, config,
                                                               before=before.get(family)),
                                                 **extra))
                    else:
                        rows.append(run_row(train_lora(source, plan, config,
                                                       before=before.get(family)), **extra))
                    before[family] = (rows[-1]["heldout_loss_before"],
                                      rows[-1]["exact_match_before"])
    comparisons = {name: compare_to(rows, "strategy", "atlas", name)
                   for name in plans if name != "atlas"}
    return {"rows": rows, "skipped": skipped, "top_k": top_k, "rank": rank,
            "comparisons": comparisons, "chooser": chooser_record(atlas),
            "comparison": "atlas vs each strategy: loss(strategy) - loss(atlas) and "
                          "EM(atlas) - EM(strategy), positive = atlas better; paired bootstrap "
                          "over seeds x held-out prompts, stratified by family",
            "design": {"seeds": list(seeds), "random_draws": random_draws,
                       "families": list(families), "steps": train.steps, "lr": train.lr,
                       "n_train": train.n_train, "n_heldout": train.n_heldout,
                       "batch_size": train.batch_size, "modules": list(modules)}}
