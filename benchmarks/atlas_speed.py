"""Atlas speed and agreement: naive loop, fast exact path, estimates, estimate-then-verify.

    python benchmarks/atlas_speed.py                      # SmolLM2-135M, CPU, zero ablation
    python benchmarks/atlas_speed.py --models smollm2-135m gemma3-270m --ablations zero mean \
        --skip-naive --threads 1 --json                   # what docs/results/atlas_speed_cpu.txt runs

Same prompts, same process, one run per (model, ablation): for the layer map (attn/mlp/block x
layer) and the layer x position map (resid/block), it times

- ``naive``: one ``bridge.run_with_hooks`` forward per intervention (``--skip-naive``: not run);
- ``tl_patching``: TransformerLens's own ``patching.get_act_patch_resid_pre`` fed a
  zero "clean cache" (= zero ablation of resid_pre per layer and position; position map
  only, zero ablation only, the one map it computes; skipped with ``--skip-naive``);
- ``exact``: tlatlas's fast exact path (clean-run reuse, KV prefix, scored-only unembed);
- ``attribution``: the first-order estimate (one forward + one backward per batch);
- ``estimators`` (``--estimators``, as ``name:steps``): every estimate of
  :mod:`tlatlas.atlas.estimators`, each timed on both maps (``ig``, each node's own path,
  on the layer map only), with the Spearman correlation of its Delta-logp with the exact
  Delta-logp and of its ranking score (``|KL|``, or ``|Delta-logp|`` without a KL estimate)
  with the exact KL: on the layer map's per-family means [component layer family], on the
  position map's cells (every example's [pcomp layer position], ``spearman_position``)
  and on its role means (``spearman_position_roles``, the aggregate the atlas stores);
- ``verify``: estimate, then verify (:mod:`tlatlas.atlas.verify`), with the recall of the
  exact top ``--top-k`` (the share of the exact top-K entries it returns as its top K:
  the layer map's pooled (component, layer) ranking; the position map per example and
  component), whether its hub is the exact hub, and its speed-up over the exact map.

It prints wall time, peak memory above the loaded model and speed-ups; with ``--json`` one
JSON object last: the run's ``{model, ablation, maps, estimators, verify, ...}``; with
several models or ablations, the first run's object with ``runs`` (every run's object).
"""

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import replace
from functools import partial

import torch


class PeakMemory:
    """Peak resident memory (CPU: sampled VmRSS; CUDA: max_memory_allocated) above start."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated() - self.cuda_start
        else:
            self.bytes = self.peak - self.start


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return out, wall, mem.bytes


def per_example(sums, key):
    t = sums.tensors
    count = {"layer": t["count"], "role": t.get("role.count"), "offset": t.get("offset.count")}[key]
    return t[f"{key}.sum"] / count.clamp(min=1)


def tl_patching_position_map(model, examples, batch_size):
    """TransformerLens's own patching: zero 'clean cache' patched into each (layer, pos)."""
    from transformer_lens import patching

    from tlatlas.atlas.engine import encoded_batches
    from tlatlas.evaluate import scored_logits
    from tlatlas.metrics import effects

    out = []
    for _, batch in encoded_batches(examples, model.tokenizer, batch_size=batch_size):
        tokens = batch.tokens.to(model.device)
        clean = scored_logits(model, batch)
        zeros = {f"blocks.{layer}.hook_resid_pre": torch.zeros(*tokens.shape, model.d_model,
                                                               device=model.device, dtype=model.dtype)
                 for layer in range(model.n_layers)}
        rows = torch.arange(len(batch))

        def metric(logits, clean=clean, batch=batch, rows=rows):
            return effects(clean, logits[rows, batch.scored_pos.to(logits.device)], batch.target).kl.mean()

        with torch.inference_mode():
            out.append(patching.get_act_patch_resid_pre(model.bridge, tokens, zeros, metric))
    return out


ESTIMATORS = ("first_order:1", "bound:1", "fisher:1", "fisher_bound:1", "ig_joint:2",
              "ig_joint:4", "graddrop:1", "ig:2")
POS_HOOKS = ("hook_attn_out", "hook_mlp_out", "hook_resid_post")


def parse_estimator(spec: str):
    from tlatlas.atlas.estimators import FIRST_ORDER, Estimator

    name, _, steps = spec.partition(":")
    if name == "first_order":
        return FIRST_ORDER
    return Estimator(method=name, steps=int(steps or 1))


