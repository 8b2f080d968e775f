"""Issue 15, steering half: regimes, held-out vectors, the two controls, per-example slopes
and specificity, precision rows with drift and amplification intervals, format 2 files."""

import json
import random

import pytest
import torch

from tlatlas.errors import InvalidInputError
from tlatlas.models import load_model
from tlatlas.steering import (
    LINEAR_SCALES,
    SATURATION_SCALES,
    SteeringConfig,
    fit_vectors,
    heldout_split,
    layer_steerability,
    partition_membership,
    prompt_sums,
    steering_sweep,
    steering_vectors,
)
from tlatlas.steering.precision import precision_sweep
from tlatlas.steering.result import (
    SteeringFileError,
    SteeringResult,
    load_steering,
    save_steering,
    steering_paths,
)
from tlatlas.steering.steerability import (
    amplification_intervals,
    control_difference,
    drift_stats,
    example_slopes,
    fit_scales,
    most_steerable,
)
from tlatlas.steering.tables import full_report, header_lines, precision_tables, summary_lines
from tlatlas.tasks import Example, build_suite
from tlatlas.tasks.suite import scored_token_ids
from tlatlas.tokens import encode_prompts

FAMILIES = ["json", "factual", "arithmetic"]


@pytest.fixture(scope="module")
def suite():
    return build_suite("synthetic", seed=42, per_family=6, families=FAMILIES)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def fitted(llama, suite):
    """Vectors with 3 partition draws on the training half, and the held-out sweep."""
    config = SteeringConfig(random_draws=4, partition_draws=3)
    split, vectors = fit_vectors(llama, suite, config)
    return split, vectors, steering_sweep(llama, split.heldout, vectors, config)


# --------------------------------------------------------------------------- regimes


def test_default_grid_is_the_linear_regime_with_both_signs_and_saturation_is_separate():
    cfg = SteeringConfig()
    assert cfg.regime == "linear" and cfg.scales == LINEAR_SCALES
    assert max(abs(s) for s in cfg.scales) <= 1 and 0.0 in cfg.scales
    assert {s for s in cfg.scales if s > 0} == {-s for s in cfg.scales if s < 0}  # both signs
    assert cfg.random_draws >= 8 and cfg.partition_draws > 0
    sat = SteeringConfig(regime="saturation")
    assert sat.scales == SATURATION_SCALES and {2.0, -2.0, 4.0, -4.0} <= set(sat.scales)
    assert SteeringConfig(regime="saturation", scales=(-1.0, 1.0)).scales == (-1.0, 1.0)
    back = SteeringConfig.from_dict(sat.to_dict())
    assert back == sat
    old = {"kind": "tlatlas.steering_config", "format_version": 1, "scales": [-4, 0, 4],
           "layers": None, "random_draws": 2, "random_seed": 0, "batch_size": 8,
           "max_rows": 256, "method": "exact"}
    v1 = SteeringConfig.from_dict(old)
    assert (v1.regime, v1.partition_draws, v1.random_draws) == ("saturation", 0, 2)
    for bad in ({"heldout_fraction": 1.0}, {"partition_draws": -1}, {"linear_max": 0.0}):
        with pytest.raises(InvalidInputError):
            SteeringConfig(**bad)
    # the runtime type check (tests) or __post_init__ (plain runs) refuses an unknown regime
    with pytest.raises((InvalidInputError, TypeError)):
        SteeringConfig(regime="huge")
    mask, linear = fit_scales(LINEAR_SCALES)
    assert linear and mask.tolist() == [True, True, True, False, True, True, True]
    mask, linear = fit_scales(SATURATION_SCALES)  # no linear scale: all nonzero, flagged
    assert not linear and mask.tolist() == [True, True, False, True, True]


# --------------------------------------------------------------------------- held-out


