"""Estimate, then verify: exact entries equal the exact path, the rule, the file marks."""

from dataclasses import replace

import pytest
import torch

from tlatlas.atlas.config import COMPONENTS, AtlasConfig
from tlatlas.atlas.engine import clean_batches
from tlatlas.atlas.entries import entry_forwards, layer_entry_effects, position_cell_effects
from tlatlas.atlas.estimators import Estimator, estimate_hooks
from tlatlas.atlas.exactness import exactness
from tlatlas.atlas.hubs import hub_evidence, hub_summary, verified_layer_mask, verified_layers
from tlatlas.atlas.methods import take_loaded
from tlatlas.atlas.pipeline import SuiteSpec, build_atlas
from tlatlas.atlas.store import load_atlas, merge_atlases, save_atlas
from tlatlas.atlas.sums import VERIFY_KEYS
from tlatlas.atlas.sweep import (
    ablation_batch,
    compute_atlas_sums,
    layer_effects,
    position_effects,
    reference_stats,
)
from tlatlas.atlas.verify import (
    VerifyConfig,
    bound_rule,
    family_average,
    screen_examples,
    settle,
    top_k_settled,
    verify_layers,
    verify_sums,
)
from tlatlas.metrics import METRICS
from tlatlas.tasks import build_suite

KL, DLOGP, ACC = (METRICS.index(m) for m in ("kl", "dlogp", "acc_drop"))
HOOKS = ["hook_attn_out", "hook_mlp_out", "hook_resid_post"]


@pytest.fixture(scope="module")
def examples():
    return list(build_suite("synthetic", seed=3, per_family=3, families=["ioi", "code"]))


def _ctx(model, examples, config=None):
    config = config or AtlasConfig()
    layers = tuple(range(model.n_layers))
    _, cached = estimate_hooks(layers, True)
    cb = next(iter(clean_batches(model, examples, cached, batch_size=8)))
    return ablation_batch(model, cb, config, None, layers, HOOKS), layers


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("values", "k", "m", "settled"), [
    ([5, 4, 3, 2, 1, 0], 2, 2, True),     # the last two never entered the top 2
    ([5, 4, 3, 9, 1, 0], 2, 2, True),     # 9 entered, but three entries before the last two
    ([5, 4, 3, 1, 9, 0], 2, 2, False),    # 9 entered within the window
    ([5, 4, 3], 2, 2, False),             # fewer than k + m verified
    ([1, 1, 1, 1], 2, 2, True),           # ties go to the entry verified first
    ([0, 1, 2, 3], 1, 3, False),          # each new entry beats the last
])
def test_top_k_settled(values, k, m, settled):
    assert top_k_settled(torch.tensor(values, dtype=torch.float), k, m) is settled


def test_an_understated_top_entry_keeps_the_bound_open():
    score = torch.tensor([10.0, 5.0, 4.9, 4.8, 1.0])
    exact = torch.tensor([10.0, 20.0, 1.0, 1.0, 15.0])

    def run(s: torch.Tensor) -> dict[int, float]:
        order = torch.sort(s, descending=True, stable=True).indices.tolist()
        got, _ = settle([(order, 2, 0)], lambda ids: exact[ids], 1, bound_rule(s))
        return got

    # entry 1 is 4x under-stated and in the top 2: 4 x 4.8 (entry 3's estimate) >= 10 (the
    # 2nd exact value), so entry 3 is verified too; then 4 x 1.0 < 10 and the rule stops,
    # missing entry 4 (exact 15): an estimated bound, not a guarantee
    assert sorted(run(score)) == [0, 1, 2, 3]
    # with an estimate proportional to the exact values the first window settles it
    assert sorted(run(exact / 2)) == [0, 1, 4]


