"""Hub detection and its spread over seeds."""

from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import hub_summary, seed_spread
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas


def test_hubs_and_seed_spread(tiny_models):
    model = tiny_models["llama"]
    summaries = [hub_summary(build_atlas(model, SuiteSpec(per_family=2, seed=s),
                                         AtlasConfig(batch_size=2)).sums) for s in (1, 2)]
    for h in summaries:
        assert h.layer_effect[h.hub_layer] == max(h.layer_effect)
        assert 0 <= h.family_agreement <= 1 and len(h.family_argmax) == 12
    spread = seed_spread([1, 2], summaries)
    assert spread.hubs == tuple(h.hub_layer for h in summaries)
    narrow = hub_summary(build_atlas(model, SuiteSpec(per_family=2, seed=1),
                                     AtlasConfig(batch_size=2)).sums,
                         families=["json", "factual", "code", "arithmetic"])
    assert len(narrow.family_argmax) == 4