def swept_cells(model, examples, config, means, estimator=None):
    """The exact map (estimator None) or an estimate, through the engine, keeping every
    example's position cells: ``(sums, uid -> [metric pcomp layer pos])``."""
    from tlatlas.atlas.engine import clean_batches
    from tlatlas.atlas.estimators import counted, estimate_effects, estimate_hooks
    from tlatlas.atlas.sums import AtlasSums, accumulate
    from tlatlas.atlas.sweep import ablation_batch, layer_effects, position_effects
    from tlatlas.metrics import METRICS

    layers = tuple(range(model.n_layers))
    fams = tuple(dict.fromkeys(e.family for e in examples))
    sums = AtlasSums.empty(fams, layers, positions=True, max_offset=config.max_offset)
    _, cached = estimate_hooks(layers, True)
    cells = {}
    for cb in clean_batches(model, examples, cached, batch_size=config.batch_size):
        ctx = ablation_batch(model, cb, config, means, layers, POS_HOOKS)
        if estimator is None:
            le = layer_effects(ctx, layers, "exact")
            pe = position_effects(ctx, layers, "exact", config.position_chunk)
            accumulate(sums, cb.batch, cb.clean, le, pe, ctx.uids)
        else:
            le, pe = estimate_effects(ctx, layers, estimator, positions=True)
            accumulate(sums, cb.batch, cb.clean, le, counted(pe, estimator.metrics), ctx.uids)
        for i, ex in enumerate(cb.examples):
            cells[ex.uid] = pe[..., i, :]
    sums = sums.finished()
    if estimator is not None:
        for m, metric in enumerate(METRICS):
            if metric not in estimator.metrics:
                for key in ("role.sum", "offset.sum"):
                    sums.tensors[key][m] = float("nan")
    return sums, cells


def agreement(est, exact):
    """Spearman of an estimate with the exact values; None where it estimates none of them
    (``fisher`` gives no Delta-logp)."""
    from tlatlas.stats import spearman

    return None if torch.isnan(est).all() else spearman(est, exact)


def cell_vector(cells, uids, fn):
    """Every example's valid cells of ``fn(cells[uid])`` ([pcomp layer pos]), flattened."""
    out = []
    for u in uids:
        c = fn(cells[u])
        out.append(c[~torch.isnan(c)])
    return torch.cat(out)


def score_of(e, kl, dlogp):
    """The ranking score verify uses: |KL| where estimated, else |Delta-logp|."""
    return e[kl].abs() if not torch.isnan(e[kl]).all() else e[dlogp].abs()


def recall_at_k(exact, returned_values, verified, k):
    """Share of the exact top-k that the top-k of the verified entries recovers (entries
    tied with the exact k-th value count as recovered)."""
    from tlatlas.atlas.verify import verified_top_k

    kth = torch.sort(exact.flatten(), descending=True).values[k - 1]
    got = verified_top_k(returned_values.flatten(), verified.flatten(), k)
    return float((exact.flatten()[got] >= kth - 1e-6).sum()) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-family", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=["factual", "ioi", "code"])
    parser.add_argument("--pos-families", nargs="+", default=["factual"],
                        help="families of the (costlier) position-map comparison")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-naive-positions", action="store_true")
    parser.add_argument("--maps", nargs="+", default=["layer", "layer_x_position"],
                        choices=["layer", "layer_x_position"])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--models", nargs="+", default=None,
                        help="several models in one run (default: --model)")
    parser.add_argument("--ablations", nargs="+", default=["zero"], choices=["zero", "mean"])
    parser.add_argument("--skip-naive", action="store_true",
                        help="skip the naive loop and TransformerLens patching")
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS),
                        help="name:steps, e.g. ig_joint:4 (ig runs on the layer map only)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--screen", type=int, default=None, metavar="J",
                        help="verify: order the layer map by an exact screen of J examples "
                             "per family (VerifyConfig.screen; default 1; 0: the estimate)")
    parser.add_argument("--rule", choices=["patience", "bound"], default="patience",
                        help="verify's stopping rule for the layer map (VerifyConfig.rule)")
    parser.add_argument("--also-verify", nargs="+", default=[], metavar="RULE:M[@J]",
                        help="further verify settings timed on the layer map in the same run, "
                             "e.g. patience:10 bound:5@1 (rule, patience, screen J per "
                             "family); reported under verify.variants")
    parser.add_argument("--positions-ablated", choices=["all", "all-but-bos", "bos-only"],
                        default=None, help="layer ablations' position policy "
                        "(default: AtlasConfig's)")
    parser.add_argument("--reference-per-family", type=int, default=4,
                        help="reference-set size per family of mean ablation")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from tlatlas.models import load_model

    def log(msg):
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    runs = []
    for model_name in args.models or [args.model]:
        model = load_model(model_name)
        for ablation in args.ablations:
            runs.append(bench(model, model_name, ablation, args, log))
    if args.json:  # one run: its object (as before); several: the first's, plus all runs
        print(json.dumps(runs[0] if len(runs) == 1 else {**runs[0], "runs": runs}))


