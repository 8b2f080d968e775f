"""`python -m experiments.closure`: which blocks' results an edit recomputes."""

import pytest

from experiments.closure import block_files, blocks_hashing, main
from experiments.provenance import closure
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
