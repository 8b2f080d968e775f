"""Atlas blocks: where does the model compute, and how robust is that answer?

Smoke size (CPU, SmolLM2-135M, one seed, about 6 minutes for these six):

    python -m experiments.run --model smollm2-135m --size smoke \\
        --blocks hub-replication,nl-hub,suite-breadth,position-bias,ablation-kinds
    python -m experiments.run --models smollm2-135m gemma3-270m --size smoke --blocks hub-compare

Evidence and verdicts. Every interval is a 95% stratified bootstrap over the atlas's
examples (:mod:`tlatlas.stats`, 1,000 replicates); a claim's verdict follows one rule:

- **a hub** ("layer h is the hub"): *supported* when the hub's margin over the runner-up
  has a 95% CI above 0, else *inconclusive* (P(hub = h) is reported beside it);
- **two hubs are the same / differ** (NL vs synthetic, 4 vs 12 families, two models at
  normalised depth): the contrast of the two layers' effects (or of the two relative
  depths) has a CI; *supported* (same hub) when the hubs coincide and both margins exclude
  0, *contradicted* when the hubs differ and the contrast excludes 0, else inconclusive;
- **a difference** (zero vs mean ablation, last vs body position): the paired difference
  over the same examples; *supported* when its CI lies above 0 in the stated direction,
  *contradicted* when below, else inconclusive;
- a spread across seeds is reported only for two or more seeds;
- any statement computed at smoke size is *smoke: not evidence*, and no gem comes from it.
"""

from experiments.blocks.base import (
    Block,
    Statement,
    by_model_size,
    judged,
    register_block,
    size_costs,
)

FOUR_FAMILIES = ("json", "factual", "code", "arithmetic")
"""The narrower suite of the origin report (its first four families)."""


def _per_family(smoke: int, small: int, **extra) -> dict:
    """Sizes: at least 2 examples per family even at smoke size (a family mean needs more
    than one example to have an interval; families with fewer are left out of the hub).
    Every atlas block reads the block component only (hubs, contrasts, position roles), so
    its atlases compute that one: a third of the layer map's forwards."""
    extra = {"components": ["block"], **extra}
    return {"smoke": {"per_family": smoke, **extra}, "small": {"per_family": small, **extra},
            "full": {"per_family": None, **extra}}


def _cost(smoke: float, small: float, full: float, memory: float = 2.0) -> dict:
    return size_costs(smoke, small, full, memory=memory)


def hub_value(atlas, *, families=None) -> dict:
    """The hub of an atlas with its evidence, as plain JSON: block KL (hub, P(hub) per
    layer, margin and agreement with CIs, layer effects with CIs, clean accuracy per
    family) and the Δlogp hub."""
    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.summary import seed_entry

    kl = seed_entry(atlas, metric="kl", families=families)
    dlogp = hub_summary(atlas.sums, metric="dlogp", families=families)
    return {"kl": kl, "dlogp_hub": dlogp.hub_layer, "n_layers": len(atlas.sums.layers),
            "n_examples": atlas.meta.n_examples, "suite_hash": atlas.meta.suite_hash,
            "positions_ablated": atlas.meta.positions_ablated}


def _interval(d: dict | None, n: int):
    """An :class:`tlatlas.stats.Interval` from a ``{estimate, ci}`` dict."""
    from tlatlas.stats import Interval

    return Interval(estimate=d["estimate"], ci_low=d["ci"][0], ci_high=d["ci"][1], n=n)


def layer_contrast(atlas, a: int, b: int, *, families=None, metric: str = "kl") -> dict:
    """Effect at layer ``a`` minus at layer ``b`` (block ablation), paired over the same
    examples, bootstrap stratified by family."""
    from tlatlas.stats import paired_difference

    sums = atlas.sums
    effect = sums.example_effect(metric, "block")
    rows = _family_rows(sums, families)
    iv = paired_difference(effect[sums.layers.index(a), rows], effect[sums.layers.index(b), rows],
                           strata=sums.tensors["example.family"][rows])
    return iv.to_dict()