def test_heldout_prompts_are_disjoint_from_the_training_prompts(llama, suite, fitted):
    split, vectors, result = fitted
    train, held = {e.uid for e in split.train}, {e.uid for e in split.heldout}
    assert train and held and not train & held
    assert train | held == {e.uid for e in suite}
    assert split.counts() == {f: (3, 3) for f in FAMILIES}
    assert split.heldout.kind == "synthetic" and split.heldout.seed == 42  # a Suite again
    # the same split whatever the input order, another with another seed
    shuffled = list(suite)
    random.Random(1).shuffle(shuffled)
    assert {e.uid for e in heldout_split(shuffled).heldout} == held
    assert {e.uid for e in heldout_split(suite, seed=1).heldout} != held
    # duplicates of one example never land on both sides
    dup = list(suite) + [suite.examples[0]] * 3
    s2 = heldout_split(dup)
    assert not {e.uid for e in s2.train} & {e.uid for e in s2.heldout}
    # recorded in the vectors and the result
    assert set(vectors.train_uids) == train
    assert set(result.train_ids.tolist()) == train
    assert set(result.example_values("id").tolist()) == held
    assert result.heldout and result.overlap == 0
    own = steering_sweep(llama, split.train, vectors, SteeringConfig(random_draws=0))
    assert not own.heldout and own.overlap == len(split.train)
    with pytest.raises(InvalidInputError, match="at least 2 distinct"):
        heldout_split(build_suite("synthetic", seed=42, per_family=1, families=FAMILIES))
    with pytest.raises(InvalidInputError, match="fraction"):
        heldout_split(suite, fraction=0.0)


# --------------------------------------------------------------------------- controls


def test_partition_control_is_the_halves_difference_and_norm_matched(llama, suite, fitted):
    split, vectors, result = fitted
    assert vectors.partition is not None and vectors.partition.shape == (3, 3, 3, llama.d_model)
    # the same directions, recomputed from the halves' own means
    train = list(split.train)
    groups, member = partition_membership([e.family for e in train], [e.uid for e in train],
                                          FAMILIES, 3)
    for d in range(3):
        for c, fam in enumerate(FAMILIES):
            rows = {h: [i for i in range(len(train))
                        if member[i, groups.index(f"partition/{d}/{fam}/{h}")] == 1] for h in "ab"}
            assert rows["a"] and rows["b"] and not set(rows["a"]) & set(rows["b"])
            assert sorted(rows["a"] + rows["b"]) == [i for i, e in enumerate(train) if e.family == fam]
            sums = prompt_sums(llama, ["a"] * len(rows["a"]) + ["b"] * len(rows["b"]),
                               [train[i].prompt for i in rows["a"] + rows["b"]])
            means = sums.sums / sums.counts[None, :, None]
            ref = means[:, 0] - means[:, 1]
            ref = ref / ref.norm(dim=-1, keepdim=True)
            assert torch.allclose(vectors.partition[d, c].double(), ref, atol=1e-4)
    # the added partition vector has exactly the vector's norm at every scale and layer
    part, vec, norms = (result.tensors[k] for k in ("partition.directions", "vectors.directions",
                                                    "vectors.norms"))
    for s in result.scales:
        added_vec = (s * vec * norms[None, :, None]).norm(dim=-1)  # [concept layer]
        added_part = (s * part * norms[None, None, :, None]).norm(dim=-1)  # [draw concept layer]
        assert torch.allclose(added_part, added_vec[None].expand_as(added_part), rtol=1e-5, atol=1e-6)
    # a control, not a copy of the vector: not parallel to it, and the draws differ
    cos = (part * vec[None]).sum(-1)
    assert cos.abs().max() < 0.95
    assert not torch.allclose(part[0], part[1])
    # vectors without partition directions sweep with an empty partition control
    plain = steering_vectors(llama, train)
    r0 = steering_sweep(llama, split.heldout, plain, SteeringConfig(random_draws=1))
    assert r0.partition_draws == 0 and torch.isnan(r0.partition_kl()[0]).all()


