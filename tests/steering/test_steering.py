import gc
import weakref

import pytest
import torch

from tlatlas.models import load_model
from tlatlas.models.forward import clean_run
from tlatlas.steering import (
    SteeringConfig,
    SteeringError,
    add_steering,
    contrastive_vectors,
    random_directions,
    steer_mask,
    steering,
    steering_sums,
    steering_sweep,
    steering_vectors,
    vectors_from_sums,
)
from tlatlas.steering.precision import PrecisionUnavailableError, check_precision, precision_sweep
from tlatlas.steering.result import (
    SteeringFileError,
    SteeringResult,
    load_steering,
    parse_scales,
    save_steering,
    steering_paths,
)
from tlatlas.tasks import build_suite
from tlatlas.tokens import ROLE_BOS, ROLE_PAD, encode_prompts

FAMILIES = ["json", "factual", "arithmetic"]


@pytest.fixture(scope="module")
def suite():
    return build_suite("synthetic", seed=42, per_family=3, families=FAMILIES)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.fixture(scope="module")
def vectors(llama, suite):
    return steering_vectors(llama, list(suite))


def clean_logits(model, tokens):
    with torch.no_grad():
        return model.hf_model(tokens).logits


class LiveModels:
    """A loader that records every model it returns and checks none is alive at a new load."""

    def __init__(self, source_map=None, **kwargs):
        self.refs: list[weakref.ref] = []
        self.alive_at_load: list[int] = []
        self.kwargs = kwargs

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.refs)

    def load(self, source, label=None):
        self.alive_at_load.append(self.alive())
        if label is None or label == "fp32":
            model = load_model(source, device="cpu", dtype=torch.float32)
        else:
            from tlatlas.steering.precision import load_precision

            model = load_precision(source, label, device="cpu")
        self.refs.append(weakref.ref(model))
        return model


# --------------------------------------------------------------------------- vectors


def test_vectors_are_deterministic_unit_and_the_difference_of_means(llama, suite, vectors):
    again = steering_vectors(llama, list(suite), batch_size=2)  # other batching, same vectors
    assert torch.allclose(again.directions, vectors.directions, atol=1e-6)
    assert torch.equal(steering_vectors(llama, list(suite)).directions, vectors.directions)
    assert vectors.names == tuple(FAMILIES) and vectors.layers == (0, 1, 2)
    assert torch.allclose(vectors.directions.norm(dim=-1), torch.ones(3, 3), atol=1e-5)
    # reference: each prompt alone (no padding), every position after BOS
    acts = {f: [] for f in FAMILIES}
    for ex in suite:
        tokens = encode_prompts([ex.prompt], llama.tokenizer).tokens
        _, cache = llama.bridge.run_with_cache(tokens)
        acts[ex.family].append(torch.stack([cache[f"blocks.{i}.hook_resid_post"][0, 1:]
                                            for i in range(3)]))
    means = torch.stack([torch.cat(acts[f], 1).double().mean(1) for f in FAMILIES])  # [f l d]
    for fi in range(3):
        rest = torch.stack([means[j] for j in range(3) if j != fi]).mean(0)
        ref = means[fi] - rest
        ref = ref / ref.norm(dim=-1, keepdim=True)
        assert torch.allclose(vectors.directions[fi].double(), ref, atol=1e-4)
    all_norms = torch.cat([torch.cat(a, 1) for a in acts.values()], 1).norm(dim=-1).mean(1)
    assert torch.allclose(vectors.norms, all_norms.float(), rtol=1e-4)


def test_sums_merge_exactly_across_shards(llama, suite, vectors):
    exs = list(suite)
    fams = tuple(FAMILIES)
    a = steering_sums(llama, exs[::2], families=fams)
    b = steering_sums(llama, exs[1::2], families=fams)
    merged = vectors_from_sums(a.merged(b))
    assert torch.allclose(merged.directions, vectors.directions, atol=1e-5)


def test_contrastive_vectors_flip_with_the_pair(llama):
    pos = ["I love this, it is great", "What a wonderful day"]
    neg = ["I hate this, it is awful", "What a terrible day"]
    v = contrastive_vectors(llama, pos, neg)
    w = contrastive_vectors(llama, neg, pos)
    assert v.names == ("contrast",) and v.origin == "contrastive"
    assert torch.allclose(v.directions, -w.directions, atol=1e-5)
    with pytest.raises(SteeringError, match="at least one"):
        contrastive_vectors(llama, pos, [])


