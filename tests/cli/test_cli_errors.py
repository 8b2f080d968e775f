"""Every invalid argument or input ends in one ``tlatlas: error:`` line and exit status 2.

Cases run in-process (``tlatlas.cli.main``); those that need no model also prove that
nothing was loaded (``load_model`` is replaced by a function that fails the test).
Two cases run as a real process to check the exit status and stderr end to end.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlatlas.cli import build_parser, main

# (id, argv, what it needs, a piece of the error line). Needs: "none" (fails before any
# model is resolved or loaded), "resolve" (the model name is resolved, nothing loaded),
# "model" / "atlas" (the tiny model is loaded; the library finds the problem).
# Placeholders: {model} a tiny checkpoint, {atlas} an atlas of it (built once, by the
# CLI), {file} an existing file, {dir} an empty directory, {out} a fresh output path.
CASES = [
    ("per-family-0", ["atlas", "--per-family", "0", "--out", "{out}"],
     "none", "--per-family: wants a whole number >= 1, got '0'"),
    ("per-family-negative", ["atlas", "--per-family", "-3", "--out", "{out}"],
     "none", "--per-family"),
    ("batch-size-0", ["atlas", "--batch-size", "0", "--out", "{out}"],
     "none", "--batch-size: wants auto or a whole number >= 2, got '0'"),
    ("batch-size-1", ["atlas", "--batch-size", "1", "--out", "{out}"],
     "none", "--batch-size: wants auto or a whole number >= 2, got '1'"),
    ("batch-size-malformed", ["atlas", "--batch-size", "automatic", "--out", "{out}"],
     "none", "--batch-size: wants auto or a whole number"),
    ("memory-budget-malformed", ["atlas", "--batch-size", "auto", "--memory-budget", "2GB5",
                                 "--out", "{out}"], "none",
     "--memory-budget: wants a size > 0 such as 2GiB, 500MB or 1073741824 (bytes), got '2GB5'"),
    ("memory-budget-unit-unknown", ["atlas", "--batch-size", "auto", "--memory-budget", "2XB",
                                    "--out", "{out}"], "none", "--memory-budget: wants a size"),
    ("memory-budget-0", ["atlas", "--batch-size", "auto", "--memory-budget", "0",
                         "--out", "{out}"], "none", "--memory-budget: wants a size > 0"),
    ("memory-budget-without-auto", ["atlas", "--memory-budget", "1GiB", "--out", "{out}"],
     "none", "--memory-budget applies to --batch-size auto"),
    ("auto-batch-with-verify", ["atlas", "--method", "verify", "--batch-size", "auto",
                                "--out", "{out}"], "none",
     "--batch-size auto works with --method exact and naive"),
    ("auto-batch-with-attribution", ["atlas", "--method", "attribution", "--batch-size",
                                     "auto", "--out", "{out}"], "none", "--batch-size auto"),
    ("components-with-verify", ["atlas", "--method", "verify", "--components", "block",
                                "--out", "{out}"], "none",
     "--components applies to --method exact and naive"),
    ("components-unknown", ["atlas", "--components", "resid", "--out", "{out}"], "none",
     "invalid choice: 'resid'"),
    ("method-unknown", ["atlas", "--method", "guess", "--out", "{out}"], "none",
     "invalid choice: 'guess'"),
    ("top-k-with-exact", ["atlas", "--top-k", "2", "--out", "{out}"], "none",
     "--top-k applies to --method verify (the entries it computes exactly), not exact"),
    ("patience-with-attribution", ["atlas", "--method", "attribution", "--patience", "3",
                                   "--out", "{out}"], "none",
     "--patience applies to --method verify"),
    ("screen-with-attribution", ["atlas", "--method", "attribution", "--screen", "1",
                                 "--out", "{out}"], "none",
     "--screen applies to --method verify"),
    ("screen-negative", ["atlas", "--method", "verify", "--screen", "-1", "--out", "{out}"],
     "none", "--screen: wants a whole number >= 0"),
    ("rule-with-exact", ["atlas", "--rule", "bound", "--out", "{out}"], "none",
     "--rule applies to --method verify"),
    ("rule-unknown", ["atlas", "--method", "verify", "--rule", "hope", "--out", "{out}"],
     "none", "--rule: invalid choice: 'hope'"),
    ("top-k-0", ["atlas", "--method", "verify", "--top-k", "0", "--out", "{out}"], "none",
     "--top-k: wants a whole number >= 1, got '0'"),
    ("patience-0", ["atlas", "--method", "verify", "--patience", "0", "--out", "{out}"], "none",
     "--patience: wants a whole number >= 1"),
    ("estimator-and-steps-with-exact", ["atlas", "--estimator", "ig_joint", "--steps", "4",
                                        "--out", "{out}"], "none",
     "--estimator, --steps apply to --method attribution or verify, not exact"),
    ("steps-with-naive", ["atlas", "--method", "naive", "--steps", "2", "--out", "{out}"],
     "none", "--steps applies to --method attribution or verify, not naive"),
    ("estimator-unknown", ["atlas", "--method", "verify", "--estimator", "eap",
                           "--out", "{out}"], "none", "--estimator: invalid choice: 'eap'"),
    ("steps-with-bound", ["atlas", "--method", "verify", "--estimator", "bound", "--steps",
                          "2", "--out", "{out}"], "none",
     "--estimator bound takes one point; --steps applies to ig_joint and ig"),
    ("steps-with-first-order", ["atlas", "--method", "attribution", "--estimator",
                                "first_order", "--steps", "4", "--out", "{out}"], "none",
     "--estimator first_order takes one point"),
    ("ig-joint-without-steps", ["atlas", "--method", "attribution", "--estimator", "ig_joint",
                                "--out", "{out}"], "none",
     "--estimator ig_joint needs --steps N"),
    ("steps-0", ["atlas", "--method", "attribution", "--steps", "0", "--out", "{out}"],
     "none", "--steps: wants a whole number >= 1"),
    ("verify-steps-without-estimator", ["atlas", "--method", "verify", "--steps", "4",
                                        "--out", "{out}"], "none",
     "--steps needs --estimator ig_joint or ig"),
    ("verify-with-ig", ["atlas", "--method", "verify", "--estimator", "ig", "--steps", "4",
                        "--out", "{out}"], "none",
     "verify needs an estimate cheaper than the exact map"),
    ("ig-with-positions", ["atlas", "--method", "attribution", "--estimator", "ig", "--steps",
                           "2", "--positions", "--out", "{out}"], "none",
     "--estimator ig runs on the layer map only"),
    ("verify-with-resample", ["atlas", "--method", "verify", "--ablation", "resample",
                              "--out", "{out}"], "none",
     "--method verify: attribution patching supports zero, mean ablation, not 'resample'"),
    ("dtype-unknown", ["atlas", "--dtype", "fp64", "--out", "{out}"], "none",
     "--dtype: invalid choice: 'fp64'"),
    ("eval-batch-size-0", ["eval", "--batch-size", "0"], "none", "--batch-size"),
    ("budget-negative", ["export-lora", "{dir}/a", "--budget", "-5", "--out", "{out}"],
     "none", "--budget: wants a whole number >= 1, got '-5'"),
    ("shard-3-of-2", ["atlas", "--shard", "3/2", "--out", "{out}"],
     "none", "--shard: wants i/n with 0 <= i < n"),
    ("shard-malformed", ["atlas", "--shard", "half", "--out", "{out}"], "none", "--shard"),
    ("families-unknown", ["atlas", "--families", "json", "nosuch", "--out", "{out}"],
     "none", "unknown task family 'nosuch'; known: json, factual"),
    ("steer-families-unknown", ["steer", "--families", "nosuch", "--out", "{out}"],
     "none", "unknown task family 'nosuch'"),
    ("train-family-unknown", ["train", "--family", "nosuch", "--out", "{out}"],
     "none", "unknown task family 'nosuch'"),
    ("out-is-a-file", ["atlas", "--per-family", "1", "--out", "{file}"],
     "none", "is an existing file; --out wants a directory"),
    ("out-below-a-file", ["steer", "--out", "{file}/sub"], "none", "is below the file"),
    ("study-out-is-a-dir", ["study", "skip", "--atlas", "{dir}/a", "--out", "{dir}"],
     "none", "is a directory; --out wants a file name"),
    ("suite-unknown", ["suite", "--suite", "nosuch"], "none", "invalid choice: 'nosuch'"),
    ("unknown-command", ["frobnicate"], "none", "invalid choice: 'frobnicate'"),
    ("no-command", [], "none", "required: COMMAND"),
    ("missing-out", ["atlas"], "none", "required: --out"),
    ("unknown-model", ["eval", "--model", "no-such-model", "--per-family", "1"],
     "resolve", "unknown model 'no-such-model'"),
    ("unknown-model-path", ["atlas", "--model", "{dir}/nosuch", "--per-family", "1",
                            "--out", "{out}"], "resolve", "unknown model"),
    ("missing-atlas", ["export-lora", "{dir}/nosuch", "--top-k", "2", "--out", "{out}"],
     "none", "missing atlas file"),
    ("study-missing-atlas", ["study", "modules", "--atlas", "{dir}/nosuch", "--out", "{out}.json"],
     "none", "missing atlas file"),
    ("merge-missing-shard", ["merge", "{dir}/nosuch", "--out", "{out}"], "none",
     "missing atlas file"),
    ("show-not-a-dir", ["show", "{dir}/nosuch"], "none", "is not a directory, nor an atlas"),
    ("show-no-atlases", ["show", "{dir}"], "none", "no *.atlas.json in"),
    ("show-family-not-in-atlas", ["show", "{atlas_dir}", "--families", "ioi"], "none",
     "families ['ioi'] are not in this atlas"),
    ("merge-a-whole-atlas", ["merge", "{atlas}", "--out", "{out}"], "none", "not a shard"),
    ("report-not-a-dir", ["report", "{dir}/nosuch", "--no-model"], "none", "not a directory"),
    ("lr-zero", ["train", "--lr", "0", "--out", "{out}"], "none", "--lr: wants a number > 0"),
    ("device-unknown", ["steer", "--device", "gpu", "--out", "{out}"], "none", "--device"),
    ("pairs-malformed", ["steer-transfer", "--from", "a", "--to", "b", "--pairs", "1-2",
                         "--out", "{out}"], "none", "--pairs: wants LA:LB"),
    ("scales-malformed", ["steer", "--scales", "1:2", "--out", "{out}"],
     "none", "scales '1:2'"),
    ("layers-all-and-numbers", ["steer", "--layers", "all", "2", "--out", "{out}"],
     "none", "not both"),
    ("contrast-missing-file", ["steer", "--contrast", "{dir}/pos.txt", "{dir}/neg.txt",
                               "--out", "{out}"], "none", "does not exist"),
    ("heldout-fraction-1", ["steer", "--heldout-fraction", "1", "--out", "{out}"],
     "none", "--heldout-fraction: wants a number in (0, 1), got '1'"),
    ("heldout-fraction-0", ["steer", "--heldout-fraction", "0", "--out", "{out}"],
     "none", "--heldout-fraction: wants a number in (0, 1)"),
    ("partition-draws-negative", ["steer", "--partition-draws", "-1", "--out", "{out}"],
     "none", "--partition-draws: wants a whole number >= 0, got '-1'"),
    ("random-draws-negative", ["steer", "--random-draws", "-2", "--out", "{out}"],
     "none", "--random-draws: wants a whole number >= 0"),
    ("linear-max-0", ["steer", "--linear-max", "0", "--out", "{out}"],
     "none", "--linear-max: wants a number > 0"),
    ("regime-unknown", ["steer", "--regime", "huge", "--out", "{out}"],
     "none", "invalid choice: 'huge'"),
    ("steer-one-per-family", ["steer", "--per-family", "1", "--families", "json", "factual",
                              "--out", "{out}"], "none", "at least 2 distinct examples per family"),
    ("steer-too-few-to-partition", ["steer", "--per-family", "2", "--families", "json",
                                    "factual", "--out", "{out}"], "none", "--partition-draws 0"),
    ("steer-vector-per-family-gone", ["steer", "--vector-per-family", "8", "--out", "{out}"],
     "none", "--vector-per-family is gone"),
    ("train-atlas-strategy-needs-atlas", ["train", "--strategy", "atlas", "--top-k", "1",
                                          "--out", "{out}"], "none", "needs --atlas"),
    ("top-k-500", ["export-lora", "{atlas}", "--top-k", "500", "--out", "{out}"],
     "none", "--top-k 500 is more layers than the atlas has (3)"),
    ("export-needs-a-size", ["export-lora", "{atlas}", "--out", "{out}"],
     "none", "needs --budget P or --top-k K"),
    ("study-top-k-500", ["study", "modules", "--atlas", "{atlas}", "--top-k", "500",
                         "--out", "{out}.json"], "none", "--top-k 500 is more layers"),
    ("skip-k-too-many", ["study", "skip", "--atlas", "{atlas}", "--k", "9",
                         "--out", "{out}.json"], "none", "--k 9 is more blocks"),
    ("recovery-modules-unknown", ["study", "skip", "--atlas", "{atlas}", "--k", "1",
                                  "--recovery-modules", "o,zz", "--out", "{out}.json"],
     "none", "--recovery-modules 'o,zz'"),
    # these need the model: the library finds the problem
    ("budget-too-small", ["export-lora", "{atlas}", "--budget", "10", "--out", "{out}"],
     "atlas", "budget 10 is below one layer's adapters"),
    ("layer-out-of-range", ["atlas", "--model", "{model}", "--per-family", "1", "--families",
                            "json", "--layers", "7", "--out", "{out}"],
     "model", "layer(s) [7] out of range"),
    ("memory-budget-too-small", ["atlas", "--model", "{model}", "--per-family", "2",
                                 "--families", "json", "--batch-size", "auto",
                                 "--memory-budget", "1KiB", "--out", "{out}"],
     "model", "over the budget of 0.0 MiB"),
    ("modules-unknown", ["export-lora", "{atlas}", "--top-k", "1", "--modules", "zz",
                         "--out", "{out}"], "atlas", "'zz' names no block module"),
]


@pytest.fixture(scope="module")
def atlas_stem(tiny_dirs, tmp_path_factory) -> Path:
    """An atlas of the tiny llama (2 families, 2 examples each), built by the CLI."""
    out = tmp_path_factory.mktemp("cli_atlas")
    assert main(["atlas", "--model", str(tiny_dirs["llama"]), "--per-family", "2",
                 "--families", "json", "factual", "--batch-size", "2", "--out", str(out)]) == 0
    return out / "seed42"


def _fill(argv: list[str], **values: str) -> list[str]:
    return [a.format(**values) for a in argv]


def _error_line(err: str) -> str:
    """The one ``tlatlas: error:`` line, last on stderr (a library bar may precede it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tlatlas: error:")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    return errors[0]


def _forbid_model_loads(monkeypatch) -> None:
    """Make every binding of ``tlatlas.models.load_model`` fail the test until it ends.

    Every tlatlas module is imported first: a module imported while the patch is active
    would bind the failing stand-in at import and keep it after the patch is undone
    (``from tlatlas.models import load_model``), breaking later tests in the session."""
    import importlib
    import pkgutil

    import tlatlas
    from tlatlas import models

    for info in pkgutil.walk_packages(tlatlas.__path__, "tlatlas."):
        if info.name != "tlatlas.__main__":
            importlib.import_module(info.name)
    real = models.load_model

    def no_model(*args, **kwargs):
        pytest.fail("a model was loaded before the argument was checked")

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "tlatlas" and getattr(module, "load_model", None) is real:
            monkeypatch.setattr(module, "load_model", no_model)


@pytest.mark.parametrize(("argv", "needs", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_input_is_one_error_line(argv, needs, expected, tmp_path, capsys, monkeypatch,
                                         request):
    uses_atlas = any("{atlas" in a for a in argv)
    values = {"file": str(tmp_path / "a-file"), "dir": str(tmp_path / "empty"),
              "out": str(tmp_path / "out"), "model": "no-model", "atlas": "no-atlas"}
    Path(values["file"]).write_text("not a directory\n")
    Path(values["dir"]).mkdir()
    if needs in ("model", "atlas"):
        values["model"] = str(request.getfixturevalue("tiny_dirs")["llama"])
    if uses_atlas:
        stem = request.getfixturevalue("atlas_stem")
        values.update(atlas=str(stem), atlas_dir=str(stem.parent))
    if needs == "none":  # the error must come before any model is loaded
        _forbid_model_loads(monkeypatch)
    capsys.readouterr()
    code = main(_fill(argv, **values))
    captured = capsys.readouterr()
    assert code == 2, captured
    line = _error_line(captured.err)
    assert expected in line, line
    if needs == "none":  # nothing else on stderr at all
        assert captured.err.strip() == line, captured.err
    assert not Path(values["out"]).exists()


def test_cases_cover_the_issue_list():
    ids = {c[0] for c in CASES}
    assert len(CASES) >= 16 and len(ids) == len(CASES)
    assert {"per-family-0", "per-family-negative", "batch-size-0", "budget-too-small",
            "budget-negative", "top-k-500", "shard-3-of-2", "families-unknown",
            "train-family-unknown", "out-is-a-file", "unknown-model", "missing-atlas",
            "layer-out-of-range"} <= ids


@pytest.mark.parametrize("argv", [
    ["atlas", "--per-family", "0", "--out", "x"],
    ["eval", "--model", "no-such-model", "--per-family", "1"],
], ids=["argparse", "library"])
def test_a_real_process_prints_one_line_and_exits_2(argv, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run([sys.executable, "-m", "tlatlas", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == _error_line(run.stderr)
    assert run.stdout == ""


@pytest.mark.parametrize("error", [
    FileExistsError(17, "File exists", "/some/out"),
    NotADirectoryError(20, "Not a directory", "/some/file/out"),
    FileNotFoundError(2, "No such file or directory", "/some/input"),
], ids=lambda e: type(e).__name__)
def test_a_user_path_error_is_one_line(error, monkeypatch, capsys):
    def fails(args):
        raise error

    monkeypatch.setattr("tlatlas.cli.core.cmd_models", fails)
    assert main(["models"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == f"tlatlas: error: {error.filename}: {error.strerror.lower()}"


def test_a_bug_keeps_its_traceback(monkeypatch):
    """main turns the library's errors into one line, never an arbitrary exception."""
    def boom(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr("tlatlas.cli.core.cmd_models", boom)
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["models"])


def test_help_exits_0_and_nl_is_a_hidden_alias_of_suite_nl(capsys):
    assert main(["--help"]) == 0
    assert main(["suite", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--suite {synthetic,nl}" in out and "--nl" not in out
    assert main(["suite", "--nl", "--stats", "--json"]) == 0
    captured = capsys.readouterr()
    assert '"kind": "nl"' in captured.out
    assert "--nl is deprecated; use --suite nl" in captured.err


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_command_has_help():
    commands = _commands(build_parser())
    assert {"models", "suite", "eval", "atlas", "show", "merge", "export-lora", "train",
            "study", "report", "steer", "steer-transfer"} <= commands.keys()
    missing, no_default = [], []
    for name, p in commands.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                missing.append(label)
            shows_default = action.option_strings and action.default not in (
                None, False, argparse.SUPPRESS)
            if shows_default and "default" not in action.help:
                no_default.append(label)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not give the default: {no_default}"


def test_one_spelling_of_the_suite_choice():
    for name, p in _commands(build_parser()).items():
        options = {s for a in p._actions for s in a.option_strings}
        assert "--nl" not in options or name in ("suite", "eval", "atlas", "steer",
                                                  "steer-transfer"), name
        if "--per-family" in options:
            suite = next(a for a in p._actions if "--suite" in a.option_strings)
            assert tuple(suite.choices) == ("synthetic", "nl") and suite.default == "synthetic"


def test_steer_regime_grids_match_the_library():
    from tlatlas.cli.steer import REGIME_GRIDS
    from tlatlas.steering.config import REGIME_SCALES

    assert REGIME_GRIDS.keys() == REGIME_SCALES.keys()
    for regime, text in REGIME_GRIDS.items():
        assert tuple(float(s) for s in text.split(",")) == REGIME_SCALES[regime]


def test_position_choices_match_the_library():
    from tlatlas.atlas.ablation import POSITION_POLICIES
    from tlatlas.atlas.config import COMPONENTS, AtlasConfig
    from tlatlas.cli.atlas import COMPONENT_CHOICES, DEFAULT_POSITIONS, POSITION_CHOICES

    assert tuple(POSITION_CHOICES) == POSITION_POLICIES and COMPONENT_CHOICES == COMPONENTS
    assert AtlasConfig().positions_ablated == DEFAULT_POSITIONS
