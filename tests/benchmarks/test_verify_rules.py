"""Stopping rules replayed on saved maps (benchmarks/verify_rules.py), on hand-built maps."""

import importlib.util
import sys
from pathlib import Path

import torch

from tlatlas.atlas.config import COMPONENTS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # verify_rules imports its sibling verify_floor
_spec = importlib.util.spec_from_file_location("verify_rules", REPO / "benchmarks" / "verify_rules.py")
verify_rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verify_rules)

N_LAYERS = 6
LAYERS = list(range(N_LAYERS))
BLOCK = COMPONENTS.index("block")


def _kl() -> torch.Tensor:
    """Distinct effects [component layer]: attn 0..5, mlp 10..15, block 20..25."""
    return torch.stack([torch.arange(6.0) + 10 * c for c in range(len(COMPONENTS))]).double()


def test_bound_stops_after_one_round_when_the_estimate_is_proportional():
    kl = _kl()
    r = verify_rules.replay(kl, 0.5 * kl, LAYERS, N_LAYERS, 2, "bound", 2)
    # every ratio exact / estimate is 2: after k + W = 4 entries (block L5..L2) the next
    # estimate (block L1: 10.5) times 2 = 21 is below the 2nd exact value (24): stop
    assert r["entries"] == 4 and r["recall"] == 1.0 and r["hub_ok"]
    # the patience rule verifies the same window, then needs nothing more on this order
    p = verify_rules.replay(kl, 0.5 * kl, LAYERS, N_LAYERS, 2, "patience", 2)
    assert p["entries"] == 4 and p["recall"] == 1.0


def test_a_misleading_order_is_reported_as_missed_recall_and_a_wrong_hub():
    kl = _kl()
    score = kl.clone()
    score[BLOCK, 5] = -1.0  # the true hub (and top entry) is ranked last by the estimate
    r = verify_rules.replay(kl, score, LAYERS, N_LAYERS, 2, "patience", 1)
    assert r["recall"] < 1.0 and not r["hub_ok"]
    assert r["speedup"] > 1.0  # it stopped early: fast and wrong, which the replay exposes


def test_screen_cost_and_verify_only_speed_up():
    kl = _kl()
    free = verify_rules.replay(kl, kl, LAYERS, N_LAYERS, 2, "patience", 2, estimate_rows=0.0)
    grad = verify_rules.replay(kl, kl, LAYERS, N_LAYERS, 2, "patience", 2)
    assert free["speedup"] == free["speedup_verify_only"] == grad["speedup_verify_only"]
    assert grad["speedup"] < free["speedup"]  # the 3 n rows of the gradient estimate


def test_screen_takes_the_first_examples_of_each_family():
    family = torch.tensor([0, 1, 0, 1, 0, 1])
    idx = torch.tensor([5, 4, 3, 2, 1, 0])  # a replicate's order
    assert verify_rules.screened(idx, family, 2, 1).tolist() == [4, 5]
    assert verify_rules.screened(idx, family, 2, 2).tolist() == [4, 2, 5, 3]
