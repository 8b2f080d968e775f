"""Atlas blocks: where does the model compute, and how robust is that answer?

Smoke size (CPU, SmolLM2-135M, one seed, about 6 minutes for these six):

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks hub-replication,nl-hub,suite-breadth,position-bias,ablation-kinds
    python -m experiments.run --models smollm2-135m gemma3-270m --size smoke --blocks hub-compare
"""

from experiments.blocks.base import Block, Statement, by_model_size, register_block, size_costs

FOUR_FAMILIES = ("json", "factual", "code", "arithmetic")
"""The narrower suite of the origin report (its first four families)."""


def _per_family(smoke: int, small: int, **extra) -> dict:
    return {"smoke": {"per_family": smoke, **extra}, "small": {"per_family": small, **extra},
            "full": {"per_family": None, **extra}}


def _cost(smoke: float, small: float, full: float, memory: float = 2.0) -> dict:
    return size_costs(smoke, small, full, memory=memory)


def hub_value(atlas, *, families=None) -> dict:
    """The hub summary of an atlas as plain JSON (KL and Δlogp of block ablation)."""
    from tlatlas.atlas.hubs import hub_summary

    kl = hub_summary(atlas.sums, metric="kl", families=families)
    dlogp = hub_summary(atlas.sums, metric="dlogp", families=families)
    return {"kl": kl.to_dict(), "dlogp_hub": dlogp.hub_layer, "n_layers": len(atlas.sums.layers),
            "n_examples": atlas.meta.n_examples, "suite_hash": atlas.meta.suite_hash}


# --------------------------------------------------------------------------- hub replication


def run_hub_replication(ctx) -> dict:
    return hub_value(ctx.atlas())


def summarize_hub_replication(results: dict[str, list[dict]]) -> list[Statement]:
    from tlatlas.atlas.hubs import HubSummary, seed_spread

    out = []
    for (model, size), recs in by_model_size(results.get("hub-replication", [])).items():
        recs = sorted(recs, key=lambda r: r["seed"])
        hubs = [HubSummary.from_dict(r["value"]["kl"]) for r in recs]
        spread = seed_spread([r["seed"] for r in recs], hubs)
        paths = tuple(r["path"] for r in recs)
        agree = ", ".join(f"{a:.0%}" for a in spread.agreement)
        out.append(Statement(kind="claim", sources=paths, text=(
            f"{model} ({size}): the zero-ablation hub (block KL, mean over families) is "
            f"L{spread.mode} of {recs[0]['value']['n_layers']}; per seed {list(spread.hubs)} "
            f"(seeds {list(spread.seeds)}), std {spread.std:.2f}; family agreement {agree}; "
            f"hub effect {hubs[0].hub_effect:.3f} nats vs least layer L{hubs[0].least_layer} "
            f"{hubs[0].least_effect:.3f} nats.")))
        if len(recs) > 1 and spread.std == 0:
            distinct = len({r["suite_hash"] for r in recs})
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model} ({size}): the hub has std 0 over {len(recs)} seeds; the seeds drew "
                f"{distinct} distinct suites (suite hashes), so the zero spread "
                + ("does reflect resampled prompts." if distinct == len(recs)
                   else "is partly because seeds did not change the suite."))))
        if len(recs) == 1:
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model} ({size}): one seed only ({recs[0]['seed']}); the hub's spread across "
                "resampled suites is not measured at this size.")))
        if spread.mode == 0:
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model} ({size}): the hub is block 0. Zero-ablating block 0 removes what "
                "acts as part of the embedding, so the 'hub' may say little about task "
                "computation; compare the mean/resample hubs (ablation-kinds).")))
        if min(spread.agreement) >= 0.75:
            out.append(Statement(kind="gem", sources=paths, text=(
                f"{model} ({size}): at least {min(spread.agreement):.0%} of families put their "
                f"own largest effect on the hub L{spread.mode} in every seed.")))
    return out


register_block(Block(
    id="hub-replication", priority=10, tags=("atlas",),
    question="Which layer's block ablation hurts most, and does that replicate over seeds?",
    params=_per_family(1, 8), cost=_cost(45, 400, 3600), run=run_hub_replication,
    summarize=summarize_hub_replication))


