"""Per-model steering grids: the runner scales a steering block's grid for a calibrated
model, records it in the task's parameters, and leaves every other task as it was."""

import pytest

from experiments import calibration, runner
from experiments.blocks import all_blocks, select_blocks
from tlatlas.steering.config import LINEAR_SCALES


@pytest.fixture
def calibrated(monkeypatch):
    monkeypatch.setattr(calibration, "STEERING_SCALE", {"calibrated": 0.1})
    monkeypatch.setattr(runner, "_weights_sha", lambda name: f"sha-{name}")


def test_a_calibrated_model_gets_the_steering_grid_times_its_factor(calibrated):
    blocks = all_blocks()
    controls, quant, transfer, hub = (blocks[b] for b in (
        "steer-controls", "steer-quant", "steer-transfer", "hub-replication"))
    # steer-controls at small names no grid: the linear regime's is scaled
    assert calibration.model_params(controls, ["calibrated"], "small") == {
        "scales": [round(0.1 * s, 12) for s in LINEAR_SCALES], "scale_factor": 0.1}
    assert calibration.model_params(quant, ["calibrated"], "small")["scales"] == [
        -0.4, -0.05, 0.0, 0.05, 0.4]
    assert calibration.model_params(controls, ["plain"], "small") == {}
    assert calibration.model_params(hub, ["calibrated"], "small") == {}  # not steering
    assert calibration.model_params(transfer, ["calibrated", "plain"], "small") == {}


def test_the_plan_records_the_scaled_grid_and_leaves_other_models_alone(calibrated, tmp_path):
    tasks = runner.plan(select_blocks("steer-controls"), ["plain", "calibrated"], [42],
                        "small", tmp_path)
    by_model = {t.models[0]: t.prov.params for t in tasks}
    assert "scales" not in by_model["plain"]  # the block's own parameters, untouched
    assert by_model["calibrated"]["scales"] == [round(0.1 * s, 12) for s in LINEAR_SCALES]
    assert by_model["calibrated"]["scale_factor"] == 0.1
    assert {k: v for k, v in by_model["calibrated"].items()
            if k not in ("scales", "scale_factor")} == by_model["plain"]