def _family_rows(sums, families):
    import torch

    fam = sums.tensors["example.family"]
    if families is None:
        return torch.ones_like(fam, dtype=torch.bool)
    return torch.isin(fam, torch.tensor([sums.families.index(f) for f in families]))


def _hub_claim(model: str, size: str, seed, value: dict, sources, what: str) -> Statement:
    kl = value["kl"]
    p = kl["hub_probability"][kl["layers"].index(kl["hub_layer"])]
    m = kl["hub_margin"]
    return judged(
        f"{model} ({size}, seed {seed}): {what} is L{kl['hub_layer']} of {value['n_layers']} "
        f"(block KL, positions ablated {value['positions_ablated']}); P(hub) {p:.2f}; margin "
        f"over L{kl['runner_up']} {m['estimate']:.3f} nats; family agreement "
        f"{kl['family_agreement']['estimate']:.0%} [{kl['family_agreement']['ci'][0]:.0%}, "
        f"{kl['family_agreement']['ci'][1]:.0%}]",
        _interval(m, kl["n_used"]), size=size, sources=sources, origin="hub-location",
        model=model, value=f"seed {seed}: L{kl['hub_layer']} of {value['n_layers']}, P(hub) {p:.2f}")


def seeds_claim(model: str, size: str, recs: list[dict]) -> Statement:
    """"The hub replicates across seeds": *supported* when every seed finds the same hub
    with a margin whose CI excludes 0, *contradicted* when two seeds find different hubs
    each with such a margin, else inconclusive. ``n`` is the number of seeds; the CI is the
    range of the hub layer over the seeds' bootstrap distributions (layers with P(hub) >= 2.5%)."""
    kls = [r["value"]["kl"] for r in recs]
    hubs = [kl["hub_layer"] for kl in kls]
    clear = [kl["hub_margin"]["ci"][0] > 0 for kl in kls]
    if size == "smoke":
        v = "smoke: not evidence"
    elif len(set(hubs)) == 1:
        v = "supported" if all(clear) else "inconclusive"
    else:
        firm = {h for h, c in zip(hubs, clear, strict=True) if c}
        v = "contradicted" if len(firm) > 1 else "inconclusive"
    plausible = [layer for kl in kls for layer, p in zip(kl["layers"], kl["hub_probability"],
                                                          strict=True) if p >= 0.025]
    seeds = ", ".join(f"{r['seed']}: L{h}" for r, h in zip(recs, hubs, strict=True))
    return Statement(
        kind="claim", sources=tuple(r["path"] for r in recs), n=len(recs),
        ci=(float(min(plausible)), float(max(plausible))), verdict=v, origin="seed-std",
        model=model, value=f"hubs {seeds}", text=(
            f"{model} ({size}): the hub replicates across {len(recs)} seeds ({seeds}); "
            f"{sum(clear)} of them with a margin whose CI excludes 0; layers with P(hub) "
            f">= 2.5% on some seed span L{min(plausible)}-L{max(plausible)}"))


def same_verdict(a: dict, b: dict, contrast: dict, size: str, *, same: bool | None = None) -> str:
    """The verdict on "a and b (seed entries) have the same hub" (rule in the module
    docstring); ``same`` overrides the comparison of their hub layers."""
    if size == "smoke":
        return "smoke: not evidence"
    if a["hub_layer"] == b["hub_layer"] if same is None else same:
        clear = a["hub_margin"]["ci"][0] > 0 and b["hub_margin"]["ci"][0] > 0
        return "supported" if clear else "inconclusive"
    lo, hi = contrast["ci"]
    return "contradicted" if lo > 0 or hi < 0 else "inconclusive"


# --------------------------------------------------------------------------- hub replication


def run_hub_replication(ctx) -> dict:
    return hub_value(ctx.atlas())


