"""The agreement benchmark (benchmarks/estimate_agreement.py) on hand-built maps."""

import importlib.util
import math
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "estimate_agreement", REPO / "benchmarks" / "estimate_agreement.py")
agreement = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agreement)


def _dump(tmp_path: Path) -> Path:
    """Six examples of [metric pcomp layer pos] cells: ``same`` ranks like the exact KL
    (its |dlogp|, as a first-order estimate without KL), ``reversed`` in the opposite
    order (its KL), ``noisy`` in between; the last position is a pad."""
    g = torch.Generator().manual_seed(0)
    d = {"model": "m", "ablation": "zero", "uids": list(range(6)), "exact": {},
         "same:1": {}, "reversed:1": {}, "noisy:1": {}}
    for u in d["uids"]:
        kl = torch.rand(2, 3, 5, generator=g)
        kl[..., -1] = float("nan")
        nan = torch.full_like(kl, float("nan"))
        d["exact"][u] = torch.stack([kl, kl, nan])
        d["same:1"][u] = torch.stack([nan, -3 * kl, nan])  # |dlogp| ranks
        d["reversed:1"][u] = torch.stack([1 - kl, nan, nan])
        d["noisy:1"][u] = torch.stack([kl + 0.3 * torch.rand(kl.shape, generator=g), nan, nan])
    path = tmp_path / "cells.pt"
    torch.save(d, path)
    return path


def test_cells_rank_by_verify_score_and_pair_the_replicates(tmp_path, capsys):
    sources, family, label = agreement.cell_sources(
        str(_dump(tmp_path)), ["same:1", "reversed:1", "noisy:1", "absent:1"])
    assert set(sources) == {"same:1", "reversed:1", "noisy:1"} and "n = 6" in label
    exact, score = sources["same:1"](torch.arange(6))
    assert exact.numel() == 6 * 2 * 3 * 4  # pads left out
    agreement.report(sources, family, label, "noisy:1", 200)
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert "spearman 1.000 [1.000, 1.000]; minus noisy:1: +" in lines["same:1"]
    assert "spearman -1.000" in lines["reversed:1"]
    assert "minus noisy:1: -" in lines["reversed:1"]
    rho = float(lines["noisy:1"].split()[2])
    assert 0.5 < rho < 1.0


def test_family_mean_weights_families_equally():
    ex = torch.tensor([[[[1.0, 3.0, 10.0]]]])  # [metric component layer example]
    family = torch.tensor([0, 0, 1])
    # family 0's mean is 2, family 1's is 10: their mean is 6, not the example mean 14/3
    assert agreement.family_mean(ex, family, 2, torch.arange(3)).item() == 6.0
    # a replicate that draws example 0 twice
    assert agreement.family_mean(ex, family, 2, torch.tensor([0, 0, 2])).item() == 5.5


def test_a_screen_is_compared_with_the_whole_map_and_with_the_rest():
    v = torch.arange(6.0).view(2, 3)  # [component layer]
    family = torch.tensor([0, 0, 1, 1])
    # examples 0 and 2 (the screen) hold v, examples 1 and 3 hold it reversed
    kl = torch.stack([v, v.flip(0).flip(1), v, v.flip(0).flip(1)], -1)
    whole, rest = agreement.screen_rhos(kl, family, 2, torch.tensor([0, 2]))
    assert rest == -1.0  # the other examples rank the entries the other way round
    assert math.isnan(whole)  # v + reversed v is flat: no ranking to agree with
    same = torch.stack([v, v, v, v], -1)
    assert agreement.screen_rhos(same, family, 2, torch.tensor([0, 2])) == (1.0, 1.0)


def test_fisher_estimates_are_labelled_by_their_outcome_count():
    assert agreement._label({"name": "bound"}) == "bound"
    assert agreement._label({"name": "fisher", "outcomes": 8}) == "fisher"
    assert agreement._label({"name": "fisher", "outcomes": 32}) == "fisher/32"