# --------------------------------------------------------------------------- the hook


def test_steering_hook_leaves_bos_and_padding_untouched(llama):
    enc = encode_prompts(["a", "the capital of France is"], llama.tokenizer)
    tokens, roles = enc.tokens, enc.roles
    assert (roles == ROLE_PAD).any() and (roles[:, 0] == ROLE_BOS).all()
    delta = torch.randn(2, llama.d_model) * 5
    out = add_steering(torch.zeros(2, tokens.shape[1], llama.d_model), delta, steer_mask(roles))
    keep = (roles == ROLE_PAD) | (roles == ROLE_BOS)
    assert (out[keep] == 0).all()
    assert torch.equal(out[~keep], delta[:, None].expand_as(out)[~keep])
    # in a real forward: resid_post[0] changes by exactly delta after BOS and nowhere else
    name = "blocks.0.hook_resid_post"
    clean = clean_run(llama, tokens, (roles != ROLE_PAD).sum(1) - 1, [name]).acts[name]
    seen = {}

    def capture(act, hook):
        seen["act"] = act.detach().clone()
        return act

    with steering(llama, 0, delta, roles), torch.no_grad():
        logits = llama.bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", capture)])
    diff = seen["act"] - clean
    assert diff[keep].abs().max() < 1e-5
    assert torch.allclose(diff[~keep], delta[:, None].expand_as(diff)[~keep], atol=1e-4)
    with torch.no_grad():
        plain = llama.bridge(tokens)  # the hook removed itself
        assert torch.equal(plain, llama.bridge(tokens))
    assert torch.allclose(plain, clean_logits(llama, tokens), atol=1e-5)
    assert torch.allclose(logits[:, 0], plain[:, 0], atol=1e-5)  # BOS logits untouched
    assert (logits[:, 1:] - plain[:, 1:]).abs().max() > 1e-2


def test_random_control_norm_equals_the_vectors(llama, suite, vectors):
    r = random_directions(llama.d_model, llama.n_layers, 5, seed=3)
    assert torch.equal(r, random_directions(llama.d_model, llama.n_layers, 5, seed=3))
    result = steering_sweep(llama, suite, vectors, SteeringConfig(scales=(-2.0, 3.0), random_draws=5))
    rand, vec, norms = (result.tensors[k] for k in ("random.directions", "vectors.directions",
                                                    "vectors.norms"))
    for s in result.scales:
        added_vec = (s * vec * norms[None, :, None]).norm(dim=-1)  # [concept layer]
        added_rand = (s * rand * norms[None, :, None]).norm(dim=-1)  # [draw layer]
        for li in range(3):
            assert torch.allclose(added_rand[:, li], added_vec[0, li].expand(5), rtol=1e-5)
            assert torch.allclose(added_vec[:, li], added_vec[0, li].expand(3), rtol=1e-5)
    mean, std = result.random_kl()
    assert mean.shape == (1, 3, 2) and (std > 0).all()


# --------------------------------------------------------------------------- the sweep


