"""LoRA blocks: does the atlas help choose where to adapt, skip, or look during training?

Smoke size (CPU, SmolLM2-135M, one seed; a few LoRA steps per run, so the losses show the
pipeline works, not which strategy wins):

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks lora-strategies,module-sweep,layer-skip,checkpoint-lockin
"""

from collections import defaultdict

from experiments.blocks import Block, Cost, Statement, register_block
from experiments.blocks.atlas_blocks import _by_model


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


def _cost(smoke: float, small: float, full: float) -> dict:
    return {"smoke": Cost(seconds=smoke, memory_gb=3.0), "small": Cost(seconds=small, memory_gb=3.0),
            "full": Cost(seconds=full, memory_gb=6.0, gpus=1.0)}


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
                         seeds=(ctx.seed,), top_k=p["top_k"], rank=p["rank"],
                         train=_train_config(p), on_run=ctx.say)
    out["by_strategy"] = _mean_rows(out["rows"], "strategy")
    return out


def summarize_lora_strategies(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in _by_model(results.get("lora-strategies", [])).items():
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
    layers = sorted(rank_layers(ctx.atlas().sums)[: p["top_k"]])
    out = module_sweep(ctx.model_name, ctx.model(), layers, family=p["family"], seeds=(ctx.seed,),
                       rank=p["rank"], train=_train_config(p), on_run=ctx.say)
    out["by_module_set"] = _mean_rows(out["rows"], "module_set")
    return out


def summarize_module_sweep(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in _by_model(results.get("module-sweep", [])).items():
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
