"""Block Influence (ShortGPT): how much a block changes the residual stream.

BI(L) = 1 - mean cos(resid_pre[L], resid_post[L]) over real token positions. A cheap,
label-free layer ranking: the baseline the atlas's causal ranking has to beat.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tlatlas.atlas.engine import clean_batches
from tlatlas.hooks import hook_name
from tlatlas.tasks import Example


def block_influence(model, examples: Sequence[Example], *, batch_size: int = 8
                    ) -> Float[Tensor, " layer"]:
    """BI per layer, averaged over every real position of ``examples``."""
    n = model.n_layers
    names = [hook_name(layer, f"hook_resid_{s}") for layer in range(n) for s in ("pre", "post")]
    total = torch.zeros(n, dtype=torch.float64)
    count = 0
    for cb in clean_batches(model, examples, names, batch_size=batch_size):
        batch, clean = cb.batch, cb.clean
        mask = batch.mask.to(model.device)
        for layer in range(n):
            cos = torch.nn.functional.cosine_similarity(
                clean.acts[hook_name(layer, "hook_resid_pre")].float(),
                clean.acts[hook_name(layer, "hook_resid_post")].float(), dim=-1)
            total[layer] += float((1 - cos)[mask].double().sum())
        count += int(mask.sum())
    return total / max(count, 1)
