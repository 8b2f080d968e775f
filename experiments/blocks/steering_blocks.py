"""Steering and quantization blocks: how steerable is each layer, against random directions,
in quantized copies, and carried from one model to another?

Smoke size (CPU, SmolLM2-135M, one seed):

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks quant-speed,steer-controls,steer-quant
    python -m experiments.run --models smollm2-135m gemma3-270m --size smoke --blocks steer-transfer

Verdicts. These blocks record means over examples (and, for timings, one measurement), not
per-example values, so they have no interval yet: every claim carries its n and the
verdict *inconclusive* (no interval), or *smoke: not evidence* at smoke size, and none is
a gem. Per-example steerability with intervals is the steering rework of issue 15.
"""

from experiments.blocks.base import Block, Statement, by_model_size, register_block, size_costs
from experiments.context import release_models

QUANT_PRECISIONS = ("fp32", "bf16", "nf4-fp32", "nf4-bf16", "int8")


def _claim(text: str, n: int, size: str, sources: tuple[str, ...]) -> Statement:
    """A claim without an interval (the block's stated rule): never evidence on its own."""
    return Statement(kind="claim", text=text, sources=sources, n=int(n),
                     verdict="smoke: not evidence" if size == "smoke" else "inconclusive")


def _sized(smoke: dict, small: dict, full: dict) -> dict:
    return {"smoke": smoke, "small": small, "full": full}


def _cost(smoke: float, small: float, full: float, memory: float = 3.0) -> dict:
    return size_costs(smoke, small, full, memory=memory, full_memory=memory * 2)


def _layers(params: dict, n_layers: int) -> tuple[int, ...]:
    return tuple(range(0, n_layers, int(params.get("layer_stride", 1))))


def _config(params: dict, n_layers: int):
    from tlatlas.steering import SteeringConfig

    return SteeringConfig(scales=tuple(float(s) for s in params["scales"]), layers=_layers(params, n_layers),
                          random_draws=int(params["random_draws"]))


# --------------------------------------------------------------------------- quant speed


def run_quant_speed(ctx) -> dict:
    """Forward time and next-token KL against fp32 of each precision copy, one at a time."""
    import torch

    from tlatlas.metrics import effects
    from tlatlas.steering.precision import free_model, load_precision, time_forward
    from tlatlas.tokens import encode_batch

    examples = list(ctx.suite())
    release_models()
    out, ref = {}, None
    for label in ctx.params["precisions"]:
        ctx.say(f"precision {label}")
        model = load_precision(ctx.model_name, label)
        ctx.fingerprints.setdefault(ctx.model_name, model.fingerprint.to_dict())
        try:
            seconds = time_forward(model, examples, repeats=int(ctx.params["repeats"]))
            batch = encode_batch(examples, model.tokenizer)
            with torch.inference_mode():
                logits = model.hf_model(batch.tokens.to(model.device)).logits.float()
            scored = logits[torch.arange(len(examples)), batch.scored_pos.to(logits.device)].cpu()
        finally:
            del model
            free_model()
        ref = scored if ref is None else ref
        out[label] = {"precision": label, "forward_s": seconds,
                      "kl_vs_first": float(effects(ref, scored, batch.target).kl.mean()),
                      "top1_agreement": float((ref.argmax(-1) == scored.argmax(-1)).float().mean()),
                      "accuracy": float((scored.argmax(-1) == batch.target).float().mean())}
    first = ctx.params["precisions"][0]
    for label in out:
        out[label]["slowdown"] = out[label]["forward_s"] / out[first]["forward_s"]
    return {"reference": first, "n_examples": len(examples), "precisions": list(out.values())}


def summarize_quant_speed(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("quant-speed", [])).items():
        r = recs[0]
        p = {row["precision"]: row for row in r["value"]["precisions"]}
        n = r["value"]["n_examples"]
        out.append(_claim(
            f"{model} ({size}): forward time relative to {r['value']['reference']} on the same "
            f"{n} prompts: " + ", ".join(
                f"{k} {v['slowdown']:.2f}x (KL {v['kl_vs_first']:.4f} nats, top-1 agreement "
                f"{v['top1_agreement']:.0%})" for k, v in p.items()), n, size, (r["path"],)))
        if "nf4-fp32" in p and "int8" in p:
            faster = "NF4" if p["nf4-fp32"]["forward_s"] < p["int8"]["forward_s"] else "int8"
            out.append(_claim(
                f"{model} ({size}): {faster} is the faster quantized copy on this device "
                f"(NF4/fp32-compute {p['nf4-fp32']['forward_s']:.3f}s vs int8 "
                f"{p['int8']['forward_s']:.3f}s per pass, one timing each)", n, size,
                (r["path"],)))
    return out


