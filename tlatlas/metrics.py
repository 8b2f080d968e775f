"""Effect metrics (DESIGN §5), batched on the device: no per-example ``.item()``.

Every effect compares the clean run with an intervened run at the scored position:

- ``kl``: KL(p_clean || p_ablated) over the vocabulary, in nats.
- ``dlogp``: log p_clean(answer) - log p_ablated(answer), in nats.
- ``acc_drop``: 1[clean top-1 = answer] - 1[ablated top-1 = answer].
"""

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

METRICS = ("kl", "dlogp", "acc_drop")
METRICS_VERSION = 1
"""Bumped whenever a metric's definition changes; recorded in every atlas."""


class Effects(NamedTuple):
    kl: Float[Tensor, " batch"]
    dlogp: Float[Tensor, " batch"]
    acc_drop: Float[Tensor, " batch"]


def effects(
    clean_logits: Float[Tensor, "batch d_vocab"],
    ablated_logits: Float[Tensor, "batch d_vocab"],
    target: Int[Tensor, " batch"],
) -> Effects:
    """Per-example effect of an intervention, computed in fp32."""
    lp_c = clean_logits.float().log_softmax(-1)
    lp_a = ablated_logits.float().log_softmax(-1)
    kl = (lp_c.exp() * (lp_c - lp_a)).sum(-1).clamp(min=0.0)  # clamp fp rounding below 0
    t = target.to(lp_c.device)[:, None]
    dlogp = (lp_c.gather(-1, t) - lp_a.gather(-1, t))[:, 0]
    acc_drop = (lp_c.argmax(-1) == t[:, 0]).float() - (lp_a.argmax(-1) == t[:, 0]).float()
    return Effects(kl=kl, dlogp=dlogp, acc_drop=acc_drop)


def stack_effects(e: Effects) -> Float[Tensor, "metric batch"]:
    return torch.stack([e.kl, e.dlogp, e.acc_drop])