def bench(model, model_name, ablation, args, log) -> dict:
    from tlatlas.atlas.attribution import attribution_sums
    from tlatlas.atlas.config import AtlasConfig
    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.pipeline import REFERENCE_SEED_OFFSET
    from tlatlas.atlas.sweep import compute_atlas_sums, reference_stats
    from tlatlas.atlas.verify import VerifyConfig, family_average, verify_sums
    from tlatlas.hooks import hook_name
    from tlatlas.metrics import METRICS
    from tlatlas.stats import spearman
    from tlatlas.tasks import build_suite

    dev = model.device
    kl, dlogp = METRICS.index("kl"), METRICS.index("dlogp")
    policy = args.positions_ablated or AtlasConfig().positions_ablated
    results: dict = {"model": model_name, "ablation": ablation, "positions_ablated": policy,
                     "fingerprint": model.fingerprint.short, "device": str(dev),
                     "torch_threads": torch.get_num_threads(),
                     "cpu": platform.processor() or platform.machine(), "maps": {},
                     "estimators": {}, "verify": {}}
    means = None
    if ablation == "mean":
        fams = list(dict.fromkeys(args.families + args.pos_families))
        ref = build_suite("synthetic", seed=42 + REFERENCE_SEED_OFFSET,
                          per_family=args.reference_per_family, families=fams)
        means = reference_stats(model, list(ref), [hook_name(layer, h) for layer in
                                                   range(model.n_layers) for h in POS_HOOKS])
    estimators = [(spec, parse_estimator(spec)) for spec in args.estimators]
    vcfg = VerifyConfig(top_k=args.top_k, patience=args.patience, rule=args.rule,
                        **({} if args.screen is None else {"screen": args.screen}))
    verify_row = results["verify"]
    verify_row.update(top_k=vcfg.top_k, patience=vcfg.window, screen=vcfg.screen,
                      rule=vcfg.rule, estimator=vcfg.estimator.to_dict(),
                      layer_ranking=vcfg.layer_ranking)
    variants = [(spec, parse_verify(spec, vcfg)) for spec in args.also_verify]

    for name, positions, families in (("layer", False, args.families),
                                      ("layer_x_position", True, args.pos_families)):
        if name not in args.maps:
            continue
        examples = list(build_suite("synthetic", seed=42, per_family=args.per_family,
                                    families=families))
        uids = [ex.uid for ex in examples]
        config = AtlasConfig(ablation=ablation, batch_size=args.batch_size, positions=positions,
                             positions_ablated=policy)
        # warm-up (first forward pays one-off allocation and kernel selection costs)
        compute_atlas_sums(model, examples[:2], replace(config, positions=False, layers=(0,)),
                           means=means)
        key = "role" if positions else "layer"
        row: dict = {"examples": len(examples), "families": families}
        if positions:
            (exact, exact_cells), t_exact, m_exact = timed(
                partial(swept_cells, model, examples, config, means), dev)
        else:
            exact, t_exact, m_exact = timed(
                partial(compute_atlas_sums, model, examples, config, means=means), dev)
        attr, t_attr, m_attr = timed(partial(
            attribution_sums, model, examples, ablation=ablation, means=means,
            batch_size=args.batch_size, positions=positions, families=exact.families,
            positions_ablated=config.positions_ablated), dev)
        row["exact"] = {"seconds": t_exact, "peak_mib": m_exact / 2**20}
        row["attribution"] = {"seconds": t_attr, "peak_mib": m_attr / 2**20}
        if not args.skip_naive:
            naive, t_naive, m_naive = timed(partial(
                compute_atlas_sums, model, examples, replace(config, method="naive"),
                means=means), dev)
            row["naive"] = {"seconds": t_naive, "peak_mib": m_naive / 2**20}
            diffs = [float((per_example(naive, k) - per_example(exact, k)).abs().max())
                     for k in (["layer", "role", "offset"] if positions else ["layer"])]
            row["max_abs_diff_exact_vs_naive"] = max(diffs)
            row["speedup_exact"] = t_naive / t_exact
            row["speedup_attribution"] = t_naive / t_attr
            if positions and ablation == "zero":
                _, t_tl, m_tl = timed(partial(tl_patching_position_map, model, examples,
                                              args.batch_size), dev)
                row["tl_patching_resid_pre"] = {"seconds": t_tl, "peak_mib": m_tl / 2**20}
                row["speedup_tl_patching"] = t_naive / t_tl
        a, e = per_example(attr, key)[dlogp], per_example(exact, key)
        row["spearman_attr_vs_exact_dlogp"] = spearman(a, e[dlogp])
        row["spearman_attr_vs_exact_kl"] = spearman(a.abs(), e[kl])
        results["maps"][name] = row
        log(f"\n== {model_name}, {ablation} ablation ({policy}), {name} map: {len(examples)} examples "
            f"({', '.join(families)}), {model.n_layers} layers, device {dev}, "
            f"{torch.get_num_threads()} threads")
        for method in ("naive", "tl_patching_resid_pre", "exact", "attribution"):
            if method in row:
                r = row[method]
                sp = (f"  speed-up over naive {row['naive']['seconds'] / r['seconds']:6.2f}x"
                      if "naive" in row else "")
                log(f"  {method:24} {r['seconds']:8.1f} s  peak +{r['peak_mib']:7.1f} MiB{sp}")
        if "max_abs_diff_exact_vs_naive" in row:
            log(f"  max |exact - naive| (per example, every entry): {row['max_abs_diff_exact_vs_naive']:.2e}")

        # ---- estimators
        for spec, est in estimators:
            if positions and est.method == "ig" and est.steps > 1:
                continue
            entry = results["estimators"].setdefault(spec, {
                "method": est.name, "steps": est.steps, "seconds": {},
                "spearman_layer": None, "spearman_position": None,
                "spearman_position_roles": None})
            if positions:
                (sums, cells), t_est, _ = timed(
                    partial(swept_cells, model, examples, config, means, est), dev)
                entry["spearman_position"] = {
                    "dlogp": agreement(cell_vector(cells, uids, lambda c: c[dlogp]),
                                       cell_vector(exact_cells, uids, lambda c: c[dlogp])),
                    "kl": spearman(cell_vector(cells, uids, lambda c: score_of(c, kl, dlogp)),
                                   cell_vector(exact_cells, uids, lambda c: c[kl]))}
                r_est = per_example(sums, "role")
                entry["spearman_position_roles"] = {
                    "dlogp": agreement(r_est[dlogp], e[dlogp]),
                    "kl": spearman(score_of(r_est, kl, dlogp), e[kl])}
            else:
                sums, t_est, _ = timed(partial(
                    attribution_sums, model, examples, ablation=ablation, means=means,
                    batch_size=args.batch_size, families=exact.families, estimator=est,
                    positions_ablated=config.positions_ablated), dev)
                l_est = per_example(sums, "layer")
                entry["spearman_layer"] = {"dlogp": agreement(l_est[dlogp], e[dlogp]),
                                           "kl": spearman(score_of(l_est, kl, dlogp), e[kl])}
            entry["seconds"][name] = t_est
            sp = entry["spearman_position" if positions else "spearman_layer"]
            dl = "     –" if sp["dlogp"] is None else f"{sp['dlogp']:6.3f}"
            log(f"  estimate {spec:14} {t_est:8.1f} s  Spearman vs exact: dlogp {dl}, "
                f"KL {sp['kl']:6.3f}")

        # ---- estimate, then verify
        kept = {}

        def keep(batch_uids, values, verified, kept=kept):
            for i, u in enumerate(batch_uids):
                kept[u] = (values[..., i, :], verified[..., i, :])

        (vsums, record), t_ver, _ = timed(partial(
            verify_sums, model, examples, config, vcfg, families=exact.families, means=means,
            on_positions=keep if positions else None), dev)
        exact_layer = family_average(exact.tensors["layer.sum"][kl], exact.tensors["count"])
        hub_exact = hub_summary(exact).hub_layer
        v = verify_outcome(vsums, record, t_ver, t_exact, exact_layer, hub_exact, vcfg.top_k)
        recall_layer, hub_ver = v["recall_layer"], v["hub"]
        if positions:
            recalls = []
            for u in uids:
                values, ver = kept[u]
                for p in range(values.shape[1]):
                    ex = exact_cells[u][kl, p]
                    valid = ~torch.isnan(ex)
                    recalls.append(recall_at_k(ex[valid], values[kl, p][valid], ver[p][valid],
                                               vcfg.top_k))
            v.update(recall_position=sum(recalls) / len(recalls),
                     recall_position_min=min(recalls), rankings_position=len(recalls),
                     cells_verified=record["cells_verified"], cells=record["cells"])
        verify_row[name] = v
        if positions:
            verify_row["recall_position"] = v["recall_position"]
            verify_row["speedup_vs_exact_position"] = v["speedup_vs_exact"]
        else:
            verify_row["recall_layer"] = recall_layer
            verify_row["speedup_vs_exact_layer"] = v["speedup_vs_exact"]
            verify_row["hub_exact"] = v["hub_exact"]
        order = vcfg.estimator.name + (f", screen {vcfg.screen}" if vcfg.screen else "")
        log(f"  verify (top {vcfg.top_k}, {vcfg.rule} {vcfg.window}, {order}) "
            f"{t_ver:8.1f} s  speed-up over exact {t_exact / t_ver:5.2f}x  layer recall "
            f"{recall_layer:.2f} ({record['layer_verified']}/{record['layer_entries']} entries"
            f" verified), hub L{hub_ver} {'=' if v['hub_exact'] else '!='} exact L{hub_exact}"
            + (f"; position recall {v['recall_position']:.2f} (min {v['recall_position_min']:.1f}"
               f" over {v['rankings_position']} rankings; {record['cells_verified']}/"
               f"{record['cells']} cells verified)" if positions else ""))
        if positions:
            continue
        for spec, cfg in variants:  # the same layer map under other verify settings
            (vs, rec), t_v, _ = timed(partial(verify_sums, model, examples, config, cfg,
                                              families=exact.families, means=means), dev)
            out = verify_outcome(vs, rec, t_v, t_exact, exact_layer, hub_exact, cfg.top_k)
            verify_row.setdefault("variants", {})[spec] = {
                "rule": cfg.rule, "patience": cfg.window, "screen": cfg.screen, **out}
            log(f"  verify {spec:19} {t_v:8.1f} s  speed-up over exact {t_exact / t_v:5.2f}x"
                f"  layer recall {out['recall_layer']:.2f} ({rec['layer_verified']}/"
                f"{rec['layer_entries']} entries verified), hub L{out['hub']} "
                f"{'=' if out['hub_exact'] else '!='} exact L{hub_exact}")
    return results


