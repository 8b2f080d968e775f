import math

import pytest
import torch

from tlatlas.atlas.ablation import RoleStats, position_mask, replacement, write_hook
from tlatlas.atlas.attribution import attribution_effects, attribution_sums
from tlatlas.atlas.config import COMPONENT_HOOKS, COMPONENTS, POS_COMPONENTS, AtlasConfig
from tlatlas.atlas.estimators import coarse_log_probs
from tlatlas.atlas.sums import mean_effect
from tlatlas.atlas.sweep import compute_atlas_sums, reference_stats
from tlatlas.hooks import hook_name
from tlatlas.metrics import METRICS
from tlatlas.models.forward import clean_run
from tlatlas.stats import spearman
from tlatlas.tasks import build_suite
from tlatlas.tokens import encode_batch

KL, DLOGP, ACC = (METRICS.index(m) for m in ("kl", "dlogp", "acc_drop"))


@pytest.fixture(scope="module")
def suite():
    return build_suite("synthetic", per_family=3)


def _one_family_batch(model, suite, n=4):
    fam = suite.families[0]
    exs = [ex for ex in suite.examples if ex.family == fam][:n]
    return encode_batch(exs, model.tokenizer)


def _exact_dlogp(model, batch, hooks) -> torch.Tensor:
    """log p_clean - log p_intervened at the scored positions, via the bridge (fp32)."""
    tokens = batch.tokens.to(model.device)
    rows = torch.arange(len(batch))
    tgt = batch.target[:, None]
    with torch.no_grad():
        clean = model.bridge(tokens)[rows, batch.scored_pos].log_softmax(-1).gather(-1, tgt)
        hooked = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        hooked = hooked[rows, batch.scored_pos].log_softmax(-1).gather(-1, tgt)
    return (clean - hooked)[:, 0].double()


# --------------------------------------------------------------------------- first order


@pytest.mark.parametrize(("component", "layer"),
                         [("attn", 1), ("mlp", 1), ("block", 1), ("block", 2), ("attn", 2)])
def test_layer_estimate_is_exact_to_first_order(tiny_models, suite, component, layer):
    """Ablating to a + eps (r - a) changes log p by eps * estimate + O(eps^2).

    ``block`` fails this if it is taken as the sum of the attn and mlp estimates.
    """
    model, eps = tiny_models["llama"], 1e-3
    batch = _one_family_batch(model, suite)
    _, layer_e, _ = attribution_effects(model, batch, [layer])
    est = layer_e[COMPONENTS.index(component), 0].double()
    names = [hook_name(layer, h) for h in COMPONENT_HOOKS[component]]
    clean = clean_run(model, batch.tokens, batch.scored_pos, names)
    mask = position_mask(batch.roles, "all")
    hooks = []
    for n in names:
        a = clean.acts[n]
        r = replacement("zero", a, batch.roles)
        hooks.append((n, write_hook(a + eps * (r - a), mask)))
    exact = _exact_dlogp(model, batch, hooks)
    assert est.abs().min() > 1e-2  # the test has signal
    torch.testing.assert_close(eps * est, exact, rtol=0.05, atol=1e-6)


@pytest.mark.parametrize("component", POS_COMPONENTS)
def test_position_estimate_is_exact_to_first_order(tiny_models, suite, component):
    model, layer, eps, pos = tiny_models["llama"], 0, 1e-3, 1
    batch = _one_family_batch(model, suite)
    _, _, pos_e = attribution_effects(model, batch, [layer], positions=True)
    est = pos_e[POS_COMPONENTS.index(component), 0, :, pos].double()
    names = [hook_name(layer, h) for h in COMPONENT_HOOKS[component]]
    clean = clean_run(model, batch.tokens, batch.scored_pos, names)
    hooks = [(n, write_hook((1 - eps) * clean.acts[n], position_mask(batch.roles, pos)))
             for n in names]
    exact = _exact_dlogp(model, batch, hooks)
    assert est.abs().min() > 1e-3
    torch.testing.assert_close(eps * est, exact, rtol=0.05, atol=1e-6)
    # pads (after each row's scored position) are NaN, real positions are not
    real = batch.roles != -1
    assert torch.isnan(pos_e[:, :, ~real]).all() and not torch.isnan(pos_e[:, :, real]).any()


