"""LoRA blocks: does the atlas help choose where to adapt, skip, or look during training?

Commands (CPU; ``small`` is powered for a 2-core CPU, ``full`` is the origin report's scale
for a GPU; n and CPU time per block in docs/experiments.md)::

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks lora-strategies,module-sweep,layer-skip,checkpoint-lockin
    python -m experiments.run --model smollm2-135m --size small --seeds 42 \\
        --blocks lora-strategies,module-sweep,layer-skip,checkpoint-lockin

Each block's design, n and measured CPU time per size are in docs/experiments.md (kept
there, not here: this module's source is part of its results' provenance).

The atlas that chooses layers is built here, not taken from the hub blocks: zero ablation,
``atlas_per_family`` examples of every family (16 at ``small``), positions ablated
``all-but-bos`` for the LoRA blocks (BOS is an attention sink; DESIGN §10) and ``all`` for
layer skip (skipping a block removes its write at every position, BOS included, so that is
the atlas whose block effect a one-block skip equals). Both policies are recorded in the
result (``chooser``).

Rule. Every claim rests on a paired comparison with a 95% bootstrap interval and its n
(bridges.compare, bridges.skip_sets; pairs are training seeds x held-out prompts, or
held-out prompts, or atlas examples), signed so that a positive value favours the claim
as written; the verdict is :func:`experiments.blocks.base.judged`'s default: *supported*
when the interval lies above 0, *contradicted* when below, else *inconclusive*; at
``smoke`` size every claim is "smoke: not evidence". A gem is a supported claim only.
Threats carry no verdict: an underpowered chooser atlas, AdaLoRA not run, a training loss
still falling, a smoke-size run.
"""

from experiments.blocks.base import (
    Block,
    Statement,
    by_model_size,
    judged,
    register_block,
    size_costs,
)

CHOOSER_POLICY = "all-but-bos"
"""Positions the layer-choosing atlas ablates for the LoRA blocks."""
SKIP_POLICY = "all"
"""Positions the skip-choosing atlas ablates (a skipped block writes nothing anywhere)."""
ATLAS_COMPONENTS = ("block",)
"""The layer-map components the chooser and checkpoint atlases compute: layer choice
(:func:`bridges.export.rank_layers`), skip sets and the lock-in margin read the block
ablation only, so attention and MLP ablations would triple the cost for nothing."""


def _sizes(smoke: dict, small: dict, full: dict) -> dict:
    """Parameters per size. ``per_family`` (the suite the result's hash records and the
    runner's atlas is built on) is the chooser atlas's ``atlas_per_family``; no
    ``families`` key, so that atlas covers every family. At ``small`` a block runs on one
    suite seed (``suite_seeds``, read by the runner): its claims' n is training seeds x
    held-out prompts within the run, and one seed is what a 2-core CPU affords; ``full``
    replicates over the default three."""
    base = {"top_k": 4, "rank": 8, "components": list(ATLAS_COMPONENTS)}
    sizes = {"smoke": base | {"atlas_per_family": 2, "train_seeds": 1, "steps": 4,
                              "n_train": 8, "n_heldout": 4} | smoke,
             "small": base | {"atlas_per_family": 16, "train_seeds": 2, "steps": 60,
                              "n_train": 64, "n_heldout": 32, "suite_seeds": [42]} | small,
             "full": base | {"atlas_per_family": None, "train_seeds": 3, "steps": 200,
                             "n_train": 256, "n_heldout": 64} | full}
    return {k: {"per_family": v["atlas_per_family"]} | v for k, v in sizes.items()}


def _train_config(params: dict, **extra):
    from bridges.train import TrainConfig

    return TrainConfig(steps=params["steps"], n_train=params["n_train"],
                       n_heldout=params["n_heldout"], **extra)


def _train_seeds(ctx) -> tuple[int, ...]:
    """Training seeds of one block run: distinct across the runner's suite seeds."""
    return tuple(1000 * ctx.seed + i for i in range(int(ctx.params["train_seeds"])))


