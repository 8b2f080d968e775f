"""The findings table: origin claims judged from block statements."""

import pytest

from experiments.blocks import Statement
from experiments.findings import ORIGIN_CLAIMS, combined_verdict, relative_verdict, render_findings


def claim(origin, verdict, *, agrees=True, model="m", value="v", src="results/a.json"):
    return Statement(kind="claim", text="t", sources=(src,), n=12, ci=(0.1, 0.4),
                     verdict=verdict, origin=origin, agrees=agrees, model=model, value=value)


def test_a_statement_of_the_opposite_flips_its_verdict():
    assert relative_verdict(claim("mean-useless", "supported", agrees=False)) == "contradicted"
    assert relative_verdict(claim("mean-useless", "contradicted", agrees=False)) == "supported"
    assert relative_verdict(claim("mean-useless", "inconclusive", agrees=False)) == "inconclusive"
    assert relative_verdict(claim("nl-hub", "supported")) == "supported"


def test_statements_that_disagree_are_inconclusive_and_smoke_is_never_evidence():
    assert combined_verdict(["supported", "supported"]) == "supported"
    assert combined_verdict(["supported", "contradicted"]).startswith("inconclusive")
    assert combined_verdict(["smoke: not evidence"]) == "smoke: not evidence"
    assert combined_verdict(["smoke: not evidence", "contradicted"]) == "contradicted"
    assert combined_verdict([]) == "not run yet"


def test_every_origin_claim_has_one_row_with_its_verdict():
    found = [claim("mean-useless", "supported", agrees=False, model="smollm2-135m",
                   value="mean ablation 0.400 nats"),
             claim("mean-useless", "supported", agrees=False, model="gemma3-270m"),
             claim("nl-hub", "inconclusive", model="smollm2-135m",
                   src="results/smollm2-135m/nl-hub/small-seed137.json", value="L0 vs L0"),
             Statement(kind="threat", text="x", sources=("results/b.json",), origin="nl-hub"),
             Statement(kind="threat", text="y", sources=("results/smollm2-135m/nl-hub/"
                                                          "small-seed137.json",))]
    text = render_findings(found, "python -m experiments.claims")
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # untouched claims: one row each; mean-useless: one row per model
    assert len(table) == len(ORIGIN_CLAIMS) + 1
    mean = [line for line in table if "Mean ablation is useless" in line or line.startswith("| 〃")]
    assert len(mean) == 2 and all("contradicted" in line for line in mean)
    assert "mean ablation 0.400 nats (n = 12, 95% CI [0.1, 0.4])" in text
    coder = next(line for line in table if "Code training moves the hub" in line)
    assert "not testable here" in coder and "no Qwen weights" in coder
    o_proj = next(line for line in table if "o_proj is the most efficient" in line)
    assert "not run yet (module-sweep)" in o_proj
    assert "`results/a.json`" in text
    assert "seed 137: L0 vs L0 (n = 12" in text  # the seed from a one-record statement's file
    nl = next(line for line in table if "natural-language prompts" in line)
    assert "inconclusive; 1 threat in threats.md cites these files" in nl
    assert sum("threat" in line for line in table) == 1  # only the row whose file it cites
    assert "python -m experiments.claims" in text


def test_an_unknown_origin_is_refused():
    with pytest.raises(ValueError, match="unknown origin claims"):
        render_findings([claim("no-such-claim", "supported")], "cmd")


def test_an_interval_below_the_claimed_size_contradicts_the_claim():
    # NF4 "amplifies 476x": a ratio - 1 of 0.01 [-0.01, 0.03] is inconclusive about any
    # amplification, and contradicts 476x
    small = Statement(kind="claim", text="t", sources=("results/q.json",), n=48,
                      ci=(-0.01, 0.03), verdict="inconclusive", origin="nf4-amplifies",
                      model="m", value="ratio - 1 = 0.01")
    assert relative_verdict(small) == "contradicted"
    row = next(line for line in render_findings([small], "cmd").splitlines()
               if "NF4 amplifies" in line)
    assert "contradicted (the claimed 476× lies above every interval)" in row
    # an interval that reaches the claimed size keeps the statement's own verdict
    huge = Statement(kind="claim", text="t", sources=("results/q.json",), n=48,
                     ci=(300.0, 600.0), verdict="supported", origin="nf4-amplifies")
    assert relative_verdict(huge) == "supported"
    # smoke never counts, and claims without a stated size are untouched
    smoke = Statement(kind="claim", text="t", sources=("results/q.json",), n=2,
                      ci=(-0.01, 0.03), verdict="smoke: not evidence", origin="nf4-amplifies")
    assert relative_verdict(smoke) == "smoke: not evidence"
    assert relative_verdict(claim("nl-hub", "inconclusive")) == "inconclusive"


def test_a_timed_claim_names_the_host_of_each_result_file():
    speed = claim("nf4-vs-int8-speed", "supported", src="results/m/quant-speed/small-seed42.json")
    hub = claim("nl-hub", "supported", src="results/m/nl-hub/small-seed42.json")
    host = {"cpu": "Example CPU", "cpus": 2, "cpu_capability": "AVX512", "cuda_device": None}
    hosts = {speed.sources[0]: host, hub.sources[0]: host}
    rows = render_findings([speed, hub], "cmd", hosts).splitlines()
    row = next(line for line in rows if "int8 is 52% slower" in line)
    assert "timed on Example CPU, 2 CPUs, AVX512: timings belong to their host" in row
    assert "Example CPU" not in next(line for line in rows if "natural-language" in line)
    # a file without a recorded host says so, in place of a host
    bare = next(line for line in render_findings([speed], "cmd").splitlines()
                if "int8 is 52% slower" in line)
    assert "timed on an unrecorded host" in bare