def summarize_hub_replication(results: dict[str, list[dict]]) -> list[Statement]:
    from tlatlas.atlas.hubs import spread_of

    out = []
    for (model, size), recs in by_model_size(results.get("hub-replication", [])).items():
        recs = sorted(recs, key=lambda r: r["seed"])
        paths = tuple(r["path"] for r in recs)
        for r in recs:
            out.append(_hub_claim(model, size, r["seed"], r["value"], (r["path"],),
                                  "the zero-ablation hub"))
        hubs = [r["value"]["kl"]["hub_layer"] for r in recs]
        if len(recs) > 1:
            out.append(seeds_claim(model, size, recs))
            spread = spread_of([r["seed"] for r in recs], hubs,
                               [r["value"]["kl"]["family_agreement"]["estimate"] for r in recs])
            distinct = len({r["value"]["suite_hash"] for r in recs})
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model} ({size}): across {len(recs)} seeds ({distinct} distinct suites) the "
                f"hub is {hubs}: mode L{spread.mode}, std {spread.std:.2f} of the layer index. "
                "A std of 0 says the hub replicated on resampled suites; P(hub) and the "
                "margin above say how sure each seed is.")))
        else:
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model} ({size}): one seed ({recs[0]['seed']}): the spread across resampled "
                "suites is not measured (absent, not 0); P(hub) is over examples only.")))
        if 0 in hubs:
            out.append(Statement(kind="threat", sources=paths, text=(
                f"{model} ({size}): the hub is block 0 on some seed. Zero-ablating block 0 "
                "removes what acts as part of the embedding; compare the positions-ablated "
                "policies (docs/atlas.md) and the mean/resample hubs (ablation-kinds).")))
    return out


register_block(Block(
    id="hub-replication", priority=10, tags=("atlas",),
    question="Which layer's block ablation hurts most, and does that replicate over seeds?",
    params=_per_family(2, 8), cost=_cost(45, 400, 3600), run=run_hub_replication,
    summarize=summarize_hub_replication))


# --------------------------------------------------------------------------- NL prompts


def run_nl_hub(ctx) -> dict:
    import torch

    from tlatlas.stats import spearman

    nl_atlas, syn_atlas = ctx.atlas(kind="nl"), ctx.atlas(kind="synthetic")
    nl, synthetic = hub_value(nl_atlas), hub_value(syn_atlas)
    rho = spearman(torch.tensor(nl["kl"]["layer_effect"]["estimate"]),
                   torch.tensor(synthetic["kl"]["layer_effect"]["estimate"]))
    # on the NL prompts: the NL hub's effect minus the synthetic hub's (0 when the same)
    contrast = layer_contrast(nl_atlas, nl["kl"]["hub_layer"], synthetic["kl"]["hub_layer"])
    return {"nl": nl, "synthetic": synthetic, "same_hub": nl["kl"]["hub_layer"] ==
            synthetic["kl"]["hub_layer"], "layer_effect_spearman": rho,
            "nl_contrast": contrast}


