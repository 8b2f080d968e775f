"""Study (d), atlas stability during training: does fine-tuning move the hub?

Train an atlas-guided LoRA on one family (bridges.train) and, at checkpoints (numbers of
optimizer steps done, e.g. 0, N/2, N), merge the adapter into a copy of the model, boot a
TransformerBridge on the merged copy, and build its atlas on a fixed suite
(tlatlas.pipeline.build_atlas). Reported per checkpoint: the hub, family agreement, each
family's argmax layer, the family-averaged block effect of every layer, and the Spearman
correlation of that layer-effect vector with the step-0 atlas's, and the *lock-in margin*:
how far the step-0 hub's effect lies above the best other layer's at that checkpoint, with
a bootstrap CI over the atlas's examples (:func:`layer_margin`; positive = the step-0 hub
is still the hub).

At step 0 the adapter is the identity (LoRA's B starts at 0), so the step-0 atlas is the
base model's atlas, bit for bit (tested); any later change is the training's.

Smoke size (CPU, SmolLM2-135M, a few minutes)::

    tlatlas study stability --atlas docs/results/studies/atlas/seed42 --families json \\
        --checkpoints 0 10 20 --atlas-families json factual --atlas-per-family 1 --out st.json
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace

import torch
from torch import Tensor

from bridges.export import plan_lora
from bridges.train import TrainConfig, evaluate, split, train_lora
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import family_mean_replicates, hub_summary
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.sums import AtlasSums
from tlatlas.errors import InvalidInputError
from tlatlas.models import LoadedModel
from tlatlas.stats import DEFAULT_REPLICATES, Interval, percentile_interval, spearman

DEFAULT_TRAIN = TrainConfig(steps=20)


def loaded_from_hf(model: LoadedModel, hf_model, *, label: str) -> LoadedModel:
    """A LoadedModel whose bridge wraps ``hf_model`` (same architecture as ``model``).

    The fingerprint keeps ``model``'s and appends ``label`` to its weights hash, so an
    atlas of the adapted model is never mistaken for the base model's.
    """
    from tlatlas.models import boot_bridge, weights_dir

    hf_model.eval()
    dev = next(hf_model.parameters()).device
    bridge = boot_bridge(weights_dir(model.name), hf_model, model.tokenizer, dev)
    fingerprint = replace(model.fingerprint,
                          weights_sha256=f"{model.fingerprint.weights_sha256}+{label}")
    return LoadedModel(name=f"{model.name}+{label}", bridge=bridge, hf_model=hf_model,
                       tokenizer=model.tokenizer, fingerprint=fingerprint, path=model.path)


def merged_copy(peft_model):
    """A plain HF model: a deep copy of ``peft_model`` with its adapters merged in."""
    return copy.deepcopy(peft_model).merge_and_unload()


def layer_margin(atlas_sums: AtlasSums, layer: int, *, metric: str = "kl",
                 component: str = "block", replicates: int = DEFAULT_REPLICATES,
                 seed: int = 0) -> Interval:
    """How far ``layer``'s family-averaged effect lies above the best *other* layer's, with
    a bootstrap interval over examples resampled within families (``n``: examples).
    Positive: ``layer`` is the hub; its CI above 0: clearly so."""
    sums = atlas_sums
    effect = sums.example_effect(metric, component)  # [layer example]
    family = sums.tensors["example.family"]
    gen = torch.Generator().manual_seed(seed)
    observed, reps = family_mean_replicates(effect, family, len(sums.families),
                                            replicates=replicates, generator=gen)
    i = sums.layers.index(layer)

    def margin(per_layer: Tensor) -> Tensor:  # [..., layer] -> [...]
        others = per_layer.clone()
        others[..., i] = -torch.inf
        return per_layer[..., i] - others.max(-1).values

    obs = margin(observed.nanmean(1))
    lo, hi = percentile_interval(margin(reps.nanmean(2))[:, None])
    return Interval(estimate=float(obs), ci_low=float(lo[0]), ci_high=float(hi[0]),
                    n=int(effect.shape[1]))


def checkpoint_row(atlas_sums: AtlasSums, steps: int, reference: Sequence[float] | None,
                   step0_hub: int | None = None) -> dict:
    """Hub, agreement and layer effects of one checkpoint's atlas (KL of block ablation),
    and the margin of the step-0 hub over the best other layer here (with its CI)."""
    hub = hub_summary(atlas_sums)
    effect = torch.tensor(hub.layer_effect)
    rho = 1.0 if reference is None else spearman(effect, torch.tensor(list(reference)))
    row = {"steps": steps, "hub_layer": hub.hub_layer, "hub_effect": hub.hub_effect,
           "family_agreement": hub.family_agreement, "family_argmax": hub.family_argmax,
           "least_layer": hub.least_layer, "layer_effect": list(hub.layer_effect),
           "spearman_vs_step0": rho}
    if atlas_sums.has_examples and len(atlas_sums.layers) > 1:
        h0 = hub.hub_layer if step0_hub is None else step0_hub
        row["step0_hub_margin"] = layer_margin(atlas_sums, h0).to_dict()
    return row


def stability_study(source, model: LoadedModel, atlas_sums: AtlasSums, *, family: str,
                    checkpoints: Sequence[int], top_k: int = 4, modules: Sequence[str] = ("o",),
                    rank: int = 8, seed: int = 0, train: TrainConfig = DEFAULT_TRAIN,
                    spec: SuiteSpec | None = None, atlas_config: AtlasConfig | None = None,
                    on_run: Callable[[str], None] | None = None,
                    on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train an atlas-guided LoRA on ``family``; the atlas of the adapted model at checkpoints.

    ``model`` is a LoadedModel of ``source`` (fp32 for bit-exact step 0); ``atlas_sums``
    chooses the adapted layers (its ``top_k`` most important). Training runs
    ``max(checkpoints)`` steps. ``spec`` is the suite each checkpoint's atlas is built on
    (default: 2 per family of ``atlas_sums``'s families, seed 42); ``atlas_config``
    defaults to zero ablation, exact method.
    """
    from tlatlas.models import load_hf_model

    points = sorted(set(checkpoints))
    if not points or points[0] < 0:
        raise InvalidInputError(f"checkpoints must be step counts >= 0, got {list(checkpoints)}")
    spec = spec or SuiteSpec(per_family=2, families=atlas_sums.families)
    atlas_config = atlas_config or AtlasConfig()
    config = replace(train, family=family, seed=seed, steps=points[-1])
    plan = plan_lora(model, "atlas", atlas=atlas_sums, top_k=top_k, modules=modules, rank=rank)
    held = split(config)[1]
    rows: list[dict] = []

    def checkpoint(peft_model, steps_done: int) -> None:
        if steps_done not in points:
            return
        if on_run is not None:
            on_run(f"atlas at step {steps_done}")
        adapted = loaded_from_hf(model, merged_copy(peft_model), label=f"lora@{steps_done}")
        atlas = build_atlas(adapted, spec, atlas_config)
        row = checkpoint_row(atlas.sums, steps_done, rows[0]["layer_effect"] if rows else None,
                             rows[0]["hub_layer"] if rows else None)
        row["heldout_loss"], row["exact_match"] = evaluate(peft_model, model.tokenizer, held)
        peft_model.train()
        rows.append(row)
        del adapted, atlas

    base = load_hf_model(source, device=model.device, dtype=model.dtype,
                         attn_implementation="eager")  # as load_model boots it
    result = train_lora(source, plan, config, base=base, on_step=on_step, after_step=checkpoint)
    hubs = [r["hub_layer"] for r in rows]
    return {"rows": rows, "family": family, "seed": seed, "checkpoints": points,
            "hubs": hubs, "hub_moved": len(set(hubs)) > 1, "plan": plan.to_dict(),
            "train": {**asdict(config), "losses": list(result.losses)},
            "atlas_suite": asdict(spec), "atlas_config": asdict(atlas_config)}