register_block(Block(
    id="quant-speed", priority=190, seeded=False, tags=("quant",),
    question="How much slower (and how different) are NF4 and int8 copies than full precision?",
    params=_sized({"per_family": 1, "precisions": list(QUANT_PRECISIONS), "repeats": 2},
                  {"per_family": 4, "precisions": list(QUANT_PRECISIONS), "repeats": 3},
                  {"per_family": 16, "precisions": list(QUANT_PRECISIONS), "repeats": 5}),
    cost=_cost(60, 150, 600), run=run_quant_speed, summarize=summarize_quant_speed))


# --------------------------------------------------------------------------- steering + controls


def _steering_summary(result) -> dict:
    import torch

    kl = result.mean_kl()  # [precision layer scale]
    rnd, rnd_std = result.random_kl()
    scales = torch.tensor(result.scales)
    top = int(scales.abs().argmax())
    value = {"precisions": list(result.precisions), "layers": list(result.layers),
             "scales": list(result.scales), "families": list(result.families),
             "mean_kl": kl.tolist(), "random_kl": rnd.tolist(), "random_kl_std": rnd_std.tolist(),
             "top_scale": float(scales[top]), "n_examples": result.meta.n_examples,
             "suite_hash": result.meta.suite_hash,
             "most_steerable": {p: {f: list(v) for f, v in result.most_steerable(p).items()}
                                for p in result.precisions}}
    # steering over random at the largest |scale|, per precision and layer
    value["kl_over_random_at_top_scale"] = (kl[..., top] / rnd[..., top].clamp(min=1e-12)).tolist()
    if "fp32" in result.precisions and len(result.precisions) > 1:
        value["amplification"] = result.amplification("fp32").tolist()
        value["forward_s"] = result.tensors["forward_s"].tolist()
        value["slowdown"] = result.slowdown("fp32").tolist()
    return value


def run_steer_controls(ctx) -> dict:
    from tlatlas.steering import steering_sweep, steering_vectors

    model = ctx.model()
    examples = list(ctx.suite())
    config = _config(ctx.params, model.n_layers)
    vectors = steering_vectors(model, examples, layers=config.layers)
    return _steering_summary(steering_sweep(model, examples, vectors, config))


