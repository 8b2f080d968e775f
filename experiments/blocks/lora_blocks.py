"""LoRA blocks: does the atlas help choose where to adapt, skip, or look during training?

Smoke size (CPU, SmolLM2-135M, one seed; a few LoRA steps per run, so the losses show the
pipeline works, not which strategy wins):

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks lora-strategies,module-sweep,layer-skip,checkpoint-lockin
"""

from collections import defaultdict

from experiments.blocks.base import Block, Statement, by_model_size, register_block, size_costs


def _train_params(smoke: dict, small: dict, full: dict) -> dict:
    base = {"per_family": 1, "top_k": 4, "rank": 8}
    return {"smoke": base | {"steps": 4, "n_train": 8, "n_heldout": 4} | smoke,
            "small": base | {"per_family": 8, "steps": 30, "n_train": 64, "n_heldout": 16} | small,
            "full": base | {"per_family": None, "steps": 200, "n_train": 256,
                            "n_heldout": 64} | full}


def _train_config(params: dict):
    from bridges.train import TrainConfig

    return TrainConfig(steps=params["steps"], n_train=params["n_train"],
                       n_heldout=params["n_heldout"])


def _top_k(ctx) -> int:
    """The configured ``top_k``, at most half the layers (so a selection is a real choice)."""
    return min(int(ctx.params["top_k"]), max(1, ctx.model().n_layers // 2))


def _cost(smoke: float, small: float, full: float) -> dict:
    return size_costs(smoke, small, full, memory=3.0, full_memory=6.0)


def _mean_rows(rows: list[dict], key: str) -> dict[str, dict]:
    """Mean held-out loss / exact match / params per ``key`` value."""
    acc: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        acc[row[key]].append(row)
    return {k: {"heldout_loss_after": sum(r["heldout_loss_after"] for r in v) / len(v),
                "heldout_loss_before": sum(r["heldout_loss_before"] for r in v) / len(v),
                "exact_match_after": sum(r["exact_match_after"] for r in v) / len(v),
                "trainable_params": v[0]["trainable_params"], "n": len(v)}
            for k, v in acc.items()}


# --------------------------------------------------------------------------- strategies


def run_lora_strategies(ctx) -> dict:
    from bridges.studies import strategy_study

    p = ctx.params
    out = strategy_study(ctx.model_name, ctx.model(), ctx.atlas().sums, families=p["families"],
                         seeds=(ctx.seed,), top_k=_top_k(ctx), rank=p["rank"],
                         train=_train_config(p), on_run=ctx.say)
    out["by_strategy"] = _mean_rows(out["rows"], "strategy")
    return out


def summarize_lora_strategies(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("lora-strategies", [])).items():
        rows = [row for r in recs for row in r["value"]["rows"]]
        means = _mean_rows(rows, "strategy")
        paths = tuple(r["path"] for r in recs)
        order = sorted(means, key=lambda k: means[k]["heldout_loss_after"])
        out.append(Statement(kind="claim", sources=paths, text=(
            f"{model} ({size}, {len(recs)} seed(s), families "
            f"{sorted({row['family'] for row in rows})}): held-out loss after LoRA, best first: "
            + "; ".join(f"{k} {means[k]['heldout_loss_after']:.3f} "
                        f"({means[k]['trainable_params']} params)" for k in order) + ".")))
        if "atlas" in means and "random" in means:
            a, r = means["atlas"], means["random"]
            better = a["heldout_loss_after"] < r["heldout_loss_after"]
            out.append(Statement(kind="gem" if better else "threat", sources=paths, text=(
                f"{model} ({size}): atlas-guided LoRA reaches held-out loss "
                f"{a['heldout_loss_after']:.3f} vs random-matched {r['heldout_loss_after']:.3f} at "
                f"the same parameter count ({a['trainable_params']} vs {r['trainable_params']})"
                + ("." if better else ": the atlas does not beat random layer choice here."))))
        if size == "smoke":
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model}: the smoke-size LoRA runs train a few steps on a few examples; their "
                "ranking is noise-level evidence. Rerun with --size small or full.")))
    return out


register_block(Block(
    id="lora-strategies", priority=100, tags=("lora",),
    question="At a matched budget, does atlas-guided LoRA beat random, first/last-k, "
             "Block Influence, uniform o_proj, AdaLoRA and all-linear adapters?",
    params=_train_params({"families": ["json"]}, {"families": ["json", "factual", "code"]},
                         {"families": ["json", "factual", "code"]}),
    cost=_cost(150, 3000, 20000), run=run_lora_strategies, summarize=summarize_lora_strategies))


# --------------------------------------------------------------------------- module sweep


def run_module_sweep(ctx) -> dict:
    from bridges.export import rank_layers
    from bridges.studies import module_sweep

    p = ctx.params
    layers = sorted(rank_layers(ctx.atlas().sums)[: _top_k(ctx)])
    out = module_sweep(ctx.model_name, ctx.model(), layers, family=p["family"], seeds=(ctx.seed,),
                       rank=p["rank"], train=_train_config(p), on_run=ctx.say)
    out["by_module_set"] = _mean_rows(out["rows"], "module_set")
    return out