def test_config_validation():
    with pytest.raises(ValueError, match="top_k"):
        VerifyConfig(top_k=0)
    with pytest.raises(ValueError, match="cheaper"):
        VerifyConfig(estimator=Estimator(method="ig", steps=4))
    with pytest.raises(ValueError, match="steps"):
        Estimator(method="graddrop", steps=2)
    assert VerifyConfig(top_k=3).window == 6 and VerifyConfig(top_k=3, patience=1).window == 1
    with pytest.raises(ValueError, match="screen"):
        VerifyConfig(screen=-1)
    with pytest.raises(TypeError, match="rule"):  # checked against its Literal type
        VerifyConfig(rule="hope")
    # the bound rule's rounds default to top_k entries, the patience rule's to 2 top_k
    assert VerifyConfig(top_k=3, rule="bound").window == 3


def test_screen_examples_takes_the_first_of_each_family(examples):
    picked = screen_examples(examples, ("ioi", "code"), 2)
    assert [e.family for e in picked].count("ioi") == 2 == [e.family for e in picked].count("code")
    assert picked == [e for e in examples if e in picked]  # the suite's order
    firsts = {f: [e for e in examples if e.family == f][:2] for f in ("ioi", "code")}
    assert all(e in firsts[e.family] for e in picked)
    assert len(screen_examples(examples, ("ioi", "code"), 99)) == len(examples)


# --------------------------------------------------------------------------- exact entries


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_the_exact_order_settles_after_its_first_window_and_screens_fill_the_rest(
        tiny_models, examples, ablation):
    model = tiny_models["llama"]
    config = AtlasConfig(batch_size=4, ablation=ablation)
    ref = list(build_suite("synthetic", seed=9, per_family=2, families=["ioi", "code"]))
    means = reference_stats(model, ref, [f"blocks.{layer}.{h}" for layer in
                                         range(model.n_layers) for h in HOOKS]) \
        if ablation == "mean" else None
    exact = compute_atlas_sums(model, examples, config, means=means)
    e = exact.tensors
    fams, layers = exact.families, exact.layers
    kl = family_average(e["layer.sum"][KL], e["count"])  # [component layer]
    n_c, n_l = kl.shape
    block = COMPONENTS.index("block")
    # ordered by the exact map itself, the first top_k verified are the exact top_k, so both
    # rules stop after the first window: top 2 + 1 of the pooled ranking, top 1 + 1 of block's
    pooled = set(torch.sort(kl.flatten(), descending=True, stable=True).indices[:3].tolist())
    blocks = {block * n_l + i for i in
              torch.sort(kl[block], descending=True, stable=True).indices[:2].tolist()}
    for rule in ("patience", "bound"):
        cfg = VerifyConfig(top_k=2, patience=1, rule=rule)
        got, _, vmask, rounds = verify_layers(model, examples, config, cfg, layers, fams, kl,
                                              e["count"], means=means)
        assert rounds == 1 and set(torch.nonzero(vmask.flatten()).flatten().tolist()) == \
            pooled | blocks, rule
        v = vmask[None, :, :, None].expand_as(got)
        torch.testing.assert_close(got[v], e["layer.sum"][v], rtol=1e-4, atol=1e-4)
    # a screen of every example is the exact map: everything exact, nothing left to verify
    whole = VerifyConfig(top_k=2, patience=1, screen=len(examples))
    sums, record = verify_sums(model, examples, config, whole, means=means)
    assert record["screened"] == len(examples) and record["layer_rounds"] == 0
    assert record["layer_verified"] == record["layer_entries"] and "screen" in record["seconds"]
    t = sums.tensors
    torch.testing.assert_close(t["layer.sum"], e["layer.sum"], rtol=1e-4, atol=1e-4)
    order = [int(u) for u in e["example.id"]]
    mine = [order.index(int(u)) for u in t["example.id"]]
    torch.testing.assert_close(t["example.layer"], e["example.layer"][..., mine], rtol=1e-4,
                               atol=1e-4)
    # a one-example screen (the default): the verified entries are exact, and the others hold
    # their family's exact mean over the screened example in every metric (no gradient pass)
    sums1, record1 = verify_sums(model, examples, config, VerifyConfig(top_k=2), means=means)
    assert record1["screen"] == 1 and record1["screened"] == 2  # one per family
    assert record1["filled_by"] == "screen"
    t1 = sums1.tensors
    v1 = (t1["layer.verified"] >= t1["count"])[None].expand_as(t1["layer.sum"])
    torch.testing.assert_close(t1["layer.sum"][v1], e["layer.sum"][v1], rtol=1e-4, atol=1e-4)
    s1 = compute_atlas_sums(model, screen_examples(examples, sums1.families, 1), config,
                            families=sums1.families, means=means).tensors
    filled = s1["layer.sum"] / s1["count"] * t1["count"]
    torch.testing.assert_close(t1["layer.sum"][~v1], filled[~v1], rtol=1e-4, atol=1e-4)
    assert not v1.all() and not torch.isnan(t1["layer.sum"]).any()