def test_block_position_map_sums_to_layer_map(tiny_models, suite):
    """The estimate is linear: one position at a time adds up to all positions at once."""
    model = tiny_models["qwen2"]
    batch = _one_family_batch(model, suite)
    _, layer_e, pos_e = attribution_effects(model, batch, [0, 2], positions=True)
    torch.testing.assert_close(pos_e[POS_COMPONENTS.index("block")].nansum(-1),
                               layer_e[COMPONENTS.index("block")], rtol=1e-4, atol=1e-5)


def test_gradients_leave_parameters_alone(tiny_models, suite):
    model = tiny_models["llama"]
    attribution_effects(model, _one_family_batch(model, suite), [0])
    assert all(p.grad is None for p in model.hf_model.parameters())


# --------------------------------------------------------------------------- the atlas


def test_layout_matches_exact_atlas(tiny_models, suite):
    model = tiny_models["llama"]
    exs = suite.subset(suite.families[:2]).examples  # the exact position map is slow on CPU
    exact = compute_atlas_sums(model, exs, AtlasConfig(ablation="zero", positions=True, max_offset=8))
    attr = attribution_sums(model, exs, positions=True, max_offset=8)
    assert (attr.families, attr.layers, attr.max_offset) == (exact.families, exact.layers, 8)
    assert attr.tensors.keys() == exact.tensors.keys()
    for key, t in exact.tensors.items():
        assert attr.tensors[key].shape == t.shape, key
        assert attr.tensors[key].dtype == t.dtype, key
    for key in ("count", "clean.correct", "role.count", "offset.count"):
        torch.testing.assert_close(attr.tensors[key], exact.tensors[key])
    torch.testing.assert_close(attr.tensors["clean.logp"], exact.tensors["clean.logp"],
                               rtol=1e-4, atol=1e-4)
    for key in ("layer.sum", "role.sum", "offset.sum"):
        t = attr.tensors[key]
        assert torch.isnan(t[KL]).all() and torch.isnan(t[ACC]).all(), key
        assert torch.isfinite(t[DLOGP]).all(), key
    assert attr.has_positions
    # mergeable like any atlas
    assert attr.merged(attr).tensors["count"].sum() == 2 * len(exs)


def test_spearman_against_exact_atlas(tiny_models, suite, record_property):
    model = tiny_models["llama"]
    exact = compute_atlas_sums(model, suite.examples, AtlasConfig(ablation="zero"))
    attr = attribution_sums(model, suite.examples)
    e = torch.stack([mean_effect(exact, "dlogp", c) for c in COMPONENTS])
    a = torch.stack([mean_effect(attr, "dlogp", c) for c in COMPONENTS])
    rho = spearman(a, e)
    record_property("spearman_tiny_llama_zero", rho)
    assert math.isfinite(rho) and -1.0 <= rho <= 1.0
    # kl is NaN in the estimate, so its Spearman has no pairs
    with pytest.raises(ValueError, match="two pairs"):
        spearman(mean_effect(attr, "kl"), mean_effect(exact, "kl"))


def test_resample_is_rejected(tiny_models, suite):
    with pytest.raises(ValueError, match="resample"):
        attribution_sums(tiny_models["llama"], suite.examples, ablation="resample")