def parse_verify(spec: str, base):
    """``RULE:M[@J]`` -> ``base`` with that rule, patience and screen (J per family; no
    ``@J``: no screen, the estimate's order)."""
    head, _, screen = spec.partition("@")
    rule, _, patience = head.partition(":")
    return replace(base, rule=rule, patience=int(patience) if patience else None,
                   screen=int(screen) if screen else 0)


def verify_outcome(vsums, record, seconds, t_exact, exact_layer, hub_exact, top_k) -> dict:
    """One verify run of the layer map against the exact one: speed-up, recall, hub."""
    from tlatlas.atlas.hubs import hub_summary
    from tlatlas.atlas.verify import family_average
    from tlatlas.metrics import METRICS

    vt = vsums.tensors
    vmask = (vt["layer.verified"] >= vt["count"]).all(-1)  # [component layer]
    ver_layer = family_average(vt["layer.sum"][METRICS.index("kl")], vt["count"])
    hub = hub_summary(vsums).hub_layer
    return {"seconds": seconds, "speedup_vs_exact": t_exact / seconds,
            "recall_layer": recall_at_k(exact_layer, ver_layer, vmask, top_k), "hub": hub,
            "hub_exact": hub == hub_exact, "layer_verified": record["layer_verified"],
            "layer_entries": record["layer_entries"], "layer_rounds": record["layer_rounds"],
            "stage_seconds": record["seconds"]}


if __name__ == "__main__":
    main()