def summarize_steer_controls(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("steer-controls", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            ratio = v["kl_over_random_at_top_scale"][0]
            best = max(range(len(ratio)), key=lambda i: ratio[i])
            kl = v["mean_kl"][0]
            top = v["scales"].index(v["top_scale"])
            out.append(_claim(
                f"{model} ({size}, seed {r['seed']}): at scale {v['top_scale']:+g} the "
                f"difference-of-means vector moves the next-token distribution most at layer "
                f"L{v['layers'][max(range(len(kl)), key=lambda i: kl[i][top])]} "
                f"(KL {max(row[top] for row in kl):.3f} nats); relative to norm-matched random "
                f"directions it is strongest at L{v['layers'][best]} ({ratio[best]:.1f}x the "
                f"random KL of {v['random_kl'][0][best][top]:.3f} nats)", v["n_examples"], size,
                (r["path"],)))
            weak = [v["layers"][i] for i, x in enumerate(ratio) if x < 1.5]
            if weak:
                out.append(Statement(kind="threat", sources=(r["path"],), text=(
                    f"{model} ({size}, seed {r['seed']}): at layers {weak} the steering vector's "
                    f"KL is under 1.5x that of a random direction of the same norm at scale "
                    f"{v['top_scale']:+g}: there its effect is mostly the norm, not the direction.")))
    return out


register_block(Block(
    id="steer-controls", priority=200, tags=("steering",),
    question="Which layers are steerable by a family's direction beyond a norm-matched random one?",
    params=_sized({"per_family": 1, "scales": [-4, -2, 0, 2, 4], "random_draws": 2,
                   "layer_stride": 3},
                  {"per_family": 4, "scales": [-4, -3, -2, -1, 0, 1, 2, 3, 4], "random_draws": 4},
                  {"per_family": 16, "scales": [-4, -3, -2, -1, 0, 1, 2, 3, 4],
                   "random_draws": 8}),
    cost=_cost(120, 1500, 9000), run=run_steer_controls, summarize=summarize_steer_controls))


# --------------------------------------------------------------------------- quantized steering


def run_steer_quant(ctx) -> dict:
    from tlatlas.steering import steering_vectors
    from tlatlas.steering.precision import precision_sweep

    model = ctx.model()
    examples = list(ctx.suite())
    config = _config(ctx.params, model.n_layers)
    vectors = steering_vectors(model, examples, layers=config.layers)
    del model
    release_models()  # one precision copy resident at a time
    result = precision_sweep(ctx.model_name, examples, vectors, config,
                             precisions=tuple(ctx.params["precisions"]), on_precision=ctx.say)
    return _steering_summary(result)


def summarize_steer_quant(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("steer-quant", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            top = v["scales"].index(v["top_scale"])
            amp = {p: [row[top] for row in v["amplification"][i]]
                   for i, p in enumerate(v["precisions"])}
            mean_amp = {p: sum(x for x in a if x == x) / max(sum(x == x for x in a), 1)
                        for p, a in amp.items()}
            out.append(_claim(
                f"{model} ({size}, seed {r['seed']}): amplification (quantized KL / fp32 KL, "
                f"same fp32-computed vectors, scale {v['top_scale']:+g}, mean over layers "
                f"{v['layers']}): " + ", ".join(f"{p} {a:.2f}" for p, a in mean_amp.items())
                + "; forward slowdown " + ", ".join(
                    f"{p} {s:.2f}x" for p, s in zip(v["precisions"], v["slowdown"], strict=True)),
                v["n_examples"], size, (r["path"],)))
            nf4 = [p for p in ("nf4-fp32", "nf4-bf16") if p in mean_amp]
            if len(nf4) == 2:
                gap = abs(mean_amp["nf4-fp32"] - mean_amp["nf4-bf16"])
                out.append(Statement(kind="threat", sources=(r["path"],), text=(
                    f"{model} ({size}, seed {r['seed']}): NF4 with fp32 compute amplifies "
                    f"{mean_amp['nf4-fp32']:.2f}x and NF4 with bf16 compute "
                    f"{mean_amp['nf4-bf16']:.2f}x: "
                    + ("the compute dtype moves the amplification, so a quantization claim "
                       "must fix it." if gap > 0.1 else
                       f"the compute dtype changes it by only {gap:.2f}, so any difference from "
                       "fp32 here is NF4's, not the dtype's."))))
    return out


register_block(Block(
    id="steer-quant", priority=220, tags=("steering", "quant"),
    question="Do NF4/int8 copies amplify steering relative to fp32, apart from dtype effects?",
    params=_sized({"per_family": 1, "scales": [-4, 0, 4], "random_draws": 1, "layer_stride": 10,
                   "precisions": list(QUANT_PRECISIONS)},
                  {"per_family": 2, "scales": [-4, -2, 0, 2, 4], "random_draws": 2,
                   "layer_stride": 3, "precisions": list(QUANT_PRECISIONS)},
                  {"per_family": 8, "scales": [-4, -3, -2, -1, 0, 1, 2, 3, 4], "random_draws": 4,
                   "precisions": list(QUANT_PRECISIONS)}),
    cost=_cost(200, 2000, 20000), run=run_steer_quant, summarize=summarize_steer_quant))


# --------------------------------------------------------------------------- transfer


def run_steer_transfer(ctx) -> dict:
    from tlatlas.steering import SteeringConfig
    from tlatlas.steering.transfer import steering_transfer

    release_models()  # the transfer loads A, then B, never both
    work = ctx.root / "artifacts" / "transfer" / f"{ctx.size}-seed{ctx.seed}"
    sweep = SteeringConfig(scales=tuple(float(s) for s in ctx.params["scales"]),
                           random_draws=int(ctx.params["random_draws"]))
    result = steering_transfer(ctx.models[0], ctx.models[1], list(ctx.suite()), workdir=work,
                               sweep=sweep, on_stage=ctx.say)
    summary = result.summary()
    for name, key in ((ctx.models[0], "fingerprint_a"), (ctx.models[1], "fingerprint_b")):
        ctx.fingerprints[name] = summary["meta"][key]
    return summary


def summarize_steer_transfer(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for r in results.get("steer-transfer", []):
        v = r["value"]
        top = max(range(len(v["scales"])), key=lambda i: abs(v["scales"][i]))
        rows = [(p, r2, own[top], tr[top], rnd[top]) for p, r2, own, tr, rnd in zip(
            v["pairs"], v["r2"], v["own_kl"], v["transferred_kl"], v["random_kl"], strict=True)]
        out.append(_claim(
            f"steering transfer {v['meta']['model_a']} -> {v['meta']['model_b']} ({r['size']}, "
            f"seed {r['seed']}), scale {v['scales'][top]:+g}: " + "; ".join(
                f"L{a}->L{b} held-out R² {r2:.2f} (n = held-out samples), KL own {o:.3f} / transferred {t:.3f} / "
                f"random {x:.3f}" for (a, b), r2, o, t, x in rows) + " nats",
            min(v["n_test"]) if v.get("n_test") else 0, r["size"], (r["path"],)))
    return out


register_block(Block(
    id="steer-transfer", priority=230, models=2, tags=("steering",),
    question="Do one model's steering vectors, carried by a linear map, steer another model?",
    params=_sized({"per_family": 2, "scales": [-4, 0, 4], "random_draws": 2},
                  {"per_family": 8, "scales": [-4, -2, 0, 2, 4], "random_draws": 4},
                  {"per_family": 32, "scales": [-4, -3, -2, -1, 0, 1, 2, 3, 4],
                   "random_draws": 8}),
    cost=_cost(200, 1500, 9000, memory=4.0), run=run_steer_transfer,
    summarize=summarize_steer_transfer))
