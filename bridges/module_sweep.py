"""Study (b), the module sweep at equal parameters: which modules give the most per parameter?

The origin report compared ``o_proj`` on every layer (344K parameters) with the MLP on fewer
layers, changing the layers and the parameter count at once. Here the layers are held fixed
and, at each budget, every module set (``o``, ``q,k,v``, MLP, all) gets the LoRA rank that
brings its trainable count within ``tolerance`` (5%) of the others':

- one rank of module set ``s`` on the layers costs ``c_s = sum(in + out)`` parameters;
- the costliest set (``all``) has the coarsest grain, so budgets are its multiples: at
  ``r`` ranks of ``all`` the budget is ``B = r c_all`` and every other set gets
  ``round(B / c_s)``; ``r`` is feasible when the counts' spread ``max / min - 1`` is at
  most ``tolerance``. A requested budget is moved to the nearest feasible one.

Several budgets give a loss-vs-parameters curve per module set; at each budget the sets
are compared to ``o`` by a paired bootstrap over seeds x held-out prompts
(bridges.compare). Row counts are PEFT's own (``get_nb_trainable_parameters`` through
bridges.train), and the result records each budget's spread.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from bridges.compare import compare_to, run_row
from bridges.export import module_params, plan_for_layers
from bridges.names import MODULES, hf_module_names
from bridges.train import TrainConfig, train_lora
from tlatlas.errors import InvalidInputError

MODULE_SETS = {"o": ("o",), "qkv": ("q", "k", "v"), "mlp": ("gate", "in", "out"), "all": MODULES}
"""The module sets compared, by name."""
TOLERANCE = 0.05
"""Largest relative spread ``max / min - 1`` of the trainable counts at one budget."""
DEFAULT_TRAIN = TrainConfig(n_heldout=32)


def rank_costs(model, layers: Sequence[int], sets: Mapping[str, Sequence[str]] = MODULE_SETS
               ) -> dict[str, int]:
    """Trainable parameters of one LoRA rank of each module set on ``layers``."""
    return {name: module_params(model, hf_module_names(model, layers, mods), 1)
            for name, mods in sets.items()}


def spread(counts: Sequence[int]) -> float:
    """``max / min - 1`` of trainable counts (0: all equal)."""
    return max(counts) / min(counts) - 1


def equal_param_ranks(costs: Mapping[str, int], budget: int, *,
                      tolerance: float = TOLERANCE) -> dict[str, int]:
    """The ranks that give every set (nearly) ``budget`` parameters, at the feasible budget
    nearest to ``budget`` (ratio distance; ties: the larger). A budget below the smallest
    feasible one moves up to it.

    Raises:
        InvalidInputError: no budget up to ``max(4 x budget, 64 ranks of the costliest
            set)`` is feasible.
    """
    if budget < 1 or not costs or min(costs.values()) < 1:
        raise InvalidInputError(f"need a budget >= 1 and positive costs, got {budget}, {costs}")
    grain = max(costs.values())
    best, best_distance = None, None
    for r in range(max(1, budget // (4 * grain)), max(budget * 4 // grain, 64) + 2):
        b = r * grain
        ranks = {name: max(1, round(b / c)) for name, c in costs.items()}
        if spread([ranks[s] * costs[s] for s in costs]) > tolerance:
            continue
        distance = abs(b / budget - 1) if b >= budget else abs(budget / b - 1)
        if best_distance is None or distance <= best_distance:
            best, best_distance = ranks, distance
    if best is None:
        raise InvalidInputError(
            f"no ranks give the module sets {sorted(costs)} counts within {tolerance:.0%} of "
            f"each other near {budget} parameters (one rank costs {dict(costs)}); "
            "ask for a larger budget")
    return best


def default_budgets(costs: Mapping[str, int], rank: int) -> list[int]:
    """The curve's budgets: what ``all`` modules cost at ranks ``rank / 2``, ``rank`` and
    ``2 rank`` (before moving each to the nearest feasible budget)."""
    grain = max(costs.values())
    return sorted({max(1, round(grain * rank * f)) for f in (0.5, 1.0, 2.0)})


def module_sweep(source, model, layers: Sequence[int], *, family: str = "json",
                 seeds: Sequence[int] = (0, 1), rank: int = 8,
                 budgets: Sequence[int] | None = None, train: TrainConfig = DEFAULT_TRAIN,
                 tolerance: float = TOLERANCE,
                 on_run: Callable[[str], None] | None = None) -> dict:
    """Each module set on the same ``layers`` at equal trainable counts, at several budgets.

    ``budgets`` (trainable parameters) default to :func:`default_budgets` of ``rank``; each
    is moved to the nearest feasible budget and duplicates are dropped. Returns ``rows``
    (one per budget x seed x module set, with per-prompt held-out values), ``budgets``
    (requested, ranks, PEFT counts and their spread), and ``comparisons``: at each budget,
    each set against ``o`` (held-out loss of the set minus ``o``'s, and ``o``'s exact
    match minus the set's: positive = ``o`` better), paired over seeds x prompts.
    """
    if not layers:
        raise InvalidInputError("the module sweep needs at least one layer")
    costs = rank_costs(model, layers)
    requested = list(budgets) if budgets is not None else default_budgets(costs, rank)
    plans: list[tuple[int, dict[str, int]]] = []
    for b in requested:
        ranks = equal_param_ranks(costs, b, tolerance=tolerance)
        if all(ranks != r for _, r in plans):
            plans.append((b, ranks))
    rows, points, before = [], [], None
    for b, ranks in plans:
        counts = {}
        for seed in seeds:
            for name, mods in MODULE_SETS.items():
                if on_run is not None:
                    on_run(f"{name} rank {ranks[name]} seed {seed}")
                plan = plan_for_layers(model, f"modules-{name}", layers, modules=mods,
                                       rank=ranks[name])
                result = train_lora(source, plan, replace(train, family=family, seed=seed),
                                    before=before)
                before = (result.heldout_loss_before, result.exact_match_before)
                counts[name] = result.trainable_params
                rows.append(run_row(result, module_set=name, family=family, seed=seed,
                                    budget=b))
        points.append({"requested": b, "ranks": ranks, "trainable_params": counts,
                       "spread": spread(list(counts.values()))})
    comparisons = {}
    for point in points:
        at = [r for r in rows if r["budget"] == point["requested"]]
        comparisons[str(point["requested"])] = {
            name: compare_to(at, "module_set", "o", name) for name in MODULE_SETS if name != "o"}
    return {"rows": rows, "layers": sorted(layers), "rank": rank, "budgets": points,
            "tolerance": tolerance, "comparisons": comparisons,
            "comparison": "o vs each set: loss(set) - loss(o) and EM(o) - EM(set); "
                          "paired bootstrap over seeds x held-out prompts, by family"}
