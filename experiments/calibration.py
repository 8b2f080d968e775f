"""Per-model steering grids: one scale grid in residual-norm units does not fit every model.

Steering scales are multiples of the layer's typical residual norm. On SmolLM2-135M a
norm-matched random direction costs 0.2–0.6 nats of KL at |s| = 0.25 and 3–9 at |s| = 1,
which is what the steering blocks' grids are written for. On Gemma-3-270M that norm is
mostly a handful of massive dimensions, and a random direction costs the same KL at about
a tenth of the scale (0.1–2 nats at |s| = 0.03, 2.5–9 at |s| = 0.1; measured with
``tlatlas steer`` on 24 held-out prompts, ``docs/steering.md``, "A calibrated grid on
Gemma-3-270M"). On the shared grid every Gemma steering row read saturation.

For a model in :data:`STEERING_SCALE` the runner multiplies the grid of each single-model
steering block by the model's factor. The grid a run used is in its parameters, so it is
recorded in the result and a change recomputes that model's results only. The two-model
``steer-transfer`` block keeps one grid for both models (its Gemma direction is flagged by
the saturation threat instead).
"""

from collections.abc import Sequence

from experiments.blocks.base import Block

STEERING_SCALE: dict[str, float] = {"gemma3-270m": 0.1}
"""Factor on a steering block's scale grid, per registered model (1 where absent)."""


def model_params(block: Block, models: Sequence[str], size: str) -> dict:
    """Parameters of ``block`` at ``size`` that ``models`` change (empty: none): the scale
    grid of a single-model steering block, times the model's :data:`STEERING_SCALE`."""
    from tlatlas.steering.config import REGIME_SCALES

    if "steering" not in block.tags or block.models != 1:
        return {}
    factor = STEERING_SCALE.get(models[0], 1.0)
    if factor == 1.0:
        return {}
    params = block.params[size]
    grid = params.get("scales") or REGIME_SCALES[params.get("regime", "linear")]
    return {"scales": [round(float(s) * factor, 12) for s in grid], "scale_factor": factor}