def test_scale_zero_gives_kl_exactly_zero(llama, suite, vectors):
    result = steering_sweep(llama, suite, vectors, SteeringConfig(scales=(-1.0, 0.0, 1.0),
                                                                  random_draws=2))
    assert (result.tensors["kl.sum"][:, :, 1] == 0).all()
    assert (result.tensors["random.kl.sum"][:, :, 1] == 0).all()
    assert (result.kl()[:, :, [0, 2]] > 0).all()
    # and a real hooked forward with s = 0 is bitwise the clean forward
    enc = encode_prompts([e.prompt for e in suite], llama.tokenizer)
    tokens, roles = enc.tokens, enc.roles
    delta = 0.0 * vectors.directions[0, 1].expand(len(suite), -1)
    with torch.no_grad():
        plain = llama.bridge(tokens)
        with steering(llama, 1, delta, roles):
            steered = llama.bridge(tokens)
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_kl_grows_with_abs_scale(tiny_models, suite, arch):
    model = tiny_models[arch]
    v = steering_vectors(model, list(suite))
    scales = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0)
    kl = steering_sweep(model, suite, v, SteeringConfig(scales=scales, random_draws=0)).mean_kl()[0]
    pos, neg = kl[:, 4:], kl[:, :5].flip(-1)  # |s| increasing from 0, each side
    assert (pos.diff(dim=-1) > 0).all() and (neg.diff(dim=-1) > 0).all()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_exact_path_matches_naive_hooked_forwards(tiny_models, suite, arch):
    model = tiny_models[arch]
    v = steering_vectors(model, list(suite))
    cfg = SteeringConfig(scales=(-3.0, 0.0, 1.5), random_draws=2, max_rows=10)
    fast = steering_sweep(model, suite, v, cfg)
    naive = steering_sweep(model, suite, v, SteeringConfig(**{**cfg.__dict__, "method": "naive"}))
    for key in ("kl.sum", "dlogp.sum", "random.kl.sum", "random.dlogp.sum"):
        assert torch.allclose(fast.tensors[key], naive.tensors[key], atol=1e-4), key


def test_sweep_rejects_bad_input(llama, tiny_models, suite, vectors):
    partial = steering_vectors(llama, list(suite), layers=[0, 1])
    with pytest.raises(SteeringError, match="no steering vector at layer 2"):
        steering_sweep(llama, suite, partial, SteeringConfig(layers=(2,)))
    from tlatlas.errors import FingerprintMismatchError, LayerOutOfRangeError

    with pytest.raises(LayerOutOfRangeError):
        steering_sweep(llama, suite, vectors, SteeringConfig(layers=(7,)))
    with pytest.raises(FingerprintMismatchError):
        steering_sweep(tiny_models["qwen2"], suite, vectors, SteeringConfig())
    other = build_suite("synthetic", seed=42, per_family=2, families=["ioi"])
    with pytest.raises(SteeringError, match="no steering vector for family ioi"):
        steering_sweep(llama, other, vectors, SteeringConfig())
    with pytest.raises(ValueError, match="repeat"):
        SteeringConfig(scales=(1.0, 1.0))
    assert parse_scales("-4:4:9") == (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)
    assert parse_scales("-2,0,2.5") == (-2.0, 0.0, 2.5)


# --------------------------------------------------------------------------- precision


def test_unavailable_precision_is_a_clear_error(tiny_dirs, suite, vectors, monkeypatch):
    with pytest.raises(PrecisionUnavailableError, match="fp16 runs only on CUDA"):
        check_precision("fp16", "cpu")
    with pytest.raises(PrecisionUnavailableError, match="unknown precision 'fp4'"):
        check_precision("fp4", "cpu")
    assert check_precision("nf4", "cpu") == "nf4-fp32"
    calls = []
    with pytest.raises(PrecisionUnavailableError, match="fp16"):  # fails before loading anything
        precision_sweep(tiny_dirs["llama"], suite, vectors, SteeringConfig(), ["fp32", "fp16"],
                        device="cpu", loader=lambda s, p: calls.append(p))
    assert calls == []
    import tlatlas.models.quant as quant

    monkeypatch.setattr(quant, "bitsandbytes_available", lambda: False)
    with pytest.raises(PrecisionUnavailableError, match="nf4-bf16: .*pip install"):
        check_precision("nf4-bf16", "cpu")


@pytest.mark.bitsandbytes
def test_precision_rows_one_copy_resident_at_a_time(tiny_dirs, suite, vectors):
    live = LiveModels()
    cfg = SteeringConfig(scales=(-2.0, 0.0, 2.0), random_draws=2)
    result = precision_sweep(tiny_dirs["llama"], suite, vectors, cfg,
                             ["fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8"], device="cpu",
                             loader=live.load, timing_repeats=1)
    assert live.alive_at_load == [0, 0, 0, 0, 0] and live.alive() == 0
    assert result.precisions == ("fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8")
    assert [f.quantization for f in result.meta.fingerprints] == [
        "none", "none", "nf4-fp32", "nf4-bf16", "int8"]
    bnb = result.meta.precision_specs[3]["bitsandbytes"]
    assert bnb["bnb_4bit_quant_type"] == "nf4" and "bfloat16" in bnb["bnb_4bit_compute_dtype"]
    assert result.meta.precision_specs[1]["dtype"] == "bfloat16"
    amp = result.amplification()
    assert torch.allclose(amp[0, :, [0, 2]], torch.ones(3, 2, dtype=amp.dtype))
    assert torch.isnan(amp[:, :, 1]).all()  # s = 0: KL 0 in every row
    assert (amp[1:, :, [0, 2]] > 0).all()
    assert not torch.equal(result.kl()[2], result.kl()[0])  # nf4 really is another model
    assert (result.tensors["forward_s"] > 0).all() and result.slowdown()[0] == 1