def summarize_module_sweep(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("module-sweep", [])).items():
        rows = [row for r in recs for row in r["value"]["rows"]]
        means = _mean_rows(rows, "module_set")
        layers = recs[0]["value"]["layers"]
        out.append(Statement(kind="claim", sources=tuple(r["path"] for r in recs), text=(
            f"{model} ({size}): with the layers fixed at {layers}, held-out loss by module set: "
            + "; ".join(f"{k} {m['heldout_loss_after']:.3f} ({m['trainable_params']} params)"
                        for k, m in sorted(means.items(), key=lambda kv: kv[1]["trainable_params"]))
            + ". Layers are held fixed, so only the module type and its parameter count differ.")))
    return out


register_block(Block(
    id="module-sweep", priority=110, tags=("lora",),
    question="With layers held fixed, which modules (o, qkv, MLP, all) give the most per parameter?",
    params=_train_params({"family": "json"}, {"family": "json"}, {"family": "json"}),
    cost=_cost(90, 1200, 8000), run=run_module_sweep, summarize=summarize_module_sweep))


# --------------------------------------------------------------------------- layer skip


def run_layer_skip(ctx) -> dict:
    from dataclasses import replace

    from bridges.skip import layer_skip_study

    p = ctx.params
    recovery = replace(_train_config(p), family="any")
    return layer_skip_study(ctx.model_name, ctx.model(), ctx.atlas().sums, k=p["k"],
                            seed=ctx.seed, recovery=recovery, rank=p["rank"], on_run=ctx.say)


def summarize_layer_skip(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("layer-skip", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            rows = {row["skip_set"]: row for row in r["value"]["rows"]}

            def fmt(row):
                b, a = row["before"], row.get("after")
                return (f"{row['skip_set']} {row['layers_skipped']}: top-5 overlap "
                        f"{b['top5_overlap']:.2f}, KL {b['kl']:.3f}"
                        + (f" -> after recovery {a['top5_overlap']:.2f}, KL {a['kl']:.3f}"
                           if a else ""))
            out.append(Statement(kind="claim", sources=(r["path"],), text=(
                f"{model} ({size}, seed {r['seed']}): skipping {r['value']['k']} blocks; "
                + "; ".join(fmt(row) for row in rows.values()) + ".")))
            if "atlas" in rows and "random" in rows:
                a, x = rows["atlas"]["before"], rows["random"]["before"]
                better = a["kl"] < x["kl"]
                out.append(Statement(kind="gem" if better else "threat", sources=(r["path"],),
                                     text=(
                    f"{model} ({size}, seed {r['seed']}): skipping the atlas's least important "
                    f"blocks costs KL {a['kl']:.3f} vs {x['kl']:.3f} for a random set of the "
                    "same size" + (": the atlas ranks blocks usefully for skipping." if better
                                   else ": the atlas did not pick a safer skip set here."))))
    return out


register_block(Block(
    id="layer-skip", priority=120, tags=("lora",),
    question="Can the atlas's least important blocks be skipped, and does a short LoRA recover them?",
    params=_train_params({"k": 2}, {"k": 4}, {"k": 4}),
    cost=_cost(120, 1500, 8000), run=run_layer_skip, summarize=summarize_layer_skip))


# --------------------------------------------------------------------------- checkpoint lock-in


def run_checkpoint_lockin(ctx) -> dict:
    from bridges.stability import stability_study
    from tlatlas.atlas.pipeline import SuiteSpec

    p = ctx.params
    spec = SuiteSpec(per_family=p["per_family"] or 8, seed=ctx.seed)
    steps = p["steps"]
    return stability_study(ctx.model_name, ctx.model(), ctx.atlas().sums, family=p["family"],
                           checkpoints=(0, steps // 2, steps), top_k=_top_k(ctx), rank=p["rank"],
                           seed=ctx.seed, train=_train_config(p), spec=spec, on_run=ctx.say)


def summarize_checkpoint_lockin(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("checkpoint-lockin", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            out.append(Statement(kind="gem" if v["hub_moved"] else "claim", sources=(r["path"],),
                                 text=(
                f"{model} ({size}, seed {r['seed']}): during LoRA on {v['family']}, the hub at "
                "steps " + ", ".join(f"{row['steps']}: L{row['hub_layer']} (Spearman vs step 0 "
                                     f"{row['spearman_vs_step0']:.2f})" for row in v["rows"])
                + ("; the hub moved." if v["hub_moved"] else "; the hub did not move."))))
    return out


register_block(Block(
    id="checkpoint-lockin", priority=130, tags=("lora", "atlas"),
    question="Does the atlas (its hub) move while a LoRA adapter trains?",
    params=_train_params({"family": "json"}, {"family": "json"}, {"family": "json"}),
    cost=_cost(200, 2500, 15000), run=run_checkpoint_lockin,
    summarize=summarize_checkpoint_lockin))
