"""The stopping rule's floor (benchmarks/verify_floor.py) on a hand-built exact map."""

import importlib.util
from pathlib import Path

import torch

from tlatlas.atlas.config import COMPONENTS
from tlatlas.metrics import METRICS

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("verify_floor", REPO / "benchmarks" / "verify_floor.py")
verify_floor = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verify_floor)


def _map(kl: torch.Tensor) -> torch.Tensor:
    """A layer.sum [metric component layer family] with one family of count 1."""
    out = torch.zeros(len(METRICS), *kl.shape, 1, dtype=torch.float64)
    out[METRICS.index("kl"), ..., 0] = kl
    return out


def test_perfect_order_verifies_top_k_plus_patience_and_the_hub_window():
    n_layers = 6
    # distinct KL per (component, layer): attn 0..5, mlp 10..15, block 20..25 (rising with layer)
    kl = torch.stack([torch.arange(6.0) + 10 * c for c in range(len(COMPONENTS))])
    r = verify_floor.oracle_floor(_map(kl), torch.ones(1), list(range(n_layers)), n_layers,
                                  top_k=2, patience=2)
    # pooled ranking: the 4 largest are block L5..L2; the block ranking's 1 + 2 are block
    # L5, L4, L3: the union is block L2..L5, one round
    assert r["entries"] == 4 and r["rounds"] == 1 and r["layers"] == 4
    exact_rows = n_layers + 3 * sum(n_layers - layer for layer in range(n_layers))
    verify_rows = 3 * n_layers + 1 * n_layers + sum(n_layers - layer for layer in (2, 3, 4, 5))
    assert (r["exact_layer_rows"], r["layer_rows"]) == (exact_rows, verify_rows)
    assert abs(r["ceiling"] - exact_rows / verify_rows) < 1e-12


def test_early_layers_cost_more_than_late_ones():
    n_layers = 6
    late = torch.stack([torch.arange(6.0) + 10 * c for c in range(len(COMPONENTS))])
    early = late.flip(-1)  # the same values, largest at the first layers
    kw = dict(count=torch.ones(1), layers=list(range(n_layers)), n_layers=n_layers, top_k=2,
              patience=2)
    assert (verify_floor.oracle_floor(_map(early), **kw)["ceiling"]
            < verify_floor.oracle_floor(_map(late), **kw)["ceiling"])


def test_ceiling_interval_resamples_examples_within_families():
    n_layers, n_ex = 6, 8
    base = torch.stack([torch.arange(6.0) + 10 * c for c in range(len(COMPONENTS))])
    family = torch.arange(n_ex) % 2
    rows = torch.zeros(len(METRICS), len(COMPONENTS), n_layers, n_ex, dtype=torch.float64)
    kw = dict(layers=list(range(n_layers)), n_layers=n_layers, top_k=2, patience=2)
    # identical examples: every replicate is the observed map, the interval is a point
    rows[METRICS.index("kl")] = base[..., None]
    ci = verify_floor.ceiling_interval(rows, family, 2, **kw, replicates=50)
    whole = verify_floor.oracle_floor(rows.sum(-1, keepdim=True), torch.ones(1) * n_ex, **kw)
    assert ci.estimate == ci.ci_low == ci.ci_high == whole["ceiling"] and ci.n == n_ex
    # one example per family carries an early-layer effect: replicates differ, and the
    # interval spans values on both sides of the observed order's ceiling or touches it
    rows[METRICS.index("kl"), COMPONENTS.index("block"), 0, :2] = 1000.0
    ci = verify_floor.ceiling_interval(rows, family, 2, **kw, replicates=200)
    assert ci.ci_low < ci.ci_high and ci.ci_low <= ci.estimate <= ci.ci_high