# --------------------------------------------------------------------------- files


def test_save_load_round_trip_and_validation(llama, tiny_models, suite, vectors, tmp_path):
    result = steering_sweep(llama, suite, vectors, SteeringConfig(scales=(-1.0, 0.0, 2.0),
                                                                  random_draws=2),
                            command="tlatlas steer --test")
    stem = tmp_path / "run" / "steer"
    save_steering(result, stem)
    back = load_steering(stem, fingerprint=llama.fingerprint)
    assert isinstance(back, SteeringResult)
    assert (back.families, back.layers, back.scales, back.precisions) == (
        result.families, result.layers, result.scales, result.precisions)
    assert back.meta == result.meta and back.meta.suite_hash == suite.content_hash
    for k, v in result.tensors.items():
        assert torch.equal(back.tensors[k].nan_to_num(-1), v.nan_to_num(-1)), k
    from tlatlas.errors import FingerprintMismatchError

    with pytest.raises(FingerprintMismatchError):
        load_steering(stem, fingerprint=tiny_models["qwen2"].fingerprint)
    tensors_path, meta_path = steering_paths(stem)
    raw = tensors_path.read_bytes()
    tensors_path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SteeringFileError, match="damaged or truncated"):
        load_steering(stem)
    tensors_path.write_bytes(raw)
    meta_path.write_text(meta_path.read_text().replace('"scales": [\n  -1.0,', '"scales": [', 1))
    with pytest.raises(SteeringFileError, match="shape"):
        load_steering(stem)
    meta_path.write_text(meta_path.read_text()[:50])
    with pytest.raises(SteeringFileError, match="not valid JSON"):
        load_steering(stem)


def test_plot_steering_one_panel_per_precision(llama, suite, vectors):
    from matplotlib.figure import Figure

    from tlatlas.viz.steering_plots import plot_steering

    result = steering_sweep(llama, suite, vectors, SteeringConfig(scales=(-1.0, 0.0, 1.0),
                                                                  random_draws=2))
    with pytest.raises(SteeringFileError, match="repeat"):
        SteeringResult.stack([result, result])
    fig = plot_steering(result)
    assert isinstance(fig, Figure)
    drawn = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title().split()[0] for ax in drawn] == ["fp32"]
    assert len(drawn[0].lines) == 3 + 1  # one per layer + the random control's mean


# --------------------------------------------------------------------------- transfer


def test_transfer_to_itself_recovers_r2_one_and_one_model_at_a_time(tiny_dirs, suite, tmp_path):
    from tlatlas.steering.transfer import TransferConfig, save_transfer, steering_transfer

    live = LiveModels()
    prompts = [e.prompt for e in build_suite("synthetic", seed=7, per_family=8)]
    result = steering_transfer(tiny_dirs["llama"], tiny_dirs["llama"], suite, workdir=tmp_path,
                               config=TransferConfig(layer_pairs=((1, 1),)),
                               sweep=SteeringConfig(scales=(-2.0, 0.0, 2.0), random_draws=2),
                               map_prompts=prompts, loader=live.load)
    assert live.alive_at_load == [0, 0] and live.alive() == 0  # never both resident
    m = result.maps[(1, 1)]
    assert result.positions == "all" and m.n_test > 0 and m.r2 > 0.999
    assert torch.allclose(result.cosine, torch.ones_like(result.cosine), atol=1e-3)
    assert torch.allclose(result.transferred.kl(), result.own.kl(), rtol=1e-2, atol=1e-4)
    (sl,) = result.summary()["slopes"]  # the same direction: the same slopes, paired
    assert sl["layer"] == 1 and sl["linear"] is False  # a grid of +-2 only
    assert sl["transferred"]["estimate"] == pytest.approx(sl["own"]["estimate"], abs=1e-3)
    diff = sl["transferred_minus_own"]
    assert abs(diff["estimate"]) < 1e-3 and diff["ci"][1] - diff["ci"][0] < 1e-2
    assert sl["transferred_over_random"]["n"] == sl["own"]["n"] == len(suite)
    assert sl["random"]["draws"] == 2
    assert (tmp_path / "a.acts.safetensors").exists()
    path = save_transfer(result, tmp_path / "t")
    assert path.exists() and steering_paths(tmp_path / "t.own")[0].exists()


