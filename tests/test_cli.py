"""The ``jaxsparse`` command line: help, clear errors, settings precedence and a real run."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from jaxsparse.training import Config, build_parser, compilation_cache, main
from jaxsparse.training._cli import _config

# test_training's run (same trajectory settings, so the compiled programs come from the cache).
FLAGS = ["--dataset", "digits", "--model", "mlp", "--steps", "40", "--batch-size", "32", "--update-every", "5"]


@pytest.fixture(scope="module", autouse=True)
def _shared_compilations(tmp_path_factory):
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache"):
        yield


def test_console_script_points_at_main():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "jaxsparse"]
    assert script.load() is main


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--method", "--sparsity", "--distribution", "--dataset", "--model", "--steps", "--resume", "--config"):
        assert flag in text
    assert "rigl" in text and "default: 0.9" in text and "--structure" in text and "--keep-dense" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["train", "--method", "rigel"], "argument --method: invalid choice: 'rigel'"),
        (["train", "--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
        (["train", "--sparsity", "1.5"], "sparsity=1.5 is invalid: must be in [0, 1)"),
        (["train", "--resume", "/nonexistent/run"], "--resume /nonexistent/run: no such folder"),
        (["train", "--structure", "2:4", "--sparsity", "0.9"], "sparsity=0.9 conflicts with structure='2:4'"),
        (["train", "--structure", "2-4"], "unknown structure '2-4'; choose one of unstructured, N:M"),
        (["train", "--method", "srigl", "--structure", "2:4"], "srigl needs the constant fan-in structure"),
        (["train", "--keep-dense", "Conv["], "keep_dense='Conv[' is not a regular expression"),
    ],
)
def test_bad_flags_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _parse(*argv: str) -> Config:
    return _config(build_parser().parse_args(["train", *argv]))


def test_precedence_defaults_file_flags(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('method = "set"\nsparsity = 0.8\nsteps = 500\n')
    config = _parse("--config", str(file), "--sparsity", "0.7", "--lr", "0.01")
    assert (config.method, config.sparsity, config.steps, config.learning_rate) == ("set", 0.7, 500, 0.01)
    assert config.batch_size == Config().batch_size


def test_boolean_settings_are_switches(tmp_path):
    assert _parse("--dense-first-layer").dense_first_layer is True
    file = tmp_path / "run.toml"
    file.write_text("dense_first_layer = true\n")
    assert _parse("--config", str(file), "--no-dense-first-layer").dense_first_layer is False
    assert _parse().dense_first_layer is False


def test_resume_starts_from_the_saved_settings(tmp_path):
    Config(method="static", sparsity=0.5, steps=100, out_dir="somewhere/else").save(tmp_path / "config.json")
    config = _parse("--resume", str(tmp_path), "--eval-every", "7")
    assert (config.method, config.sparsity, config.steps, config.eval_every) == ("static", 0.5, 100, 7)
    assert config.out_dir == str(tmp_path)
    with pytest.raises(ValueError, match="--resume DIR continues the run in DIR"):
        _parse("--resume", str(tmp_path), "--out", str(tmp_path / "other"))


def test_train_then_resume_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--eval-every", "20", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "rigl on digits/mlp: test accuracy" in printed and str(out) in printed
    saved = json.loads((out / "config.json").read_text())
    assert (saved["steps"], saved["dataset"], saved["eval_every"]) == (40, "digits", 20)
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows] == [20, 40]
    # Resuming a finished run trains nothing more and rewrites no rows.
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert (out / "metrics.jsonl").read_text().splitlines() == rows
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resume", str(out), "--method", "set", "--quiet"])
    assert exit_.value.code == 2
    assert "differ from the checkpointed run: method (checkpoint 'rigl', requested 'set')" in capsys.readouterr().err


def test_a_registered_algorithm_trains_from_the_command_line(tmp_path, capsys):
    """The worked example of docs/design.md, registered in conftest.py, is a ``--method`` like any other."""
    assert (
        main(["train", *FLAGS, "--method", "averaged_growth", "--sparsity", "0.8", "--out", str(tmp_path), "--quiet"])
        == 0
    )
    assert "averaged_growth on digits/mlp" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["method"] == "averaged_growth"
    assert 0 < summary["flops"]["training_ratio"] < 1


def test_structures_from_the_command_line(tmp_path, capsys):
    """--structure 2:4 implies 50%; a structure that does not divide LeNet-5's convs names the layer and the flag."""
    assert main(["train", *FLAGS, "--structure", "2:4", "--out", str(tmp_path / "nm"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "nm" / "summary.json").read_text())
    assert (summary["config"]["structure"], summary["config"]["sparsity"]) == ("2:4", 0.5)
    assert {layer["sparsity"] for layer in summary["layers"] if layer["name"].endswith("kernel")} == {0.5}
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", "lenet5", "--structure", "2:4", "--steps", "2", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "parameter 'Conv_0/kernel': 2:4 structure groups axis 1 of shape (5, 1, 6)" in error
    assert "--keep-dense PATTERN keeps layers dense" in error


def test_method_options_are_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--drop-fraction" in text and "--backward-sparsity" in text and "averaged_growth" in text
    config = _config(build_parser().parse_args(["train", "--method", "top_kast", "--backward-sparsity", "0.5"]))
    assert config.option("backward_sparsity") == 0.5 and config.to_dict()["backward_sparsity"] == 0.5
