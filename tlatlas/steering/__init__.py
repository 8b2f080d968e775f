"""Steering (DESIGN §5 "Steering"): vectors, the scoped hook and the layer x scale sweep,
precision rows (bf16, NF4, int8), transfer between models, and text tables.

- :mod:`~tlatlas.steering.vectors`: difference-of-means and contrastive vectors, streamed
  as sums and counts;
- :mod:`~tlatlas.steering.sweep`: the hook and the sweep with its random control;
- :mod:`~tlatlas.steering.result`: configs, results and their files;
- :mod:`~tlatlas.steering.precision`: the same sweep on quantized copies;
- :mod:`~tlatlas.steering.transfer`: vectors mapped from one model to another;
- :mod:`~tlatlas.steering.tables`: the text tables the CLI prints.
"""

from tlatlas.steering.result import (
    SteeringConfig,
    SteeringResult,
    load_steering,
    save_steering,
)
from tlatlas.steering.sweep import add_steering, steering, steering_hook, steering_sweep
from tlatlas.steering.vectors import (
    SteeringError,
    SteeringSums,
    SteeringVectors,
    contrast_from_sums,
    contrastive_vectors,
    prompt_sums,
    random_directions,
    resid_hook,
    steer_mask,
    steering_sums,
    steering_vectors,
    typical_norms,
    vectors_from_sums,
)

__all__ = ["SteeringConfig", "SteeringResult", "SteeringSums", "SteeringVectors", "SteeringError",
           "resid_hook", "typical_norms",
           "steering_vectors", "contrastive_vectors", "steering_sums", "prompt_sums",
           "vectors_from_sums", "contrast_from_sums", "random_directions", "steering",
           "steering_hook", "add_steering", "steer_mask", "steering_sweep", "save_steering",
           "load_steering"]
