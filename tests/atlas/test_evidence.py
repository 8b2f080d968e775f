"""Per-example effects, position policies, correct-only scoring and the hub's evidence."""

from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.ablation import ablation_mask, check_policy, write_hook
from tlatlas.atlas.config import AtlasConfig
from tlatlas.atlas.hubs import hub_evidence, hub_summary
from tlatlas.atlas.sums import AtlasSums
from tlatlas.atlas.sweep import compute_atlas_sums, correct_examples
from tlatlas.errors import InvalidInputError
from tlatlas.metrics import METRICS
from tlatlas.tasks import build_suite
from tlatlas.tokens import ROLE_BOS, encode_batch


@pytest.fixture(scope="module")
def examples():
    return list(build_suite("synthetic", seed=11, per_family=3, families=["ioi", "code", "json"]))


def test_per_example_rows_average_to_the_stored_sums(tiny_models, examples):
    sums = compute_atlas_sums(tiny_models["llama"], examples,
                              AtlasConfig(batch_size=3, positions=True))
    t = sums.tensors
    n = len(examples)
    assert t["example.layer"].shape == (len(METRICS), 3, 3, n)
    assert sorted(t["example.id"].tolist()) == sorted(ex.uid for ex in examples)
    for f in range(len(sums.families)):
        rows = t["example.family"] == f
        assert int(rows.sum()) == int(t["count"][f])
        assert torch.allclose(t["example.layer"][..., rows].double().sum(-1), t["layer.sum"][..., f],
                              atol=1e-4)
        assert torch.allclose(t["example.clean_logp"][rows].double().sum(), t["clean.logp"][f],
                              atol=1e-4)
    # an example's role mean times its positions of that role adds up to role.sum
    assert torch.isfinite(t["example.role"][..., 2, :]).all()  # every example has a last token


def test_position_policies_leave_the_other_positions_alone(tiny_models, examples):
    batch = encode_batch(examples[:3], tiny_models["llama"].tokenizer)
    act = torch.randn(*batch.tokens.shape, 8)
    value = torch.full_like(act, 7.0)
    bos = batch.roles == ROLE_BOS
    no_bos = write_hook(value, ablation_mask(batch.roles, "all-but-bos"))(act)
    assert torch.equal(no_bos[bos], act[bos])
    assert (no_bos[batch.mask & ~bos] == 7.0).all()
    only_bos = write_hook(value, ablation_mask(batch.roles, "bos-only"))(act)
    assert torch.equal(only_bos[~bos], act[~bos]) and (only_bos[bos] == 7.0).all()
    with pytest.raises(InvalidInputError, match="position policy"):
        check_policy("nobos")


def test_mean_ablation_of_bos_alone_changes_nothing(tiny_models, examples):
    """BOS's activation is the same in every prompt, so its reference mean is itself."""
    from tlatlas.atlas.config import atlas_hook_names
    from tlatlas.atlas.sweep import reference_stats

    model = tiny_models["qwen2"]
    ref = list(build_suite("synthetic", seed=5, per_family=2, families=["ioi", "code", "json"]))
    means = reference_stats(model, ref, atlas_hook_names(range(model.n_layers), False)[0])
    cfg = AtlasConfig(ablation="mean", batch_size=3)
    bos = compute_atlas_sums(model, examples, replace(cfg, positions_ablated="bos-only"),
                             means=means)
    assert float(bos.tensors["example.layer"][0].abs().max()) < 1e-4
    full = compute_atlas_sums(model, examples, cfg, means=means)
    rest = compute_atlas_sums(model, examples, replace(cfg, positions_ablated="all-but-bos"),
                              means=means)
    assert torch.allclose(full.tensors["example.layer"], rest.tensors["example.layer"], atol=1e-4)
    zero_bos = compute_atlas_sums(model, examples, AtlasConfig(batch_size=3,
                                                               positions_ablated="bos-only"))
    assert float(zero_bos.tensors["example.layer"][0].max()) > 1e-3  # zero at BOS is not a no-op


