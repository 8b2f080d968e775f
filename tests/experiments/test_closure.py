"""`python -m experiments.closure`: which blocks' results an edit recomputes."""

import pytest

from experiments.closure import block_files, blocks_hashing, main
from experiments.provenance import closure, direct_imports, outside_closure
from experiments.records import CONTEXT_MODULES


def test_block_files_are_the_closure_its_code_version_hashes():
    files = block_files("steer-quant")
    assert "experiments/blocks/steering_blocks.py" in files
    assert "tlatlas/steering/sweep.py" in files
    assert "bridges/train.py" not in files  # the steering blocks train no adapter
    from experiments.blocks import all_blocks
    module = all_blocks()["steer-quant"].run.__module__
    assert len(files) == len(closure((module, *CONTEXT_MODULES)))


def test_an_edit_recomputes_exactly_the_blocks_that_import_it():
    steering = set(blocks_hashing("tlatlas/steering/sweep.py"))
    assert "steer-controls" in steering and "hub-replication" not in steering
    assert set(blocks_hashing("bridges/train.py")) >= {"lora-strategies", "module-sweep"}
    assert "steer-quant" not in blocks_hashing("bridges/train.py")
    assert blocks_hashing("experiments/runner.py") == ()


def test_cli_names_blocks_and_rejects_a_missing_file(capsys):
    assert main(["experiments/calibration.py"]) == 0
    assert "no block" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such file"):
        main(["tlatlas/no_such_module.py"])
    with pytest.raises(SystemExit, match="unknown block"):
        main(["--block", "no-such-block"])


def test_estimators_and_verification_are_outside_every_blocks_closure():
    # no block builds an estimated atlas, so editing them recomputes nothing ...
    for f in ("tlatlas/atlas/verify.py", "tlatlas/atlas/verify_spec.py",
              "tlatlas/atlas/estimators.py", "tlatlas/atlas/estimate_spec.py",
              "tlatlas/atlas/attribution.py"):
        assert blocks_hashing(f) == (), f
    # ... while the exact path and the lazy loader are in every atlas block's
    for f in ("tlatlas/atlas/sweep.py", "tlatlas/atlas/methods.py"):
        assert {"hub-replication", "ablation-kinds"} <= set(blocks_hashing(f)), f


def test_type_checking_imports_are_not_followed_and_lazy_loads_are_caught():
    imports = direct_imports("tlatlas.atlas.pipeline")
    assert "tlatlas.atlas.methods" in imports
    assert "tlatlas.atlas.estimate_spec" not in imports  # only under `if TYPE_CHECKING:`
    names = ("experiments.blocks.atlas_blocks", *CONTEXT_MODULES)
    assert outside_closure(names, frozenset({"tlatlas.atlas.verify", "tlatlas.atlas.sweep"})) \
        == ("tlatlas.atlas.verify",)