def test_mean_ablation_uses_the_given_means(tiny_models, suite):
    model = tiny_models["qwen2"]
    exs = suite.examples
    names = [hook_name(layer, h) for layer in range(model.n_layers)
             for h in ("hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    zero_means = {n: RoleStats.zeros(model.d_model) for n in names}
    with pytest.raises(ValueError, match="reference"):
        attribution_sums(model, exs, ablation="mean")
    zero = attribution_sums(model, exs, positions=True)
    mean0 = attribution_sums(model, exs, ablation="mean", means=zero_means, positions=True)
    for key in ("layer.sum", "role.sum", "offset.sum"):
        torch.testing.assert_close(mean0.tensors[key], zero.tensors[key], equal_nan=True)
    ref = build_suite("synthetic", seed=1, per_family=2).examples
    stats = reference_stats(model, ref, names)
    real = attribution_sums(model, exs, ablation="mean", means=stats, positions=True)
    assert not torch.allclose(real.tensors["layer.sum"][DLOGP], zero.tensors["layer.sum"][DLOGP])
    with pytest.raises(KeyError, match="reference means"):
        attribution_sums(model, exs, ablation="mean", means={names[0]: stats[names[0]]})


def test_layers_and_families_are_honoured(tiny_models, suite):
    model = tiny_models["llama"]
    fams = tuple(reversed(suite.families))
    seen = []
    full = attribution_sums(model, suite.examples, families=fams)
    sub = attribution_sums(model, suite.examples, layers=(2,), families=fams, on_batch=seen.append)
    assert sub.layers == (2,) and sub.families == fams
    assert sum(seen) == len(suite.examples)
    torch.testing.assert_close(sub.tensors["layer.sum"][DLOGP, :, 0],
                               full.tensors["layer.sum"][DLOGP, :, 2])


# --------------------------------------------------------------------------- spearman


@pytest.mark.slow
def test_spearman_on_smollm2(smollm2, record_property):
    suite = build_suite("synthetic", per_family=2)
    exs = suite.subset(suite.families[:3]).examples  # the exact atlas: ~2 min on 2 CPU cores
    exact = compute_atlas_sums(smollm2, exs, AtlasConfig(ablation="zero"))
    attr = attribution_sums(smollm2, exs)
    e = torch.stack([mean_effect(exact, "dlogp", c) for c in COMPONENTS])
    a = torch.stack([mean_effect(attr, "dlogp", c) for c in COMPONENTS])
    rho = spearman(a, e)
    record_property("spearman_smollm2_zero", rho)
    assert math.isfinite(rho)


# --------------------------------------------------------------------------- past first order


def _ablation_ctx(model, suite, ablation="zero", means=None):
    from tlatlas.atlas.engine import clean_batches
    from tlatlas.atlas.estimators import estimate_hooks
    from tlatlas.atlas.sweep import ablation_batch

    fam = suite.families[0]
    exs = [ex for ex in suite.examples if ex.family == fam]
    layers = tuple(range(model.n_layers))
    _, cached = estimate_hooks(layers, True)
    cb = next(iter(clean_batches(model, exs, cached, batch_size=8)))
    hooks = ["hook_attn_out", "hook_mlp_out", "hook_resid_post"]
    return ablation_batch(model, cb, AtlasConfig(ablation=ablation), means, layers, hooks), layers


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_ig_converges_to_the_exact_single_ablation(tiny_models, suite, ablation):
    """Each node's own path integral is exact in the limit: the error of the midpoint rule
    shrinks as steps grow, for Delta-logp and for KL (which first order cannot estimate)."""
    from tlatlas.atlas.estimators import Estimator, estimate_effects
    from tlatlas.atlas.sweep import layer_effects

    model = tiny_models["llama"]
    means = None
    if ablation == "mean":
        names = [hook_name(layer, h) for layer in range(model.n_layers)
                 for h in ("hook_attn_out", "hook_mlp_out", "hook_resid_post")]
        means = reference_stats(model, build_suite("synthetic", seed=1, per_family=2).examples,
                                names)
    ctx, layers = _ablation_ctx(model, suite, ablation, means)
    exact = layer_effects(ctx, layers, "exact")[[KL, DLOGP]].double()
    assert exact.abs().max() > 0.5  # the ablations are far from linear: the test has signal
    errors = {}
    for steps in (4, 16, 64):
        est, _ = estimate_effects(ctx, layers, Estimator(method="ig", steps=steps, max_rows=256))
        errors[steps] = (est[[KL, DLOGP]].double() - exact).abs().max().item()
    assert errors[64] < errors[16] < errors[4]
    assert errors[64] < 0.1 and errors[64] < errors[4] / 4


def test_one_step_is_the_first_order_estimate(tiny_models, suite):
    from tlatlas.atlas.estimators import FIRST_ORDER, Estimator, estimate_effects

    model = tiny_models["qwen2"]
    ctx, layers = _ablation_ctx(model, suite)
    _, layer_fo, pos_fo = attribution_effects(model, ctx.batch, layers, positions=True,
                                              positions_ablated=ctx.positions_ablated)
    for est in (FIRST_ORDER, Estimator(method="ig", steps=1)):
        layer_e, pos_e = estimate_effects(ctx, layers, est, positions=True)
        torch.testing.assert_close(layer_e[DLOGP], layer_fo, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pos_e[DLOGP], pos_fo, rtol=1e-4, atol=1e-5, equal_nan=True)
        assert torch.isnan(layer_e[KL]).all() and torch.isnan(layer_e[ACC]).all()
    joint, pos = estimate_effects(ctx, layers, Estimator(method="ig_joint", steps=4),
                                  positions=True)
    assert torch.isfinite(joint[[KL, DLOGP]]).all() and torch.isnan(joint[ACC]).all()
    real = ctx.batch.roles != -1
    assert torch.isfinite(pos[KL][:, :, real]).all() and torch.isnan(pos[KL][:, :, ~real]).all()


def test_graddrop_is_first_order_where_nothing_is_dropped(tiny_models, suite):
    """The last layer's MLP write reaches the logits through no later layer: dropping any
    layer leaves its gradient alone, so its GradDrop score is |first order|; earlier nodes
    differ."""
    from tlatlas.atlas.estimators import Estimator, estimate_effects

    model = tiny_models["llama"]
    ctx, layers = _ablation_ctx(model, suite)
    _, fo, _ = attribution_effects(model, ctx.batch, layers,
                                   positions_ablated=ctx.positions_ablated)
    gd, pos = estimate_effects(ctx, layers, Estimator(method="graddrop"), positions=True)
    mlp = COMPONENTS.index("mlp")
    torch.testing.assert_close(gd[DLOGP, mlp, -1], fo[mlp, -1].abs(), rtol=1e-4, atol=1e-5)
    assert (gd[DLOGP] >= 0).all() and not torch.allclose(gd[DLOGP, :, 0], fo[:, 0].abs())
    assert pos is not None and (pos[DLOGP].nan_to_num() >= 0).all()


def test_bound_bounds_the_first_order_term(tiny_models, suite):
    """|sum_pos (r - a) . g| <= sum_pos |r - a| |g|: the bound is never below first order."""
    from tlatlas.atlas.estimators import Estimator, estimate_effects

    model = tiny_models["qwen2"]
    ctx, layers = _ablation_ctx(model, suite)
    _, fo, fo_pos = attribution_effects(model, ctx.batch, layers, positions=True,
                                        positions_ablated=ctx.positions_ablated)
    bound, pos = estimate_effects(ctx, layers, Estimator(method="bound"), positions=True)
    assert (bound[DLOGP] >= fo.abs() - 1e-5).all()
    real = ctx.batch.roles != -1
    assert (pos[DLOGP][:, :, real] >= fo_pos[:, :, real].abs() - 1e-5).all()
    assert (bound[DLOGP] > fo.abs() + 1e-3).any()  # and not equal to it
    with pytest.raises(ValueError, match="steps"):
        Estimator(method="bound", steps=2)


# --------------------------------------------------------------------------- second order


def _moved(ctx, eps):
    """``ctx`` with every replacement moved only ``eps`` of the way from the clean value."""
    from dataclasses import replace

    return replace(ctx, values={n: ctx.clean.acts[n].to(v.dtype) + eps * (v - ctx.clean.acts[n])
                                for n, v in ctx.values.items()})


def test_fisher_is_the_second_order_kl(tiny_models, suite):
    """KL's second-order term at the clean point is 1/2 d^T F d: with every token an outcome
    of its own, ``fisher``'s relative error against the exact KL shrinks in proportion to
    the size of the ablation (the third-order remainder), on both maps."""
    from tlatlas.atlas.estimators import Estimator, estimate_effects
    from tlatlas.atlas.sweep import layer_effects, position_effects

    model = tiny_models["llama"]
    ctx, layers = _ablation_ctx(model, suite)
    full = Estimator(method="fisher", outcomes=model.fingerprint.d_vocab - 1)
    errors = {}
    for eps in (0.4, 0.1, 0.025):
        moved = _moved(ctx, eps)
        exact_l = layer_effects(moved, layers, "exact")[KL].double()
        exact_p = position_effects(moved, layers, "exact", chunk=8)[KL].double()
        est_l, est_p = estimate_effects(moved, layers, full, positions=True)
        real = ~torch.isnan(exact_p)
        assert torch.equal(real, ~torch.isnan(est_p[KL]))
        exact = torch.cat([exact_l.flatten(), exact_p[real]])
        est = torch.cat([est_l[KL].double().flatten(), est_p[KL].double()[real]])
        big = exact > exact.max() * 1e-2  # relative error where the KL is not round-off
        errors[eps] = ((est[big] - exact[big]).abs() / exact[big]).median().item()
    assert errors[0.025] < errors[0.1] < errors[0.4]
    assert errors[0.025] < 0.05 and errors[0.025] < errors[0.4] / 8


def test_fisher_bound_and_coarse_outcomes_order_the_estimates(tiny_models, suite):
    """0 <= fisher(2 outcomes) <= fisher(every token) (coarsening the output distribution
    loses Fisher information) and fisher <= fisher_bound (|g . d| <= |g| |d|), entry by
    entry on both maps; they fill the kl slot alone."""
    from tlatlas.atlas.estimators import Estimator, estimate_effects

    model = tiny_models["qwen2"]
    ctx, layers = _ablation_ctx(model, suite)
    real = ctx.batch.roles != -1
    vocab = model.fingerprint.d_vocab
    runs = {name: estimate_effects(ctx, layers, Estimator(method=method, outcomes=n),
                                   positions=True)
            for name, method, n in [("coarse", "fisher", 2), ("full", "fisher", vocab - 1),
                                    ("bound", "fisher_bound", vocab - 1)]}
    lay = {k: v[0][KL] for k, v in runs.items()}
    pos = {k: v[1][KL][:, :, real] for k, v in runs.items()}
    for m in (lay, pos):
        assert (m["coarse"] >= 0).all()
        assert (m["coarse"] <= m["full"] * (1 + 1e-4) + 1e-7).all()
        assert (m["full"] <= m["bound"] * (1 + 1e-4) + 1e-7).all()
        assert (m["coarse"] < m["full"] * 0.99).any() and (m["full"] < m["bound"] * 0.99).any()
    for layer_e, pos_e in runs.values():
        assert torch.isnan(layer_e[[DLOGP, ACC]]).all() and torch.isnan(pos_e[[DLOGP, ACC]]).all()
    with pytest.raises(ValueError, match="outcomes"):
        Estimator(method="fisher", outcomes=0)
    with pytest.raises(ValueError, match="steps"):
        Estimator(method="fisher_bound", steps=2)
    est = Estimator(method="fisher_bound", outcomes=3)
    assert Estimator.from_dict(est.to_dict()) == est and est.metrics == ("kl",)


def test_coarse_outcomes_survive_a_masked_vocabulary():
    # Finite logits: the top tokens' log-probabilities, then the rest's.
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 1.0]], requires_grad=True)
    lq = coarse_log_probs(logits, 2)
    full = logits.detach().log_softmax(-1)[0]
    assert torch.allclose(lq[0, :2], full[[0, 4]])
    assert torch.allclose(lq[0, 2], full[[1, 2, 3]].logsumexp(0))
    # Every token outside the top two masked (-inf): the rest has probability 0. The
    # coarse distribution still sums to 1 and the Fisher weights' gradient is finite.
    masked = torch.tensor([[2.0, float("-inf"), float("-inf"), float("-inf"), 1.0]],
                          requires_grad=True)
    for outcomes in (2, 4):
        lq = coarse_log_probs(masked, outcomes)
        assert torch.allclose(lq.exp().sum(-1), torch.ones(1))
        w = lq.detach().exp().sqrt()
        (grad,) = torch.autograd.grad((w * lq).sum(), masked)
        assert torch.isfinite(grad).all()
        assert grad[0, 1:4].abs().max() == 0