@pytest.mark.parametrize(("layers", "rows", "n_layers", "max_rows", "waste", "groups"), [
    ([0, 0, 0], 4, 30, 64, 0.25, [[0, 1, 2]]),             # one layer: one forward
    ([0, 0, 0], 4, 30, 8, 0.25, [[0, 1], [2]]),             # ... up to max_rows
    ([5, 0, 2, 20], 4, 30, 64, 0.25, [[1, 2, 0], [3]]),     # L5 runs 5 clean of 25: ok
    ([0, 9], 4, 30, 64, 0.25, [[0], [1]]),                  # L9: 9 clean > 0.25 x 21
    ([2, 1, 0], 4, 3, 64, 0.25, [[2], [1], [0]]),           # a short model: own forwards
])
def test_entry_forwards(layers, rows, n_layers, max_rows, waste, groups):
    assert entry_forwards(layers, rows, n_layers, max_rows=max_rows, waste=waste) == groups


def test_entry_and_cell_effects_equal_the_exact_path(tiny_models, examples):
    model = tiny_models["llama"]
    ctx, layers = _ctx(model, examples)
    full = layer_effects(ctx, layers, "exact")  # [metric component layer batch]
    entries = [(2, 1), (0, 2), (1, 1), (0, 0)]
    got = layer_entry_effects(ctx, entries)
    for j, (c, layer) in enumerate(entries):
        torch.testing.assert_close(got[:, j], full[:, c, layer], rtol=1e-4, atol=1e-4)
    # entries of several layers in one forward from the lowest (rows of later layers run the
    # clean model up to their own layer), or in forwards of a few rows each: the same values
    for kw in ({"waste": 10.0, "max_rows": 1000}, {"waste": 10.0, "max_rows": 1}):
        torch.testing.assert_close(layer_entry_effects(ctx, entries, **kw), got, rtol=1e-4,
                                   atol=1e-4)
    pos = position_effects(ctx, layers, "exact", chunk=4)  # [metric pcomp layer batch pos]
    gen = torch.Generator().manual_seed(0)
    b = len(ctx.batch)
    cells = []
    for _ in range(40):
        r = int(torch.randint(0, b, (1,), generator=gen))
        p = int(torch.randint(0, int(ctx.batch.scored_pos[r]) + 1, (1,), generator=gen))
        cells.append((int(torch.randint(0, 2, (1,), generator=gen)),
                      int(torch.randint(0, len(layers), (1,), generator=gen)), r, p))
    cells = torch.tensor(cells)
    got = position_cell_effects(ctx, cells, chunk=4, max_rows=7)
    want = pos[:, cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3]]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the atlas


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_verify_with_k_all_equals_exact_map(tiny_models, examples, ablation):
    model = tiny_models["qwen2"]
    config = AtlasConfig(ablation=ablation, positions=True, max_offset=8, batch_size=4,
                         position_chunk=8)
    means = None
    if ablation == "mean":
        from tlatlas.atlas.sweep import reference_stats

        ref = list(build_suite("synthetic", seed=9, per_family=2, families=["ioi", "code"]))
        means = reference_stats(model, ref, [f"blocks.{layer}.{h}" for layer in
                                             range(model.n_layers) for h in HOOKS])
    exact = compute_atlas_sums(model, examples, config, means=means)
    everything = 10_000  # more than any ranking holds: every entry and cell is verified
    sums, record = verify_sums(model, examples, config, VerifyConfig(top_k=everything),
                               means=means)
    assert record["layer_verified"] == record["layer_entries"] == 3 * model.n_layers
    assert record["cells_verified"] == record["cells"] > 0
    for key in ("layer.sum", "role.sum", "offset.sum", "example.layer", "example.role"):
        torch.testing.assert_close(sums.tensors[key], exact.tensors[key], rtol=1e-4, atol=1e-4,
                                   equal_nan=True, msg=key)
    for key in ("count", "role.count", "offset.count", "example.id", "seen.count"):
        torch.testing.assert_close(sums.tensors[key], exact.tensors[key])
    t = sums.tensors
    assert torch.equal(t["layer.verified"], t["count"].expand_as(t["layer.verified"]))
    assert torch.equal(t["role.verified"], t["role.count"].expand_as(t["role.verified"]))
    assert torch.equal(t["offset.verified"], t["offset.count"].expand_as(t["offset.verified"]))


