"""Scoped hooks leave every other hook on the bridge in place (tlatlas.hooks)."""

import pytest
import torch

from tlatlas.atlas.config import AtlasConfig, atlas_hook_names
from tlatlas.atlas.posmap import position_maps
from tlatlas.atlas.sweep import compute_atlas_sums, reference_stats
from tlatlas.hooks import hooks_attached
from tlatlas.steering import SteeringConfig, steering_sweep, steering_vectors
from tlatlas.steering.sweep import add_steering
from tlatlas.tasks import build_suite
from tlatlas.tokens import encode_batch


@pytest.fixture(scope="module")
def examples():
    return list(build_suite("synthetic", seed=42, per_family=2, families=["ioi", "factual"]))


class Counter:
    """A user's own hook: counts its calls, changes nothing."""

    def __init__(self):
        self.calls = 0

    def __call__(self, act, hook=None):
        self.calls += 1
        return act


def _fires(model, counter, examples):
    before = counter.calls
    with torch.inference_mode():
        model.bridge(encode_batch(examples[:1], model.tokenizer).tokens)
    return counter.calls > before


def test_user_hook_survives_every_sweep(tiny_models, examples):
    model = tiny_models["llama"]
    name = "blocks.1.hook_resid_post"
    counter = Counter()
    model.bridge.add_hook(name, counter)
    try:
        assert _fires(model, counter, examples)
        runs = {
            "reference stats": lambda: reference_stats(
                model, examples, atlas_hook_names(range(model.n_layers), True)[0]),
            "atlas": lambda: compute_atlas_sums(model, examples, AtlasConfig(batch_size=2)),
            "position map": lambda: position_maps(model, examples[:2], layers=[0, 1]),
            "steering sweep": lambda: steering_sweep(
                model, examples, steering_vectors(model, examples),
                SteeringConfig(scales=(-1.0, 0.0, 1.0), random_draws=1)),
        }
        for what, run in runs.items():
            run()
            assert _fires(model, counter, examples), f"the user's hook was removed by {what}"
    finally:
        model.bridge.reset_hooks()
    assert not _fires(model, counter, examples)


def test_hooks_attached_removes_only_its_own(tiny_models):
    bridge = tiny_models["llama"].bridge
    point = bridge.hook_dict["blocks.0.hook_attn_out"]
    mine = Counter()
    bridge.add_hook("blocks.0.hook_attn_out", mine)
    try:
        n_before = len(point.fwd_hooks)
        with hooks_attached(bridge, [("blocks.0.hook_attn_out", Counter())]):
            assert len(point.fwd_hooks) == n_before + 1
        assert len(point.fwd_hooks) == n_before
        with pytest.raises(RuntimeError), hooks_attached(
                bridge, [("blocks.0.hook_attn_out", Counter())]):
            raise RuntimeError("inside")
        assert len(point.fwd_hooks) == n_before
    finally:
        bridge.reset_hooks()


def test_user_steering_hook_held_around_a_position_map_changes_it(tiny_models, examples):
    """A steering hook the user holds while mapping positions must act on the map: the
    clean run and every ablated run are the steered model's."""
    model = tiny_models["llama"]
    exs = examples[:2]
    layer = 0
    delta = torch.randn(model.d_model) * 3.0

    def steer(act, hook=None):
        return add_steering(act, delta.expand(act.shape[0], -1),
                            torch.ones(act.shape[:2], dtype=torch.bool))

    plain = position_maps(model, exs, layers=[1, 2], components=("resid",))[0]
    with hooks_attached(model.bridge, [(f"blocks.{layer}.hook_resid_post", steer)]):
        steered = position_maps(model, exs, layers=[1, 2], components=("resid",))[0]
    again = position_maps(model, exs, layers=[1, 2], components=("resid",))[0]
    finite = torch.isfinite(plain.effect)
    assert torch.equal(finite, torch.isfinite(steered.effect))
    assert float((plain.effect[finite] - steered.effect[finite]).abs().max()) > 1e-3
    assert torch.allclose(plain.effect[finite], again.effect[finite], atol=1e-6)
    # and the steered map is the steered model's own map (naive path, same hook held)
    with hooks_attached(model.bridge, [(f"blocks.{layer}.hook_resid_post", steer)]):
        naive = position_maps(model, exs, layers=[1, 2], components=("resid",),
                              method="naive")[0]
    assert float((naive.effect[finite] - steered.effect[finite]).abs().max()) < 1e-4
