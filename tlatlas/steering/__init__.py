"""Steering (DESIGN §5 "Steering", issue 15): vectors, the scoped hook and the layer x scale
sweep with two controls, held-out vectors, per-example steerability, precision rows
(bf16, NF4, int8), transfer between models, and text tables.

- :mod:`~tlatlas.steering.config`: the sweep's config and the two regimes' scale grids;
- :mod:`~tlatlas.steering.vectors`: difference-of-means and contrastive vectors, streamed
  as sums and counts;
- :mod:`~tlatlas.steering.controls`: the random and the partition control;
- :mod:`~tlatlas.steering.heldout`: the train / held-out split and fitting vectors on it;
- :mod:`~tlatlas.steering.sweep`: the hook and the sweep (vector and controls, per example);
- :mod:`~tlatlas.steering.result`: results and their files;
- :mod:`~tlatlas.steering.steerability`: slopes, specificity, amplification and drift
  with intervals;
- :mod:`~tlatlas.steering.precision`: the same sweep on quantized copies, with drift;
- :mod:`~tlatlas.steering.provenance`: where each row's weights came from;
- :mod:`~tlatlas.steering.transfer`: vectors mapped from one model to another;
- :mod:`~tlatlas.steering.tables`: the text tables the CLI prints.
"""

from tlatlas.steering.config import (
    LINEAR_SCALES,
    SATURATION_SCALES,
    SteeringConfig,
    parse_scales,
)
from tlatlas.steering.controls import partition_directions, partition_membership, random_directions
from tlatlas.steering.heldout import HeldoutSplit, fit_vectors, heldout_split
from tlatlas.steering.result import SteeringResult, load_steering, save_steering
from tlatlas.steering.steerability import (
    amplification_intervals,
    drift_stats,
    layer_steerability,
    most_steerable,
)
from tlatlas.steering.sweep import add_steering, steering, steering_hook, steering_sweep
from tlatlas.steering.vectors import (
    SteeringError,
    SteeringSums,
    SteeringVectors,
    contrast_from_sums,
    contrastive_vectors,
    membership_sums,
    prompt_sums,
    resid_hook,
    steer_mask,
    steering_sums,
    steering_vectors,
    typical_norms,
    vectors_from_sums,
)

__all__ = ["SteeringConfig", "SteeringResult", "SteeringSums", "SteeringVectors", "SteeringError",
           "LINEAR_SCALES", "SATURATION_SCALES", "parse_scales",
           "resid_hook", "typical_norms",
           "steering_vectors", "contrastive_vectors", "steering_sums", "prompt_sums",
           "membership_sums", "vectors_from_sums", "contrast_from_sums", "random_directions",
           "partition_membership", "partition_directions", "HeldoutSplit", "heldout_split",
           "fit_vectors", "steering", "steering_hook", "add_steering", "steer_mask",
           "steering_sweep", "save_steering", "load_steering", "layer_steerability",
           "most_steerable", "amplification_intervals", "drift_stats"]