@pytest.mark.parametrize("estimator", [None, Estimator(method="fisher_bound")])
def test_verified_entries_are_exact_and_the_rest_are_marked(tiny_models, examples, tmp_path,
                                                            estimator):
    model = tiny_models["llama"]
    config = AtlasConfig(positions=True, max_offset=8, batch_size=4, position_chunk=8)
    exact = compute_atlas_sums(model, examples, config)
    kept = {}
    # screen=0: the layer map in the estimate's order (the path without a screen)
    chosen = {} if estimator is None else {"estimator": estimator}
    sums, record = verify_sums(model, examples, config,
                               VerifyConfig(top_k=1, patience=1, screen=0, **chosen),
                               on_positions=lambda uids, v, ver: kept.update(
                                   {u: (v[..., i, :], ver[..., i, :]) for i, u in enumerate(uids)}))
    t = sums.tensors
    vmask = t["layer.verified"] >= t["count"]  # [component layer family]
    assert vmask.any() and not vmask.all()  # the test has both kinds of entry
    assert record["layer_verified"] == int(vmask.all(-1).sum()) < record["layer_entries"]
    assert 0 < record["cells_verified"] < record["cells"]
    v = vmask[None].expand_as(t["layer.sum"])
    torch.testing.assert_close(t["layer.sum"][v], exact.tensors["layer.sum"][v],
                               rtol=1e-4, atol=1e-4)
    # unverified entries hold the estimate (bound: a dlogp-slot score; fisher_bound: kl
    # alone), with no accuracy estimate
    est = t["layer.estimate"]
    filled = KL if estimator is not None else DLOGP
    torch.testing.assert_close(t["layer.sum"][filled][~vmask], est[filled][~vmask])
    assert torch.isnan(t["layer.sum"][ACC][~vmask]).all()
    # verified cells equal the exact position map, per example
    ctx_pos = {}
    for cb in clean_batches(model, examples, estimate_hooks(sums.layers, True)[1], batch_size=4):
        ctx = ablation_batch(model, cb, config, None, sums.layers, HOOKS)
        pe = position_effects(ctx, sums.layers, "exact", chunk=8)
        for i, ex in enumerate(cb.examples):
            ctx_pos[ex.uid] = pe[..., i, :]
    n_checked = 0
    for uid, (values, ver) in kept.items():
        want = ctx_pos[uid]
        torch.testing.assert_close(values[:, ver], want[:, ver], rtol=1e-4, atol=1e-4)
        n_checked += int(ver.sum())
    assert n_checked == record["cells_verified"]
    # the file says which entries are exact
    from tlatlas.atlas.store import Atlas, AtlasMeta

    meta = AtlasMeta(model=model.name, fingerprint=model.fingerprint, suite_kind="synthetic",
                     suite_hash="x", seed=3, ablation="zero", method="verify",
                     n_examples=sums.n_examples, estimate=record)
    save_atlas(Atlas(sums=sums, meta=meta), tmp_path / "v")
    loaded = load_atlas(tmp_path / "v")
    for key in VERIFY_KEYS:
        assert torch.equal(loaded.sums.tensors[key].nan_to_num(-1.0), t[key].nan_to_num(-1.0)), key
    lt = loaded.sums.tensors
    assert (lt["layer.verified"] < lt["count"]).any()
    assert (lt["role.verified"] < lt["role.count"]).any()
    assert loaded.meta.estimate["layer_verified"] == record["layer_verified"]
    assert loaded.meta.estimate["rule"].startswith("verify in order")
    # unverified entries hold the estimator's values, and show says what they are
    assert loaded.meta.estimate["filled_by"] == "estimator"
    assert ("second-order" if estimator is not None else "magnitude") \
        in exactness(loaded)["estimated"]  # bound gives scores, not dlogp