def _top_k(ctx) -> int:
    """The configured ``top_k``, at most half the layers (so a selection is a real choice)."""
    return min(int(ctx.params["top_k"]), max(1, ctx.model().n_layers // 2))


def _cost(smoke: float, small: float, full: float) -> dict:
    return size_costs(smoke, small, full, memory=3.0, full_memory=6.0)


def chooser_atlas(ctx, positions_ablated: str = CHOOSER_POLICY):
    """The zero-ablation atlas over every family (``per_family`` = ``atlas_per_family``
    each, this run's seed) that chooses layers; the runner computes it once per model,
    seed, size and policy and keeps it under ``<root>/artifacts/``."""
    return ctx.atlas(positions_ablated=positions_ablated)


def _interval(d: dict):
    from tlatlas.stats import Interval

    return Interval(estimate=d["estimate"], ci_low=d["ci"][0], ci_high=d["ci"][1], n=d["n"])


def _negated(d: dict) -> dict:
    return {**d, "estimate": -d["estimate"], "ci": [-d["ci"][1], -d["ci"][0]]}


def _ci(d: dict) -> str:
    return f"{d['estimate']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _chooser_threats(model, size, r, paths) -> list[Statement]:
    c = r["value"].get("chooser") or {}
    if c and not c.get("powered", False):
        return [Statement(kind="threat", sources=paths, text=(
            f"{model} ({size}, seed {r['seed']}): the atlas that chose the layers has "
            f"{c['min_per_family']} example(s) in its smallest family (powered: >= 16); its "
            "layer ranking may be noise."))]
    return []


# --------------------------------------------------------------------------- strategies


def run_lora_strategies(ctx) -> dict:
    from bridges.studies import strategy_study

    p = ctx.params
    atlas = chooser_atlas(ctx)
    return strategy_study(ctx.model_name, ctx.model(), atlas, families=p["train_families"],
                          seeds=_train_seeds(ctx), random_draws=p["random_draws"],
                          top_k=_top_k(ctx), rank=p["rank"], train=_train_config(p),
                          on_run=ctx.say)


STRATEGY_ORIGINS = {"random": ("lora-vs-random", True),
                    "all-linear": ("lora-vs-all-linear", True),
                    "last-k": ("late-layers", False)}
"""The origin claim each comparison answers ("atlas beats last-k" is the opposite of
"target late layers")."""


def summarize_lora_strategies(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("lora-strategies", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v, paths = r["value"], (r["path"],)
            by = {}
            for row in v["rows"]:
                by.setdefault(row["strategy"], []).append(row)
            order = sorted(by, key=lambda k: _mean(by[k], "heldout_loss_after"))
            ranking = "; ".join(f"{k} {_mean(by[k], 'heldout_loss_after'):.3f} "
                                f"({by[k][0]['trainable_params']} params)" for k in order)
            d = v["design"]
            head = (f"{model} ({size}, seed {r['seed']}, {len(d['seeds'])} training seed(s) x "
                    f"{d['random_draws']} random draw(s), families {d['families']}, "
                    f"{d['n_heldout']} held-out prompts each, {d['steps']} steps)")
            atlas_layers = by["atlas"][0]["layers"] if "atlas" in by else None
            for name, c in v["comparisons"].items():
                if not c.get("n"):
                    continue
                first = by[name][0]
                same = ", the same layers" if first["layers"] == atlas_layers else ""
                text = (f"{head}: atlas-guided LoRA ({by['atlas'][0]['trainable_params']} "
                        f"params) beats {name} ({first['trainable_params']} params{same}) on "
                        f"held-out loss ({name} - atlas = {_ci(c['loss'])} nats; exact match "
                        f"atlas - {name} = {_ci(c['exact_match'])})")
                if name == "random":
                    text += f"; held-out loss after LoRA, best first: {ranking}"
                origin, agrees = STRATEGY_ORIGINS.get(name, (None, True))
                out.append(judged(text + ".", _interval(c["loss"]), size=size, sources=paths,
                                  kind="gem" if name == "random" else "claim", origin=origin,
                                  agrees=agrees, model=model,
                                  value=f"{name} − atlas {c['loss']['estimate']:.3f} nats"))
            out += _chooser_threats(model, size, r, paths)
            for name, why in v.get("skipped", {}).items():
                out.append(Statement(kind="threat", sources=paths, text=(
                    f"{model} ({size}, seed {r['seed']}): {name} {why}.")))
            flat = [row["flattening"] for row in by.get("all-linear", [])
                    if row.get("flattening") is not None]
            if flat and max(flat) > 0.05:
                out.append(Statement(kind="threat", sources=paths, text=(
                    f"{model} ({size}, seed {r['seed']}): all-linear's training loss still "
                    f"fell {max(flat):.0%} over the last fifth of its {d['steps']} steps; "
                    "the runs may be too short to converge.")))
            if size == "smoke":
                out.append(Statement(kind="threat", sources=paths, text=(
                    f"{model}: the smoke-size LoRA runs train a few steps on a few examples; "
                    "their ranking is not evidence. Rerun with --size small or full.")))
    return out


register_block(Block(
    id="lora-strategies", priority=100, tags=("lora",),
    question="At a matched budget, does atlas-guided LoRA beat random, first/last-k, "
             "Block Influence, uniform o_proj, AdaLoRA and all-linear adapters?",
    params=_sizes({"train_families": ["json"], "random_draws": 2},
                  {"train_families": ["json"], "random_draws": 3},
                  {"train_families": ["json", "factual", "code"], "random_draws": 5}),
    cost=_cost(370, 3600, 20000), run=run_lora_strategies,
    summarize=summarize_lora_strategies))


# --------------------------------------------------------------------------- module sweep


def run_module_sweep(ctx) -> dict:
    from bridges.export import rank_layers
    from bridges.module_sweep import module_sweep, rank_costs
    from bridges.studies import chooser_record

    p = ctx.params
    atlas = chooser_atlas(ctx)
    layers = sorted(rank_layers(atlas.sums)[: _top_k(ctx)])
    grain = max(rank_costs(ctx.model(), layers).values())
    out = module_sweep(ctx.model_name, ctx.model(), layers, family=p["family"],
                       seeds=_train_seeds(ctx), budgets=[grain * r for r in p["all_ranks"]],
                       train=_train_config(p), on_run=ctx.say)
    out["chooser"] = chooser_record(atlas)
    return out


def summarize_module_sweep(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("module-sweep", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v, paths = r["value"], (r["path"],)
            for point in v["budgets"]:
                losses: dict[str, list[float]] = {}
                for row in v["rows"]:
                    if row["budget"] == point["requested"]:
                        losses.setdefault(row["module_set"], []).append(
                            row["heldout_loss_after"])
                params = point["trainable_params"]
                curve = ", ".join(f"{k} {sum(x) / len(x):.3f}" for k, x in losses.items())
                for name, c in v["comparisons"][str(point["requested"])].items():
                    if not c.get("n"):
                        continue
                    out.append(judged(
                        f"{model} ({size}, seed {r['seed']}): with the layers fixed at "
                        f"{v['layers']} and equal trainable parameters ({params['o']} for o, "
                        f"{params[name]} for {name}; spread {point['spread']:.1%}), o_proj "
                        f"beats {name} on held-out loss ({name} - o = {_ci(c['loss'])} nats; "
                        f"exact match o - {name} = {_ci(c['exact_match'])}). Mean held-out "
                        f"loss at this budget: {curve}.",
                        _interval(c["loss"]), size=size, sources=paths,
                        kind="gem" if name == "mlp" else "claim", origin="o-proj", model=model,
                        value=f"{name} − o {c['loss']['estimate']:.3f} nats at {params['o']} "
                              "params"))
            out += _chooser_threats(model, size, r, paths)
    return out


register_block(Block(
    id="module-sweep", priority=110, tags=("lora",),
    question="With layers held fixed and parameters equal, which modules (o, qkv, MLP, all) "
             "give the lowest held-out loss?",
    params=_sizes({"family": "json", "all_ranks": [8]},
                  {"family": "json", "all_ranks": [4, 16]},
                  {"family": "json", "all_ranks": [2, 4, 8, 16, 32]}),
    cost=_cost(70, 2800, 8000), run=run_module_sweep, summarize=summarize_module_sweep))


# --------------------------------------------------------------------------- layer skip


def run_layer_skip(ctx) -> dict:
    from bridges.skip import layer_skip_study
    from bridges.studies import chooser_record

    p = ctx.params
    atlas = chooser_atlas(ctx, SKIP_POLICY)
    out = layer_skip_study(ctx.model_name, ctx.model(), atlas.sums, k=p["k"], seed=ctx.seed,
                           recovery=_train_config(p, family="any", lr=p["lr"]),
                           rank=p["rank"], max_sets=p["max_sets"], on_run=ctx.say)
    out["chooser"] = chooser_record(atlas)
    return out


def _overlap_claims(head: str, model: str, size: str, v: dict, paths) -> list[Statement]:
    """"All layers are necessary" (0% top-5 overlap after any skip): the per-prompt top-5
    overlap after skipping the atlas's set, before recovery; its CI above 0 contradicts it."""
    import torch

    from tlatlas.stats import bootstrap_mean

    out = []
    for row in v["rows"]:
        per_prompt = row["before"].get("top5_per_prompt")
        if row["skip_set"] != "atlas" or not per_prompt:
            continue
        iv = bootstrap_mean(torch.tensor(per_prompt, dtype=torch.float64))
        out.append(judged(
            f"{head}: skipping the atlas's {v['k']} least important blocks "
            f"{row['layers_skipped']} keeps part of the full model's top 5 (mean top-5 overlap "
            f"{iv.estimate:.2f} [{iv.ci_low:.2f}, {iv.ci_high:.2f}] before recovery; the origin "
            "report found 0% for every skip set)", iv, size=size, sources=paths,
            origin="all-layers-necessary", agrees=False, model=model,
            value=f"top-5 overlap {iv.estimate:.2f}"))
    return out


def summarize_layer_skip(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("layer-skip", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v, paths = r["value"], (r["path"],)
            sets, dist = v["sets"], v["distribution"]
            a, bi = sets["atlas"], sets["block-influence"]
            pa, pb = a["percentile"], bi["percentile"]
            where = (f"all {dist['n_sets']}" if dist["exhaustive"]
                     else f"{dist['n_sets']} random (of {dist['total_sets']})")
            head = f"{model} ({size}, seed {r['seed']}, {v['n_prompts']} held-out prompts)"
            out.append(judged(
                f"{head}: skipping {v['k']} blocks, the atlas's least important {a['layers']} "
                f"cost KL {a['kl']:.3f} nats, at percentile {pa['estimate']:.0f} "
                f"[{pa['ci'][0]:.0f}, {pa['ci'][1]:.0f}] of {where} same-size skip sets (0: "
                f"none is safer); Block Influence's {bi['layers']} cost {bi['kl']:.3f} "
                f"(percentile {pb['estimate']:.0f}). The atlas's set is safer than the average same-size set (mean "
                f"over sets - atlas = {_ci(v['comparisons']['random_sets_minus_atlas'])} nats).",
                _interval(v["comparisons"]["random_sets_minus_atlas"]), size=size,
                sources=paths, kind="gem", origin="g4-skip-recovery", model=model,
                value=f"sets − atlas {v['comparisons']['random_sets_minus_atlas']['estimate']:.3f}"
                      " nats"))
            out.append(judged(
                f"{head}: skipping {v['k']} blocks, the atlas's set is safer than Block "
                f"Influence's (BI - atlas = "
                f"{_ci(v['comparisons']['block_influence_minus_atlas'])} nats of KL).",
                _interval(v["comparisons"]["block_influence_minus_atlas"]), size=size,
                sources=paths))
            out += _overlap_claims(head, model, size, v, paths)
            for row in v["rows"]:
                if "recovery" not in row:
                    continue
                b, after = row["before"], row["after"]
                out.append(judged(
                    f"{head}: recovery by {row['objective']} ({v['recovery']['steps']} steps, "
                    f"LoRA rank {row['rank']} on the kept layers) lowers the KL of the "
                    f"{row['skip_set']} skip set {row['layers_skipped']} to the full model "
                    f"from {b['kl']:.3f} to {after['kl']:.3f} nats (top-5 overlap "
                    f"{b['top5_overlap']:.2f} -> {after['top5_overlap']:.2f}; before - after "
                    f"= {_ci(row['recovery'])}).",
                    _interval(row["recovery"]), size=size, sources=paths,
                    origin="g4-skip-recovery", model=model,
                    value=f"{row['objective']} recovery {row['recovery']['estimate']:.3f} nats"))
            out += _chooser_threats(model, size, r, paths)
    return out


register_block(Block(
    id="layer-skip", priority=120, tags=("lora",),
    question="Are the atlas's least important blocks the safest to skip (against every "
             "same-size set and Block Influence), and does distillation recover the rest?",
    params=_sizes({"k": 2, "max_sets": 10, "n_train": 2, "n_heldout": 2, "lr": 1e-3},
                  {"k": 4, "max_sets": 50, "steps": 40, "n_train": 16, "n_heldout": 4,
                   "lr": 1e-3},
                  {"k": 4, "max_sets": 200, "steps": 200, "n_train": 64, "n_heldout": 16,
                   "lr": 1e-3}),
    cost=_cost(320, 1400, 8000), run=run_layer_skip, summarize=summarize_layer_skip))


# --------------------------------------------------------------------------- checkpoint lock-in


def run_checkpoint_lockin(ctx) -> dict:
    from bridges.stability import stability_study
    from bridges.studies import chooser_record
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.pipeline import SuiteSpec

    p = ctx.params
    atlas = chooser_atlas(ctx)
    spec = SuiteSpec(per_family=p["checkpoint_per_family"], seed=ctx.seed)
    steps = p["steps"]
    out = stability_study(ctx.model_name, ctx.model(), atlas.sums, family=p["family"],
                          checkpoints=(0, steps // 2, steps), top_k=_top_k(ctx), rank=p["rank"],
                          seed=_train_seeds(ctx)[0], train=_train_config(p), spec=spec,
                          atlas_config=AtlasConfig(positions_ablated=CHOOSER_POLICY,
                                                   components=ATLAS_COMPONENTS),
                          on_run=ctx.say)
    out["chooser"] = chooser_record(atlas)
    return out


def summarize_checkpoint_lockin(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("checkpoint-lockin", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v, paths = r["value"], (r["path"],)
            rows = v["rows"]
            last = rows[-1]
            hubs = ", ".join(f"{row['steps']}: L{row['hub_layer']} (Spearman vs step 0 "
                             f"{row['spearman_vs_step0']:.2f})" for row in rows)
            if "step0_hub_margin" not in last:
                continue
            m, h0 = last["step0_hub_margin"], rows[0]["hub_layer"]
            out.append(judged(
                f"{model} ({size}, seed {r['seed']}): during LoRA on {v['family']}, the hub at "
                f"steps {hubs}; after {last['steps']} steps the step-0 hub L{h0} is still the "
                f"hub (its block KL minus the best other layer's = {_ci(m)} nats).",
                _interval(m), size=size, sources=paths, origin="g3-lockin", model=model,
                value=f"step-0 hub margin {m['estimate']:.3f} nats at step {last['steps']}"))
            moved = judged(
                f"{model} ({size}, seed {r['seed']}): LoRA on {v['family']} moved the hub "
                f"away from L{h0} (at step {last['steps']} the best other layer exceeds it by "
                f"{_ci(_negated(m))} nats).", _interval(_negated(m)), size=size,
                sources=paths, kind="gem")
            if moved.kind == "gem":
                out.append(moved)
            out += _chooser_threats(model, size, r, paths)
    return out


register_block(Block(
    id="checkpoint-lockin", priority=130, tags=("lora", "atlas"),
    question="Does the atlas (its hub) move while a LoRA adapter trains?",
    params=_sizes({"family": "json", "checkpoint_per_family": 2},
                  {"family": "json", "checkpoint_per_family": 8},
                  {"family": "json", "checkpoint_per_family": 32}),
    cost=_cost(650, 1300, 15000), run=run_checkpoint_lockin,
    summarize=summarize_checkpoint_lockin))