def test_scale_zero_gives_every_kl_exactly_zero_in_every_row(tiny_dirs, llama, suite, fitted):
    split, vectors, _ = fitted
    cfg = SteeringConfig(scales=(-0.5, 0.0, 0.5), random_draws=2, partition_draws=3)
    result = precision_sweep(tiny_dirs["llama"], split.heldout, vectors, cfg, ["bf16", "fp32"],
                             device="cpu", timing_repeats=1)
    assert result.precisions == ("bf16", "fp32") and result.reference == "fp32"
    for name in ("kl", "dlogp", "random.kl", "random.dlogp", "partition.kl", "partition.dlogp"):
        ex = result.example_values(name)
        assert (ex[:, :, 1] == 0).all(), name
        assert (result.tensors[f"{name}.sum"][:, :, 1] == 0).all()
    for name in ("kl", "random.kl", "partition.kl"):
        assert (result.example_values(name)[:, :, [0, 2]] > 0).all(), name
    # drift: the reference against itself is 0 and agrees; bf16 drifts a little
    drift = result.example_values("drift_kl")
    assert (drift[1] == 0).all() and (result.example_values("top1_agree")[1] == 1).all()
    assert torch.isfinite(drift[0]).all() and (drift[0] > 0).any() and (drift[0] < 0.1).all()
    d = drift_stats(result, "bf16")
    assert d is not None and d.kl.n == len(split.heldout)
    assert 0 <= d.top1_agreement.estimate <= 1 + 1e-9
    amp = amplification_intervals(result, "bf16", replicates=200)
    for grid in (amp.vector, amp.random, amp.partition):
        assert all(row[1] is None for row in grid)  # s = 0: 0 / 0, no ratio
        ints = [row[i] for row in grid for i in (0, 2)]
        assert all(i is not None and i.ci_low <= i.estimate <= i.ci_high for i in ints)
        assert all(0.5 < i.estimate < 2 for i in ints)  # bf16 of a tiny fp32 model: ~1
    # the result round-trips (format 2) with every per-example tensor
    text = "\n".join(summary_lines(result))
    assert "s=-0.5" in text and "s=+0.5" in text and "drift from fp32" in text
    tables = precision_tables(result, "bf16")
    assert "amplification [CI]" in tables and "KL / fp32 KL" in tables
    assert any(line.startswith("reference fp32") for line in header_lines(result))


# --------------------------------------------------------------------------- slopes


def test_slope_is_least_squares_through_the_origin():
    scales = torch.tensor(LINEAR_SCALES)
    mask, _ = fit_scales(LINEAR_SCALES)
    b = torch.tensor([2.0, -1.0, 0.0])
    gain = scales[:, None] * b[None]  # [scale example], g(0) = 0
    assert torch.allclose(example_slopes(-gain, scales, mask), b.double())
    noisy = gain + torch.randn(gain.shape) * 0.1
    noisy[3] = 0  # s = 0 is the clean run
    s = scales[mask].double()
    ref = torch.linalg.lstsq(s[:, None], noisy[mask].double()).solution[0]
    assert torch.allclose(example_slopes(-noisy, scales, mask), ref)


def test_specificity_interval_covers_a_known_shift():
    torch.manual_seed(0)
    strata = torch.arange(40) % 4
    control = torch.randn(8, 40) * 0.3
    vector = control.mean(0) + 1.0 + torch.randn(40) * 0.05
    up = control_difference(vector, control, strata, replicates=500)
    assert abs(up.estimate - 1.0) < 0.05 and up.ci_low > 0.8 and up.ci_high < 1.2 and up.n == 40
    down = control_difference(control.mean(0) - 0.5, control, strata, replicates=500)
    assert down.ci_high < 0
    same = control_difference(control[0], control, strata, replicates=500)
    assert same.ci_low < 0 < same.ci_high or abs(same.estimate) < 0.2


def _planted(tiny_dirs, suite12, family, u, *, c=20.0, alpha=1.0):
    """A fresh tiny model in which ``family``'s prompts carry c·u in the residual stream
    (added to the embeddings of every position after BOS) and whose unembedding reads its
    answers along u (their rows set to alpha·u): the family's answer rises along u."""
    model = load_model(tiny_dirs["llama"], device="cpu")
    fam = [e for e in suite12 if e.family == family]
    keys = {tuple(encode_prompts([e.prompt], model.tokenizer).tokens[0].tolist()) for e in fam}
    pad = model.tokenizer.pad_token_id

    def plant(module, inputs, out):
        rows = []
        for r in inputs[0].tolist():
            while r and r[-1] == pad:
                r = r[:-1]
            rows.append(tuple(r) in keys)
        mask = torch.tensor(rows)[:, None, None] & (torch.arange(out.shape[1]) > 0)[None, :, None]
        return out + c * u * mask

    model.hf_model.get_input_embeddings().register_forward_hook(plant)
    targets = sorted(set(scored_token_ids(fam, model.tokenizer, allow_whitespace=True)))
    with torch.no_grad():
        model.hf_model.get_output_embeddings().weight[targets] = alpha * u
    return model