def test_a_positions_run_screens_only_when_the_screen_is_a_small_share(tiny_models, examples):
    """With a position map the gradient pass runs anyway: a screen larger than
    ``screen_share`` of the examples is skipped and the estimate orders the layer map."""
    model = tiny_models["llama"]
    config = AtlasConfig(positions=True, max_offset=8, batch_size=4, position_chunk=8)
    # one per family of 2 families is 2 of 6 examples: above a quarter, below one half
    _, skipped = verify_sums(model, examples, config, VerifyConfig(top_k=1, patience=1))
    assert skipped["ordered_by"] == "estimator" and skipped["screened"] == 0
    assert "screen" not in skipped["seconds"]
    _, taken = verify_sums(model, examples, config,
                           VerifyConfig(top_k=1, patience=1, screen_share=0.5))
    assert taken["ordered_by"] == "screen" and taken["screened"] == 2
    assert "screen" in taken["seconds"]
    # without a position map the screen is the estimate, whatever its share
    _, layer_only = verify_sums(model, examples, replace(config, positions=False),
                                VerifyConfig(top_k=1, patience=1))
    assert layer_only["ordered_by"] == layer_only["filled_by"] == "screen"
    with pytest.raises(ValueError, match="screen_share"):
        VerifyConfig(screen_share=1.5)


def test_hub_uses_verified_layers_only(tiny_models, examples):
    model = tiny_models["llama"]
    config = AtlasConfig(batch_size=4)
    sums, _ = verify_sums(model, examples, config, VerifyConfig(top_k=1, patience=1))
    mask = verified_layer_mask(sums, "block")
    assert mask is not None and mask.any()
    # make an unverified layer look like the hub: the hub must not move there
    t = dict(sums.tensors)
    layer_sum = t["layer.sum"].clone()
    c = COMPONENTS.index("block")
    if mask.all():
        t["layer.verified"] = t["layer.verified"].clone()
        t["layer.verified"][c, 0] = 0
        mask = torch.tensor([False] + [True] * (len(sums.layers) - 1))
    bad = int(torch.nonzero(~mask)[0, 0])
    layer_sum[:, c, bad] = 1e6
    example_layer = t["example.layer"].clone()
    example_layer[:, c, bad] = 1e6
    t.update({"layer.sum": layer_sum, "example.layer": example_layer})
    doctored = replace(sums, tensors=t)
    hub = hub_summary(doctored)
    assert hub.verified == tuple(mask.tolist())
    assert hub.hub_layer != sums.layers[bad] and mask[sums.layers.index(hub.hub_layer)]
    assert all(mask[sums.layers.index(layer)] for layer in hub.family_argmax.values())
    assert verified_layers(doctored) == tuple(layer for layer, ok in
                                              zip(sums.layers, mask.tolist(), strict=True) if ok)
    if int(mask.sum()) >= 2:
        ev = hub_evidence(doctored, replicates=50)
        assert sums.layers[bad] not in ev.layers and ev.hub_layer == hub.hub_layer
    # an exact atlas has no mask and every layer takes part
    exact = compute_atlas_sums(model, examples, config)
    assert verified_layer_mask(exact) is None and hub_summary(exact).verified is None