def summarize_nl_hub(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("nl-hub", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            nl, syn = v["nl"]["kl"], v["synthetic"]["kl"]
            c = v["nl_contrast"]
            out.append(Statement(
                kind="claim", sources=(r["path"],), n=c["n"], ci=tuple(c["ci"]),
                verdict=same_verdict(nl, syn, c, size), origin="nl-hub", model=model,
                value=f"NL L{nl['hub_layer']} vs synthetic L{syn['hub_layer']}", text=(
                    f"{model} ({size}, seed {r['seed']}): the hub is the same on natural-"
                    f"language prompts (L{nl['hub_layer']}, margin {nl['hub_margin']['estimate']:.3f}"
                    f" [{nl['hub_margin']['ci'][0]:.3f}, {nl['hub_margin']['ci'][1]:.3f}]) as on "
                    f"the synthetic suite (L{syn['hub_layer']}, margin "
                    f"{syn['hub_margin']['estimate']:.3f} [{syn['hub_margin']['ci'][0]:.3f}, "
                    f"{syn['hub_margin']['ci'][1]:.3f}]); on NL prompts the NL hub's effect "
                    f"exceeds the synthetic hub's by {c['estimate']:.3f} nats; Spearman of "
                    f"the layer profiles {v['layer_effect_spearman']:.2f}")))
    return out


register_block(Block(
    id="nl-hub", priority=20, tags=("atlas",),
    question="Is the hub the same on natural-language prompts as on the synthetic suite?",
    params=_per_family(2, 8, suites=("nl", "synthetic")), cost=_cost(50, 400, 3000),
    run=run_nl_hub, summarize=summarize_nl_hub))


# --------------------------------------------------------------------------- suite breadth


def run_suite_breadth(ctx) -> dict:
    atlas = ctx.atlas()
    h4, h12 = hub_value(atlas, families=FOUR_FAMILIES), hub_value(atlas)
    contrast = layer_contrast(atlas, h4["kl"]["hub_layer"], h12["kl"]["hub_layer"],
                              families=FOUR_FAMILIES)
    return {"families_4": list(FOUR_FAMILIES), "hub_4": h4, "hub_12": h12,
            "contrast_4": contrast}


def summarize_suite_breadth(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for (model, size), recs in by_model_size(results.get("suite-breadth", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            h4, h12 = r["value"]["hub_4"]["kl"], r["value"]["hub_12"]["kl"]
            c = r["value"]["contrast_4"]
            v = same_verdict(h4, h12, c, size)
            text = (f"{model} ({size}, seed {r['seed']}): a 4-family suite ({', '.join(FOUR_FAMILIES)})"
                    f" finds the same hub as all 12 families: L{h4['hub_layer']} (agreement "
                    f"{h4['family_agreement']['estimate']:.0%}) vs L{h12['hub_layer']} "
                    f"(agreement {h12['family_agreement']['estimate']:.0%}); on the 4 families "
                    f"their hub's effect exceeds the 12-family hub's by {c['estimate']:.3f} nats")
            out.append(Statement(kind="claim", sources=(r["path"],), n=c["n"], ci=tuple(c["ci"]),
                                 verdict=v, text=text, origin="suite-breadth", agrees=False,
                                 model=model, value=f"4 families L{h4['hub_layer']} vs 12 "
                                                    f"L{h12['hub_layer']}"))
            if v == "contradicted":
                out.append(Statement(kind="gem", sources=(r["path"],), n=c["n"], ci=tuple(c["ci"]),
                                     verdict="supported", text=(
                                         f"{model} ({size}, seed {r['seed']}): the narrower "
                                         "4-family suite picks a different hub, with an "
                                         "interval that excludes no difference")))
    return out


register_block(Block(
    id="suite-breadth", priority=30, tags=("atlas",),
    question="Does a 4-family suite find the same hub as the 12-family suite?",
    params=_per_family(2, 8), cost=_cost(5, 20, 60), run=run_suite_breadth,
    summarize=summarize_suite_breadth))


# --------------------------------------------------------------------------- position bias


def run_position_bias(ctx) -> dict:
    import torch

    from tlatlas.atlas.sums import role_effect
    from tlatlas.stats import paired_difference
    from tlatlas.tokens import ROLES

    n = ctx.model().n_layers
    layers = list(range(0, n, int(ctx.params["layer_stride"])))
    atlas = ctx.atlas(positions=True, layers=layers)
    out = {"layers": layers, "roles": list(ROLES)}
    t = atlas.sums.tensors
    for ci, comp in enumerate(("resid", "block")):
        eff = role_effect(atlas.sums, "kl", comp)  # [layer role]
        per_ex = t["example.role"][0, ci].double().nanmean(0)  # [role example], mean over layers
        last_vs_body = paired_difference(per_ex[ROLES.index("last")], per_ex[ROLES.index("body")],
                                         strata=t["example.family"])
        out[comp] = {"effect": eff.tolist(),
                     "argmax_layer": {r: layers[int(eff[:, i].argmax())] for i, r in enumerate(ROLES)},
                     "mean": {r: float(eff[:, i].mean()) for i, r in enumerate(ROLES)},
                     "last_minus_body": last_vs_body.to_dict(),
                     "bos_finite": int(torch.isfinite(per_ex[ROLES.index("bos")]).sum())}
    return out


def summarize_position_bias(results: dict[str, list[dict]]) -> list[Statement]:
    from tlatlas.stats import Interval

    out = []
    for (model, size), recs in by_model_size(results.get("position-bias", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]["resid"]
            d = v["last_minus_body"]
            iv = Interval(estimate=d["estimate"], ci_low=d["ci"][0], ci_high=d["ci"][1], n=d["n"])
            out.append(judged(
                f"{model} ({size}, seed {r['seed']}): ablating the residual at one position, "
                "the last (scored) position matters more than a body position: mean KL over "
                f"layers {r['value']['layers']} is " + ", ".join(
                    f"{k} {x:.3f}" for k, x in v["mean"].items())
                + f" nats; last minus body, per example, {d['estimate']:.3f} nats",
                iv, size=size, sources=(r["path"],), origin="position-bias", model=model,
                value=f"last − body {d['estimate']:.3f} nats"))
    return out


register_block(Block(
    id="position-bias", priority=40, tags=("atlas",),
    question="Which position roles (BOS, body, last) carry the effect, at which layers?",
    params=_per_family(2, 4, layer_stride=10) | {"full": {"per_family": 40, "layer_stride": 1,
                                                         "components": ["block"]}},
    cost=_cost(150, 1500, 20000), run=run_position_bias, summarize=summarize_position_bias))


# --------------------------------------------------------------------------- ablation kinds


def run_ablation_kinds(ctx) -> dict:
    import torch

    from tlatlas.stats import bootstrap_mean, paired_difference, spearman

    values, profiles, per_example = {}, {}, {}
    atlases = {}
    for kind in ("zero", "mean", "resample"):
        atlases[kind] = ctx.atlas(ablation=kind)
        values[kind] = hub_value(atlases[kind])
        profiles[kind] = torch.tensor(values[kind]["kl"]["layer_effect"]["estimate"])
        # each example's block KL averaged over layers: how destructive the kind is overall
        per_example[kind] = atlases[kind].sums.example_effect("kl", "block").double().mean(0)
    strata = atlases["zero"].sums.tensors["example.family"]
    ids = {k: a.sums.tensors["example.id"] for k, a in atlases.items()}
    if not all(torch.equal(ids["zero"], i) for i in ids.values()):
        raise RuntimeError("the three atlases scored different examples; cannot pair them")
    rho = {f"{a}~{b}": spearman(profiles[a], profiles[b])
           for a, b in (("zero", "mean"), ("zero", "resample"), ("mean", "resample"))}
    return {"hubs": values, "layer_effect_spearman": rho,
            "max_effect": {k: float(p.max()) for k, p in profiles.items()},
            "zero_minus_mean": paired_difference(per_example["zero"], per_example["mean"],
                                                 strata=strata).to_dict(),
            "zero_minus_resample": paired_difference(per_example["zero"], per_example["resample"],
                                                     strata=strata).to_dict(),
            "mean_effect": bootstrap_mean(per_example["mean"], strata=strata).to_dict()}


def summarize_ablation_kinds(results: dict[str, list[dict]]) -> list[Statement]:
    from tlatlas.stats import Interval

    def iv(d):
        return Interval(estimate=d["estimate"], ci_low=d["ci"][0], ci_high=d["ci"][1], n=d["n"])

    out = []
    for (model, size), recs in by_model_size(results.get("ablation-kinds", [])).items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            v = r["value"]
            kinds = ("zero", "mean", "resample")  # result JSON sorts its keys
            hubs = {k: v["hubs"][k]["kl"]["hub_layer"] for k in kinds}
            src = (r["path"],)
            policy = v["hubs"]["zero"]["positions_ablated"]
            out.append(judged(
                f"{model} ({size}, seed {r['seed']}): zero ablation is more destructive than "
                f"mean ablation (block KL averaged over layers, positions ablated {policy}; "
                f"the origin report said it is not): zero minus mean "
                f"{v['zero_minus_mean']['estimate']:.3f} nats per example; hubs "
                + ", ".join(f"{k} L{h}" for k, h in hubs.items()) + "; Spearman of layer "
                "profiles " + ", ".join(f"{k} {x:.2f}" for k, x in
                                        v["layer_effect_spearman"].items()),
                iv(v["zero_minus_mean"]), size=size, sources=src,
                origin="zero-not-destructive", agrees=False, model=model,
                value=f"zero − mean {v['zero_minus_mean']['estimate']:.3f} nats"))
            mean_iv = iv(v["mean_effect"])
            out.append(judged(
                f"{model} ({size}, seed {r['seed']}): mean ablation (reference means from a "
                "disjoint seed, never the scored batch) has a non-zero effect (the origin "
                f"report found it all-zero): {mean_iv.estimate:.3f} nats per example, averaged "
                "over layers", mean_iv, size=size, sources=src,
                kind="gem", origin="mean-useless", agrees=False, model=model,
                value=f"mean ablation {mean_iv.estimate:.3f} nats"))
            if len(set(hubs.values())) > 1:
                out.append(Statement(kind="threat", sources=src, text=(
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


def depth_difference(p_a: list[float], n_a: int, p_b: list[float], n_b: int) -> dict:
    """Relative hub depth of model A minus model B: the observed hubs' difference, with a
    95% interval from the two bootstrap distributions of the hub (independent examples:
    the distribution of x / (n_a - 1) - y / (n_b - 1) for x ~ P_A(hub), y ~ P_B(hub))."""
    import torch

    da = torch.arange(n_a, dtype=torch.float64) / max(n_a - 1, 1)
    db = torch.arange(n_b, dtype=torch.float64) / max(n_b - 1, 1)
    diff = (da[:, None] - db[None, :]).flatten()
    prob = (torch.tensor(p_a, dtype=torch.float64)[:, None]
            * torch.tensor(p_b, dtype=torch.float64)[None, :]).flatten()
    order = torch.argsort(diff)
    cdf = prob[order].cumsum(0)
    lo = float(diff[order][int(torch.searchsorted(cdf, torch.tensor(0.025, dtype=torch.float64)))])
    hi = float(diff[order][int(torch.searchsorted(cdf, torch.tensor(0.975, dtype=torch.float64)))])
    return {"ci": [lo, hi]}


def run_hub_compare(ctx) -> dict:
    out = {}
    for i, name in enumerate(ctx.models):
        v = hub_value(ctx.atlas(model=i))
        v["relative_depth"] = v["kl"]["hub_layer"] / max(v["n_layers"] - 1, 1)
        out[name] = v
    a, b = (out[m] for m in ctx.models)
    diff = depth_difference(a["kl"]["hub_probability"], a["n_layers"],
                            b["kl"]["hub_probability"], b["n_layers"])
    diff["estimate"] = a["relative_depth"] - b["relative_depth"]
    diff["n"] = min(a["kl"]["n_used"], b["kl"]["n_used"])
    return {"models": list(ctx.models), "hubs": out, "depth_difference": diff}


def summarize_hub_compare(results: dict[str, list[dict]]) -> list[Statement]:
    out = []
    for r in results.get("hub-compare", []):
        hubs, d = r["value"]["hubs"], r["value"]["depth_difference"]
        a, b = (hubs[m]["kl"] for m in r["value"]["models"])
        out.append(Statement(
            kind="claim", sources=(r["path"],), n=d["n"], ci=tuple(d["ci"]),
            verdict=same_verdict(a, b, d, r["size"], same=d["estimate"] == 0),
            origin="own-atlas", agrees=False, model=" vs ".join(r["value"]["models"]),
            value=f"relative depth difference {d['estimate']:.2f}",
            text=(f"hub comparison ({r['size']}, seed {r['seed']}): the two models put their "
                  "hub at the same relative depth: " + "; ".join(
                      f"{m} L{h['kl']['hub_layer']} of {h['n_layers']} (relative depth "
                      f"{h['relative_depth']:.2f}, P(hub) "
                      f"{h['kl']['hub_probability'][h['kl']['layers'].index(h['kl']['hub_layer'])]:.2f})"
                      for m, h in hubs.items())
                  + f"; depth difference {d['estimate']:.2f}")))
    return out


register_block(Block(
    id="hub-compare", priority=60, models=2, tags=("atlas",),
    question="Do two models put their hub at the same relative depth?",
    params=_per_family(2, 8), cost=_cost(120, 900, 8000, memory=4.0), run=run_hub_compare,
    summarize=summarize_hub_compare))
