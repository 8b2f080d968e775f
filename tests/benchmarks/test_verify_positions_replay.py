"""The position-map replay (benchmarks/verify_positions_replay.py) on hand-built cells."""

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
_spec = importlib.util.spec_from_file_location(
    "verify_positions_replay", REPO / "benchmarks" / "verify_positions_replay.py")
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)


def _cells() -> torch.Tensor:
    """KL [layer pos] of 4 layers x 5 positions, scored at position 3 (position 4 is a pad):
    distinct values, the largest at the scored position."""
    kl = torch.arange(20.0).view(4, 5) / 10
    kl[:, 3] += 10.0
    kl[:, 4] = float("nan")
    return kl


def test_ranking_costs_follow_the_suffix_and_the_layers_run():
    order, n_front, ex, cost = replay.ranking_cells(_cells(), _cells(), front=True)
    assert n_front == 4 and len(order) == 16  # the scored position's 4 cells come first
    assert set(order[:4]) == {3, 8, 13, 18}
    cost = cost.view(4, 5)
    assert cost[0, 0] == 4 * 4 and cost[3, 3] == 1 * 1 and cost[2, 1] == 2 * 3
    assert (cost[:, 4] == 0).all()  # a pad costs nothing and is never ranked


def test_a_good_order_recovers_the_top_and_a_reversed_one_misses_it():
    kl = _cells()
    cells, recall, cost, total = replay.replay_one(kl, kl, front=False, top_k=2, patience=2)
    assert recall == 1.0 and cells == 4 and 0 < cost < total
    # the top 2 (scored position, layers 3 and 2) ranked last, and nothing verified up front:
    # the rule stops after the next 4, a stretch whose last 2 never entered the top
    worst = kl.clone()
    worst[2:, 3] = -1.0
    cells, recall, _, _ = replay.replay_one(kl, worst, front=False, top_k=2, patience=2)
    assert recall == 0.0 and cells == 4
    # verifying the scored position up front rescues the same bad order
    _, recall, _, _ = replay.replay_one(kl, worst, front=True, top_k=2, patience=2)
    assert recall == 1.0


def test_missed_cells_names_the_unverified_top_cells_and_their_ranks():
    kl = _cells()
    worst = kl.clone()
    worst[2:, 3] = -1.0  # the top 2 (layers 3 and 2 at the scored position) ranked last
    missed = replay.missed_cells(kl, worst, front=False, top_k=2, patience=2)
    assert sorted(missed) == [(2, 3, 14), (3, 3, 15)]
    assert replay.missed_cells(kl, kl, front=False, top_k=2, patience=2) == []


def test_order_score_reads_kl_where_given_else_dlogp_magnitude():
    kl_est = torch.full((3, 2, 4, 5), float("nan"))
    kl_est[0] = -_cells()  # a KL estimate (sign dropped for ranking)
    dlogp_est = torch.full((3, 2, 4, 5), float("nan"))
    dlogp_est[1] = -2 * _cells()  # an estimate with no KL (first order): its Delta-logp
    d = {"fisher:1": {7: kl_est}, "first_order:1": {7: dlogp_est}}
    got = replay.order_score(d, "fisher", 7)
    assert torch.equal(got[0].nan_to_num(-1), _cells().nan_to_num(-1))
    got = replay.order_score(d, "first_order:1", 7)
    assert torch.equal(got[1].nan_to_num(-1), (2 * _cells()).nan_to_num(-1))
