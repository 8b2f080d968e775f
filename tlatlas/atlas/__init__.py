"""The causal atlas: ablation of each layer's components, by family and position.

- :mod:`~tlatlas.atlas.ablation`: zero / mean / resample replacements (pure functions);
- :mod:`~tlatlas.atlas.config`: components, hook points, :class:`AtlasConfig`;
- :mod:`~tlatlas.atlas.engine`: the batch engine every sweep starts from (and its
  out-of-memory retry); :mod:`~tlatlas.atlas.batching`: batch sizes from a memory budget;
- :mod:`~tlatlas.atlas.sweep`: the exact and naive sweeps, reference statistics;
- :mod:`~tlatlas.atlas.sums`: mergeable sums and the means read from them;
- :mod:`~tlatlas.atlas.attribution`: the gradient estimate;
- :mod:`~tlatlas.atlas.estimators`: integrated gradients along the ablation path, the
  first-order bound, GradDrop;
- :mod:`~tlatlas.atlas.verify`: estimate, then verify the top of every ranking exactly;
- :mod:`~tlatlas.atlas.estimate_spec`, :mod:`~tlatlas.atlas.verify_spec`: what an estimate
  and a verify run are (configs), apart from their computation;
  :mod:`~tlatlas.atlas.methods`: the estimating methods, imported by name when a build
  uses them (so an experiment block's code version, which hashes its imports, does not
  cover them: the exact atlas is not recomputed when an estimator changes);
- :mod:`~tlatlas.atlas.posmap`: per-prompt position maps;
- :mod:`~tlatlas.atlas.hubs`: the hub and its stability;
- :mod:`~tlatlas.atlas.store`: atlas files; :mod:`~tlatlas.atlas.pipeline`: suite to file;
- :mod:`~tlatlas.atlas.distributed`: the same sweep under ``torchrun``.
"""

from tlatlas.atlas.config import (
    COMPONENT_HOOKS,
    COMPONENTS,
    POS_COMPONENTS,
    AtlasConfig,
    Method,
    atlas_hook_names,
)
from tlatlas.atlas.engine import CleanBatch, clean_batches, family_batches
from tlatlas.atlas.hubs import HubSummary, hub_summary, seed_spread
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import (
    Atlas,
    AtlasMeta,
    find_atlases,
    load_atlas,
    merge_atlases,
    save_atlas,
)
from tlatlas.atlas.sums import AtlasSums, mean_effect, offset_effect, role_effect
from tlatlas.atlas.sweep import compute_atlas_sums, reference_stats

__all__ = ["COMPONENTS", "COMPONENT_HOOKS", "POS_COMPONENTS", "Atlas", "AtlasConfig", "AtlasMeta",
           "AtlasSums", "CleanBatch", "HubSummary", "Method", "SuiteSpec", "atlas_hook_names",
           "build_atlas", "clean_batches", "compute_atlas_sums", "family_batches",
           "find_atlases", "hub_summary", "load_atlas", "mean_effect", "merge_atlases",
           "offset_effect", "reference_stats", "role_effect", "save_atlas", "seed_spread"]
