"""PEFT AdaLoRA at a matched parameter budget: the adaptive-rank baseline of study (a).

AdaLoRA (Zhang et al., 2023) writes each adapted weight's update as ``B diag(E) A`` and,
during training, prunes singular triplets (a row of A, an entry of E, a column of B) by an
importance score: every module starts at ``init_r`` triplets and training ends with
``target_r x modules`` triplets in total, placed where the score puts them. It is the
learned answer to the question the atlas answers causally: where should rank go?

Budget matching. A kept triplet of a module with ``in`` inputs and ``out`` outputs costs
``in + out + 1`` trainable parameters. PEFT's final budget is ``target_r x modules``
triplets, so we take the largest ``target_r`` for which even the worst placement (every
kept triplet in the most expensive module) stays within the budget:
``target_r = budget // (modules x max triplet cost)``. The *initial* count (``init_r``
triplets everywhere) is larger by design; both are reported, and the final effective
count is checked against PEFT's own: the size of the adapter ``save_pretrained`` writes,
which PEFT resizes by its final rank pattern.

Schedule, from ``TrainConfig.steps`` (= PEFT's ``total_step``): ``tinit = steps // 10``
warm-up steps at ``init_r``, a cubic budget decrease, and ``tfinal = max(1, steps // 5)``
final steps at the fixed final allocation (at least one, so that the final allocation
happens at all). The strategy study runs AdaLoRA only from
``bridges.studies.MIN_ADALORA_STEPS`` (50) steps: >= 5 warm-up steps for the importance
estimates, >= 35 pruning steps and >= 10 at the final allocation; at 4 steps (tinit 0,
tfinal 1) its singular values, which start at 0, barely move and a ranking would mean
nothing.
"""

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from bridges.export import module_params
from bridges.names import MODULES, hf_module_names
from bridges.train import TrainConfig, TrainResult, train_lora
from tlatlas.errors import InvalidInputError

ADAPTER_NAME = "default"


@dataclass(frozen=True, kw_only=True)
class AdaLoraPlan:
    """AdaLoRA adapters on a module set, with a final budget matched to a LoRA plan's."""

    strategy: str
    """Name of the row in a study (``adalora``)."""
    layers: tuple[int, ...]
    """Layers whose modules carry adapters (AdaLoRA decides where rank stays)."""
    modules: tuple[str, ...]
    """Short module names adapted in each layer."""
    target_modules: tuple[str, ...]
    """Exact Hugging Face module paths."""
    init_r: int
    """Triplets per module at the start."""
    target_r: int
    """Average triplets per module at the end (PEFT's final budget is target_r x modules)."""
    total_step: int
    """Training steps (PEFT's ``total_step``)."""
    tinit: int
    """Warm-up steps before pruning starts."""
    tfinal: int
    """Steps trained at the final allocation."""
    triplet_costs: tuple[int, ...]
    """``in + out + 1`` per target module, in the order of ``target_modules``."""
    budget: int
    """The matched budget (trainable parameters) the final count must not exceed."""
    orth_reg_weight: float = 0.5
    """Weight of AdaLoRA's orthogonality penalty on A and B (PEFT's default). PEFT adds
    it to the loss whenever the model computes one from ``labels``."""

    def __post_init__(self) -> None:
        if not 1 <= self.target_r < self.init_r:
            raise InvalidInputError(f"need 1 <= target_r < init_r, got {self.target_r}, {self.init_r}")
        if not 0 <= self.tinit < self.total_step - self.tfinal:
            raise InvalidInputError("schedule leaves no pruning phase: need tinit < total_step - tfinal")

    @property
    def rank(self) -> int:
        return self.init_r

    @property
    def initial_params(self) -> int:
        """Trainable parameters at the start (what PEFT counts on the fresh model)."""
        return self.init_r * sum(self.triplet_costs)

    @property
    def final_bound(self) -> int:
        """The most parameters the final allocation can keep (worst placement)."""
        return self.target_r * len(self.triplet_costs) * max(self.triplet_costs)

    def lora_config(self):
        from peft import AdaLoraConfig

        return AdaLoraConfig(init_r=self.init_r, target_r=self.target_r, tinit=self.tinit,
                             tfinal=self.tfinal, deltaT=1, total_step=self.total_step,
                             lora_alpha=2 * self.init_r, lora_dropout=0.0,
                             orth_reg_weight=self.orth_reg_weight,
                             target_modules=list(self.target_modules), bias="none",
                             task_type="CAUSAL_LM")

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.adalora_plan", "format_version": 1, **asdict(self),
                "rank": self.init_r, "initial_params": self.initial_params,
                "final_bound": self.final_bound}