def test_build_atlas_verify_and_merge(tiny_models):
    model = tiny_models["qwen2"]
    config = AtlasConfig(batch_size=2)
    spec = SuiteSpec(per_family=4, families=("ioi", "sequence"))
    take_loaded()
    build_atlas(model, spec, config, method="exact")
    assert take_loaded() == frozenset()  # the exact path loads no estimate
    whole = build_atlas(model, spec, config, method="verify", top_k=2)
    # what the experiment runner checks against a block's hashed closure
    assert take_loaded() == {"tlatlas.atlas.verify", "tlatlas.atlas.verify_spec"}
    assert whole.meta.method == "verify" and whole.meta.estimate["top_k"] == 2
    assert whole.meta.estimate["estimator"]["method"] == "bound"
    shards = [build_atlas(model, replace(spec, shard=(i, 2)), config, method="verify", top_k=2)
              for i in range(2)]
    merged = merge_atlases(shards)
    t = merged.sums.tensors
    # counts add: an entry is exact in the merge only where it is exact in every shard
    both = torch.stack([s.sums.tensors["layer.verified"] >= s.sums.tensors["count"]
                        for s in shards]).all(0).all(-1)
    assert torch.equal((t["layer.verified"] >= t["count"]).all(-1), both)
    with pytest.raises(ValueError, match="resample"):
        build_atlas(model, spec, AtlasConfig(ablation="resample"), method="verify")
    attr = build_atlas(model, spec, config, method="attribution", steps=3)
    assert attr.meta.estimate["estimator"] == {"method": "ig_joint", "steps": 3, "name": "ig_joint"}
    assert not torch.isnan(attr.sums.tensors["layer.sum"][KL]).any()
    first = build_atlas(model, spec, config, method="attribution")
    assert torch.isnan(first.sums.tensors["layer.sum"][KL]).all()


# --------------------------------------------------------------------------- mixed layer types


@pytest.fixture(scope="module")
def tiny_gemma3(tiny_dirs, tmp_path_factory):
    """A tiny Gemma-3 text model: sliding and full attention layers with very different
    RoPE bases, so a layer run with another layer's type changes the output. (The window
    is longer than the prompts, as Gemma-3-270M's 512 is: the clean keys/values reused as
    a prefix assume every earlier position is in the window.)"""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from tlatlas.models import load_model

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64,
        max_position_embeddings=256, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention",
                     "full_attention"],
        rope_parameters={"full_attention": {"rope_theta": 1_000_000.0, "rope_type": "default"},
                         "sliding_attention": {"rope_theta": 10.0, "rope_type": "default"}},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.15)
    path = tmp_path_factory.mktemp("gemma3") / "tiny-gemma3"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return load_model(path, device="cpu")


def test_exact_path_and_cells_on_mixed_layer_types(tiny_gemma3, examples):
    """Resuming at a layer must give each layer its own type (mask, RoPE base): the exact
    path equals the naive loop, and single cells (other start layers, other prefixes)
    equal both."""
    model = tiny_gemma3
    ctx, layers = _ctx(model, examples)
    torch.testing.assert_close(layer_effects(ctx, layers, "exact"),
                               layer_effects(ctx, layers, "naive"), rtol=1e-4, atol=1e-4)
    pos = position_effects(ctx, layers, "exact", chunk=4)
    torch.testing.assert_close(pos, position_effects(ctx, layers, "naive", chunk=4),
                               rtol=1e-4, atol=1e-4, equal_nan=True)
    b = len(ctx.batch)
    cells = torch.tensor([(pc, layer, r, p) for pc in (0, 1) for layer in layers
                          for r in range(b) for p in (0, 3, int(ctx.batch.scored_pos[r]))])
    got = position_cell_effects(ctx, cells, chunk=2, max_rows=5)
    want = pos[:, cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3]]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