def test_correct_only_keeps_exactly_the_examples_answered_right(tiny_models):
    model = tiny_models["llama"]
    exs = list(build_suite("synthetic", seed=2, per_family=6, families=["sequence", "antonym"]))
    fams = ("sequence", "antonym")
    kept, seen = correct_examples(model, exs, fams, batch_size=4)
    truth = []
    for ex in exs:
        batch = encode_batch([ex], model.tokenizer)
        with torch.inference_mode():
            top = model.bridge(batch.tokens)[0, batch.scored_pos[0]].argmax()
        truth.append(int(top) == int(batch.target[0]))
    assert [ex for ex, ok in zip(exs, truth, strict=True) if ok] == sorted(kept, key=exs.index)
    assert seen["seen.count"].tolist() == [6.0, 6.0]
    assert int(seen["seen.correct"].sum()) == sum(truth)
    sums = compute_atlas_sums(model, exs, AtlasConfig(batch_size=4, correct_only=True),
                              families=fams)
    assert int(sums.tensors["count"].sum()) == len(kept)
    assert torch.equal(sums.tensors["seen.count"], seen["seen.count"])


def _planted(n_layers=5, hub=2, per_family=40, gap=1.0, noise=0.5, seed=0):
    """An atlas whose block KL is ``gap`` higher at ``hub`` in every family, plus noise."""
    families = ("a", "b", "c")
    gen = torch.Generator().manual_seed(seed)
    n = per_family * len(families)
    fam = torch.arange(len(families)).repeat_interleave(per_family)
    layer = torch.rand(len(METRICS), 3, n_layers, n, generator=gen) * noise
    layer[:, :, hub] += gap
    sums = AtlasSums.empty(families, range(n_layers), positions=False, max_offset=4)
    onehot = torch.nn.functional.one_hot(fam, len(families)).double()
    sums.tensors["layer.sum"] += torch.einsum("mcln,nf->mclf", layer.double(), onehot)
    sums.tensors["count"] += onehot.sum(0)
    sums.tensors.update({"example.layer": layer, "example.family": fam,
                         "example.id": torch.arange(n), "example.clean_correct": torch.ones(n),
                         "example.clean_logp": torch.zeros(n)})
    return sums


def test_hub_evidence_is_sure_of_a_clear_hub_and_unsure_of_a_tie():
    clear = hub_evidence(_planted(gap=1.0), replicates=300)
    assert clear.hub_layer == 2 and clear.hub_probability[2] == 1.0
    assert sum(clear.hub_probability) == pytest.approx(1.0)
    assert clear.hub_margin.ci_low > 0.5 and clear.family_agreement.ci_low == 1.0
    assert all(lo <= e <= hi for lo, e, hi in zip(clear.layer_ci_low, clear.layer_estimate,
                                                  clear.layer_ci_high, strict=True))
    assert clear.layer_estimate == pytest.approx(hub_summary(_planted(gap=1.0)).layer_effect)
    tie = hub_evidence(_planted(gap=0.0, noise=1.0), replicates=300)
    assert max(tie.hub_probability) < 0.9
    assert tie.hub_margin.ci_low <= 0.05  # a tie's margin is not clear of zero
    again = hub_evidence(_planted(gap=0.0, noise=1.0), replicates=300)
    assert again.hub_probability == tie.hub_probability  # seeded


def test_small_families_are_left_out_of_the_hub_and_old_atlases_have_no_intervals():
    sums = _planted(per_family=3)
    sums.tensors["count"][1] = 1  # pretend family b had one example scored
    h = hub_summary(sums, min_examples=2)
    assert set(h.family_argmax) == {"a", "c"} and "b" in h.excluded
    old = AtlasSums(families=sums.families, layers=sums.layers, max_offset=4,
                    tensors={k: v for k, v in sums.tensors.items() if not k.startswith("example.")})
    with pytest.raises(InvalidInputError, match="no intervals"):
        hub_evidence(old)