def adalora_plan(model, budget: int, steps: int, *, layers: Sequence[int] | None = None,
                 modules: Sequence[str] = ("o",), init_r: int = 8) -> AdaLoraPlan:
    """The AdaLoRA plan whose final count is as large as fits in ``budget`` (never above).

    ``model`` is a tlatlas LoadedModel; ``layers`` defaults to every layer; ``init_r`` is
    raised to ``ceil(1.5 x target_r)`` when smaller (AdaLoRA must have something to prune).
    """
    bad = [m for m in modules if m not in MODULES]
    if bad:
        raise InvalidInputError(f"unknown modules {bad}; choose from {', '.join(MODULES)}")
    if steps < 2:
        raise InvalidInputError(f"AdaLoRA needs at least 2 training steps, got {steps}")
    layers = sorted(range(model.n_layers) if layers is None else layers)
    names = hf_module_names(model, layers, modules)
    costs = tuple(module_params(model, [n], 1) + 1 for n in names)
    target_r = budget // (len(costs) * max(costs))
    if target_r < 1:
        raise InvalidInputError(f"budget {budget} is below one triplet per module on {len(costs)} "
                         f"modules ({len(costs) * max(costs)} parameters)")
    return AdaLoraPlan(strategy="adalora", layers=tuple(layers), modules=tuple(modules),
                       target_modules=tuple(n.hf_path for n in names),
                       init_r=max(init_r, math.ceil(1.5 * target_r)), target_r=target_r,
                       total_step=steps, tinit=steps // 10, tfinal=max(1, steps // 5),
                       triplet_costs=costs, budget=budget)


@dataclass(frozen=True, kw_only=True)
class AdaLoraResult:
    """A trained AdaLoRA run and its budget accounting."""

    train: TrainResult
    """The run (``train.trainable_params`` is PEFT's count at the start)."""
    initial_params: int
    """Trainable parameters at the start: init_r triplets in every module."""
    final_params: int
    """Effective parameters at the end: kept triplets x (in + out + 1), from the rank pattern."""
    peft_final_params: int
    """Parameters in PEFT's own final adapter state dict (resized by its rank pattern)."""
    final_ranks: dict[str, int] = field(default_factory=dict)
    """Kept triplets per target module path."""

    def to_dict(self) -> dict:
        return {"kind": "tlatlas.adalora_result", "format_version": 1, **asdict(self)}


def final_accounting(peft_model, plan: AdaLoraPlan) -> tuple[dict[str, int], int, int]:
    """(kept rank per module, effective count from the rank pattern, PEFT's saved count)."""
    from peft import get_peft_model_state_dict

    pattern = peft_model.peft_config[ADAPTER_NAME].rank_pattern
    if not pattern:
        raise RuntimeError("AdaLoRA never allocated its final budget (no rank pattern)")
    ranks = {}
    for path in plan.target_modules:
        keys = [k for k in pattern if k.startswith(f"{path}.lora_E")]
        if len(keys) != 1:
            raise RuntimeError(f"rank pattern has {len(keys)} entries for {path}")
        ranks[path] = int(sum(pattern[keys[0]]))
    effective = sum(ranks[p] * c for p, c in zip(plan.target_modules, plan.triplet_costs,
                                                 strict=True))
    with warnings.catch_warnings():  # PEFT mistakes a module pruned to rank 0 for a ZeRO shard
        warnings.filterwarnings("ignore", message=".*invalid shape.*")
        saved = sum(t.numel() for t in get_peft_model_state_dict(peft_model).values())
    return ranks, effective, saved


def train_adalora(source, plan: AdaLoraPlan, config: TrainConfig, *, device=None,
                  before: tuple[float, float] | None = None, on_step=None) -> AdaLoraResult:
    """Train ``plan`` with bridges.train's loop, reallocating ranks after every step."""
    if config.steps != plan.total_step:
        raise InvalidInputError(f"plan is scheduled for {plan.total_step} steps, config has {config.steps}")
    seen = {}

    def allocate(model, steps_done: int) -> None:
        seen["model"] = model
        if steps_done:  # PEFT counts global steps from 0, after optimizer.step()
            model.base_model.update_and_allocate(steps_done - 1)

    # the loop optimizes the PEFT model's labels= loss, to which AdaLoRA adds
    # ``orth_reg_weight`` x its orthogonal regularisation itself
    result = train_lora(source, plan, config, device=device, on_step=on_step,
                        after_step=allocate, before=before)
    ranks, effective, saved = final_accounting(seen["model"], plan)
    return AdaLoraResult(train=result, initial_params=result.trainable_params,
                         final_params=effective, peft_final_params=saved, final_ranks=ranks)