def test_planted_direction_has_positive_slope_and_the_controls_about_zero(tiny_dirs):
    suite12 = build_suite("synthetic", seed=42, per_family=12, families=FAMILIES)
    u = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(4)),
                                      dim=0)
    model = _planted(tiny_dirs, suite12, "json", u)
    config = SteeringConfig(layers=(2,))
    split, vectors = fit_vectors(model, suite12, config)
    assert float(vectors.directions[0, 0] @ u) > 0.4  # the vector found the planted feature
    result = steering_sweep(model, split.heldout, vectors, config)
    assert result.heldout
    (row,) = layer_steerability(result, family="json", replicates=500)
    slope = row.vector.mean
    assert slope.ci_low > 0.5 and row.vector.wrong_way.estimate == 0 and slope.n == 6
    assert abs(row.random.mean) < 0.25 * slope.estimate and row.random.draws == 8
    assert abs(row.partition.mean) < 0.25 * slope.estimate and row.partition.draws == 4
    assert row.over_random.ci_low > 0 and row.over_partition.ci_low > 0
    assert row.linear and row.fit_scales == (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0)
    best = most_steerable(result, replicates=200)
    assert best["json"].layer == 2 and best["json"].specificity > 0.5
    # the same model without the readout along u: the vector still moves the residual,
    # but the answer no longer rises along it, so the slope collapses
    with torch.no_grad():
        model.hf_model.get_output_embeddings().weight[:] = load_model(
            tiny_dirs["llama"], device="cpu").hf_model.get_output_embeddings().weight
    flat = steering_sweep(model, split.heldout, vectors, config)
    (row0,) = layer_steerability(flat, family="json", replicates=200)
    assert row0.vector.mean.estimate < 0.5 * slope.estimate


# --------------------------------------------------------------------------- files


def test_format_2_round_trip_and_format_1_still_loads(llama, fitted, tmp_path):
    _, _, result = fitted
    stem = tmp_path / "s"
    save_steering(result, stem)
    back = load_steering(stem, fingerprint=llama.fingerprint)
    assert back.format_version == 2 and back.heldout and back.partition_draws == 3
    for k, v in result.tensors.items():
        assert torch.equal(back.tensors[k].nan_to_num(-1), v.nan_to_num(-1)), k
    assert back.meta.precision_specs[0]["weights"]["format"] == "hf"
    report = full_report(back)
    assert "held-out" in report and "partition control KL" in report and "s=-0.25" in report
    # a format-1 file: sums and the random control only, no top-level axis sizes
    v1_keys = ("kl.sum", "dlogp.sum", "random.kl.sum", "random.dlogp.sum", "count", "forward_s",
               "vectors.directions", "vectors.norms", "random.directions")
    old = SteeringResult(families=result.families, layers=result.layers, scales=result.scales,
                         precisions=result.precisions, meta=result.meta, format_version=1,
                         tensors={k: result.tensors[k] for k in v1_keys})
    save_steering(old, tmp_path / "old")
    meta_path = steering_paths(tmp_path / "old")[1]
    header = json.loads(meta_path.read_text())
    for key in ("random_draws", "partition_draws", "n_train"):
        del header[key]
    meta_path.write_text(json.dumps(header))
    v1 = load_steering(tmp_path / "old")
    assert v1.format_version == 1 and not v1.has_examples and not v1.heldout
    assert torch.equal(v1.kl(), result.kl())
    with pytest.raises(InvalidInputError, match="format 1"):
        layer_steerability(v1)
    assert "format 1 result" in full_report(v1)
    assert "unknown for a format-1 result" in "\n".join(summary_lines(v1))
    header["format_version"] = 3
    meta_path.write_text(json.dumps(header))
    with pytest.raises(SteeringFileError, match="format 3"):
        load_steering(tmp_path / "old")


def test_partition_needs_two_training_prompts_per_family(llama):
    exs = [Example(family="json", prompt='{"a": 1, "b"', answer=": 2"),
           Example(family="factual", prompt="The capital of France is", answer=" Paris"),
           Example(family="factual", prompt="The capital of Spain is", answer=" Madrid")]
    with pytest.raises(InvalidInputError, match="at least 2 per family"):
        steering_vectors(llama, exs, partition_draws=2)