def test_transfer_between_models_by_last_token(tiny_dirs, suite, tmp_path):
    from tlatlas.steering.transfer import TransferConfig, TransferError, steering_transfer

    prompts = [e.prompt for e in build_suite("synthetic", seed=7, per_family=10)]
    result = steering_transfer(tiny_dirs["llama"], tiny_dirs["qwen2"], suite, workdir=tmp_path,
                               config=TransferConfig(layer_pairs=((2, 1),), positions="last"),
                               sweep=SteeringConfig(scales=(-2.0, 2.0), random_draws=1),
                               map_prompts=prompts)
    m = result.maps[(2, 1)]
    assert result.positions == "last" and m.n_train + m.n_test == len(prompts)
    assert m.r2 < 0.999  # two unrelated random models: far from the identity's fit
    assert result.transferred.layers == (1,)
    assert result.transferred.meta.vectors["origin"].startswith("transferred from")
    with pytest.raises(TransferError, match="out of range"):
        steering_transfer(tiny_dirs["llama"], tiny_dirs["qwen2"], suite, workdir=tmp_path,
                          config=TransferConfig(layer_pairs=((9, 1),)), map_prompts=prompts)


# --------------------------------------------------------------------------- CLI


def test_cli_steer_writes_result_table_and_figure(tiny_dirs, tmp_path, capsys):
    from tlatlas.cli import main
    from tlatlas.steering import SATURATION_SCALES

    out = tmp_path / "cli"
    rc = main(["steer", "--model", str(tiny_dirs["llama"]), "--device", "cpu", "--per-family", "4",
               "--families", "json", "factual", "--regime", "saturation", "--random-draws", "2",
               "--partition-draws", "2", "--precision", "fp32,bf16", "--out", str(out),
               "--plot", str(out / "fig.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "most steerable layer per family" in text and "amplification median" in text
    assert "scored on 4 held-out prompts (disjoint ids)" in text and "=== bf16" in text
    assert "-- dlogp of the answer" not in text  # the layer x scale grids need --full-table
    result = load_steering(out / "steering")
    assert result.precisions == ("fp32", "bf16") and result.scales == SATURATION_SCALES
    assert result.heldout and result.train_ids.numel() == 4 and result.meta.n_examples == 4
    assert (result.random_draws, result.partition_draws) == (2, 2)
    assert result.meta.config["regime"] == "saturation"
    assert result.meta.command.startswith("tlatlas steer --model")
    assert (out / "fig.png").stat().st_size > 1000
    table = (out / "steering-table.txt").read_text()
    assert "KL / fp32 KL" in table and "-- dlogp of the answer" in table
    rc = main(["steer", "--model", str(tiny_dirs["llama"]), "--device", "cpu",
               "--precision", "fp16", "--out", str(out)])
    assert rc == 2 and "fp16 runs only on CUDA" in capsys.readouterr().err


def test_cli_steer_transfer_to_itself(tiny_dirs, tmp_path, capsys):
    import json

    from tlatlas.cli import main

    d = str(tiny_dirs["llama"])
    rc = main(["steer-transfer", "--from", d, "--to", d, "--families", "json", "factual",
               "--per-family", "2", "--map-per-family", "6", "--scales", "-2,2",
               "--random-draws", "1", "--pairs", "1:1", "--out", str(tmp_path), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == [[1, 1]] and summary["r2"][0] > 0.999
    assert (tmp_path / "transfer.transfer.json").exists()