# --------------------------------------------------------------------------- NL prompts


def run_nl_hub(ctx) -> dict:
    nl = hub_value(ctx.atlas(kind="nl"))
    synthetic = hub_value(ctx.atlas(kind="synthetic"))
    import torch

    from tlatlas.stats import spearman

    rho = spearman(torch.tensor(nl["kl"]["layer_effect"]),
                   torch.tensor(synthetic["kl"]["layer_effect"]))
    return {"nl": nl, "synthetic": synthetic, "same_hub": nl["kl"]["hub_layer"] ==
            synthetic["kl"]["hub_layer"], "layer_effect_spearman": rho}


def summarize_nl_hub(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("nl-hub", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            out.append(Statement(kind="claim", sources=(r["path"],), text=(
                f"{model} ({size}, seed {r['seed']}): on natural-language prompts the hub is "
                f"L{v['nl']['kl']['hub_layer']} vs L{v['synthetic']['kl']['hub_layer']} on the "
                f"synthetic suite; Spearman of the two layer-effect profiles "
                f"{v['layer_effect_spearman']:.2f}.")))
    return out


register_block(Block(
    id="nl-hub", priority=20, tags=("atlas",),
    question="Is the hub the same on natural-language prompts as on the synthetic suite?",
    params=_per_family(1, 8, suites=("nl", "synthetic")), cost=_cost(50, 400, 3000),
    run=run_nl_hub, summarize=summarize_nl_hub))


# --------------------------------------------------------------------------- suite breadth


def run_suite_breadth(ctx) -> dict:
    atlas = ctx.atlas()
    return {"families_4": list(FOUR_FAMILIES), "hub_4": hub_value(atlas, families=FOUR_FAMILIES),
            "hub_12": hub_value(atlas)}


def summarize_suite_breadth(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("suite-breadth", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            h4, h12 = r["value"]["hub_4"]["kl"], r["value"]["hub_12"]["kl"]
            same = h4["hub_layer"] == h12["hub_layer"]
            out.append(Statement(kind="claim" if same else "gem", sources=(r["path"],), text=(
                f"{model} ({size}, seed {r['seed']}): with 4 families the hub is "
                f"L{h4['hub_layer']} (agreement {h4['family_agreement']:.0%}); with all 12 it "
                f"is L{h12['hub_layer']} (agreement {h12['family_agreement']:.0%})"
                + ("." if same else ": the narrower suite picks a different hub."))))
    return out


register_block(Block(
    id="suite-breadth", priority=30, tags=("atlas",),
    question="Does a 4-family suite find the same hub as the 12-family suite?",
    params=_per_family(1, 8), cost=_cost(5, 20, 60), run=run_suite_breadth,
    summarize=summarize_suite_breadth))


# --------------------------------------------------------------------------- position bias


def run_position_bias(ctx) -> dict:
    from tlatlas.atlas.sums import role_effect
    from tlatlas.tokens import ROLES

    n = ctx.model().n_layers
    layers = list(range(0, n, int(ctx.params["layer_stride"])))
    atlas = ctx.atlas(positions=True, layers=layers)
    out = {"layers": layers, "roles": list(ROLES)}
    for comp in ("resid", "block"):
        eff = role_effect(atlas.sums, "kl", comp)  # [layer role]
        out[comp] = {"effect": eff.tolist(),
                     "argmax_layer": {r: layers[int(eff[:, i].argmax())] for i, r in enumerate(ROLES)},
                     "mean": {r: float(eff[:, i].mean()) for i, r in enumerate(ROLES)}}
    return out


def summarize_position_bias(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("position-bias", [])).items():
        r = sorted(recs, key=lambda r: r["seed"])[0]
        v = r["value"]["resid"]
        top = max(v["mean"], key=v["mean"].get)
        out.append(Statement(kind="claim", sources=(r["path"],), text=(
            f"{model} ({size}, seed {r['seed']}): ablating the residual at one position, the "
            "mean KL over layers " + str(r["value"]["layers"]) + " is "
            + ", ".join(f"{k} {x:.3f}" for k, x in v["mean"].items())
            + f" nats; the {top} position matters most.")))
    return out


register_block(Block(
    id="position-bias", priority=40, tags=("atlas",),
    question="Which position roles (BOS, body, last) carry the effect, at which layers?",
    params=_per_family(1, 4, layer_stride=10) | {"full": {"per_family": 40, "layer_stride": 1}},
    cost=_cost(150, 1500, 20000), run=run_position_bias, summarize=summarize_position_bias))


# --------------------------------------------------------------------------- ablation kinds


def run_ablation_kinds(ctx) -> dict:
    import torch

    from tlatlas.stats import spearman

    values, profiles = {}, {}
    for kind in ("zero", "mean", "resample"):
        values[kind] = hub_value(ctx.atlas(ablation=kind))
        profiles[kind] = torch.tensor(values[kind]["kl"]["layer_effect"])
    rho = {f"{a}~{b}": spearman(profiles[a], profiles[b])
           for a, b in (("zero", "mean"), ("zero", "resample"), ("mean", "resample"))}
    return {"hubs": values, "layer_effect_spearman": rho,
            "max_effect": {k: float(p.max()) for k, p in profiles.items()}}


def summarize_ablation_kinds(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("ablation-kinds", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            kinds = ("zero", "mean", "resample")  # result JSON sorts its keys
            hubs = {k: v["hubs"][k]["kl"]["hub_layer"] for k in kinds}
            out.append(Statement(kind="claim", sources=(r["path"],), text=(
                f"{model} ({size}, seed {r['seed']}): hub by ablation kind "
                + ", ".join(f"{k} L{h}" for k, h in hubs.items())
                + "; largest layer effect " + ", ".join(
                    f"{k} {v['max_effect'][k]:.3f}" for k in kinds)
                + " nats; Spearman of layer profiles " + ", ".join(
                    f"{k} {x:.2f}" for k, x in v["layer_effect_spearman"].items()) + ".")))
            if v["max_effect"]["mean"] > 0:
                out.append(Statement(kind="gem", sources=(r["path"],), text=(
                    f"{model} ({size}, seed {r['seed']}): mean ablation (reference means from "
                    f"a disjoint seed, never the scored batch) is not flat: its largest layer "
                    f"effect is {v['max_effect']['mean']:.3f} nats, against the origin "
                    "report's all-zero mean-ablation effects.")))
            if len(set(hubs.values())) > 1:
                out.append(Statement(kind="threat", sources=(r["path"],), text=(
                    f"{model} ({size}, seed {r['seed']}): the hub depends on the ablation kind "
                    f"({hubs}); a hub claim must name its ablation.")))
    return out


register_block(Block(
    id="ablation-kinds", priority=50, tags=("atlas",),
    question="Do zero, mean and resample ablation agree on the hub and the layer profile?",
    # resample ablation draws donors within a family's batch: at least 2 examples per family
    params=_per_family(2, 8), cost=_cost(200, 1000, 9000), run=run_ablation_kinds,
    summarize=summarize_ablation_kinds))


# --------------------------------------------------------------------------- two models


def run_hub_compare(ctx) -> dict:
    out = {}
    for i, name in enumerate(ctx.models):
        v = hub_value(ctx.atlas(model=i))
        v["relative_depth"] = v["kl"]["hub_layer"] / max(v["n_layers"] - 1, 1)
        out[name] = v
    return {"models": list(ctx.models), "hubs": out}


def summarize_hub_compare(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for r in results.get("hub-compare", []):
        hubs = r["value"]["hubs"]
        out.append(Statement(kind="claim", sources=(r["path"],), text=(
            f"hub comparison ({r['size']}, seed {r['seed']}): " + "; ".join(
                f"{m} L{h['kl']['hub_layer']} of {h['n_layers']} (relative depth "
                f"{h['relative_depth']:.2f}, agreement {h['kl']['family_agreement']:.0%})"
                for m, h in hubs.items()) + ".")))
    return out


register_block(Block(
    id="hub-compare", priority=60, models=2, tags=("atlas",),
    question="Do two models put their hub at the same relative depth?",
    params=_per_family(1, 8), cost=_cost(120, 900, 8000, memory=4.0), run=run_hub_compare,
    summarize=summarize_hub_compare))
