"""The benchmark scripts run end to end in their ``--quick`` modes and write what they promise.

These tests prove the scripts work (and check the invariants each script validates itself:
exact top-k counts, target sparsities, masks that change only on update steps); they never judge
a timing. The committed numbers come from full runs (``benchmarks/README.md``).
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.accuracy import sweep
from benchmarks.speed import selection, step_time


def _written(out):
    assert out.exists() and out.with_suffix(".png").stat().st_size > 0
    record = json.loads(out.read_text())
    assert record["quick"] is True and record["environment"]["versions"]["jax"]
    return record


def test_accuracy_sweep_quick_trains_every_method_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    record = sweep.main(["--quick", "--out", str(out)])
    assert _written(out)["table"] == record["table"]
    rows = sweep.read_rows(out.with_suffix(".csv"))
    assert sorted(row["method"] for row in rows) == sorted(["dense", *sweep.SPARSE_METHODS])
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["measured_sparsity"] == pytest.approx(0.0 if row["method"] == "dense" else 0.9, abs=1e-3)
    assert {check["claim"] for check in record["orderings"]} == {
        f"{m} > static" for m in ("set", "rigl", "top_kast", "gradual_magnitude")
    }
    assert "| rigl |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    sweep.main(["--quick", "--out", str(out)])  # everything is in the CSV: nothing is trained again
    assert "6 runs, 6 already in" in capsys.readouterr().out
    assert len(sweep.read_rows(out.with_suffix(".csv"))) == 6


def test_sweep_statistics():
    rows = [
        {
            "dataset": "d",
            "model": "m",
            "steps": 1,
            "method": method,
            "distribution": "erk",
            "sparsity": 0.95,
            "accuracy": accuracy,
            "training_flops_ratio": 0.5,
        }
        for method, accuracies in (("static", (0.5, 0.7)), ("rigl", (0.8, 0.8)))
        for accuracy in accuracies
    ]
    table = sweep.aggregate(rows)
    static = next(cell for cell in table if cell["method"] == "static")
    assert (static["mean"], static["seeds"]) == (pytest.approx(0.6), 2)
    assert static["std"] == pytest.approx(math.sqrt(0.02))  # sample standard deviation
    (check,) = sweep.orderings(table)
    assert check["claim"] == "rigl > static" and check["holds"]
    assert check["margin_points"] == pytest.approx(20.0)
    assert check["margin_in_std_errors"] == pytest.approx(0.2 / math.sqrt(0.02 / 2))


def test_step_time_quick(tmp_path):
    out = tmp_path / "step_time.json"
    (result,) = step_time.main(["--quick", "--out", str(out)])["results"]
    assert _written(out)["results"][0]["workload"] == result["workload"]
    for method, ratios in result["ratio_to_dense"].items():
        assert all(value > 0 and math.isfinite(value) for value in ratios.values()), method
    for method in step_time.CHANGING_MASKS:
        assert result["checks"][method]["mask_changes_normal_step"] == 0
        assert result["checks"][method]["mask_changes_update_step"] > 0


def test_selection_quick(tmp_path):
    out = tmp_path / "selection.json"
    record = selection.main(["--quick", "--out", str(out)])
    assert [r["size"] for r in _written(out)["results"]] == list(selection.QUICK_SIZES)
    for result in record["results"]:
        assert set(result["times"]) == {"jaxsparse", "argsort", "lax.top_k", "approx_max_k"}
        assert result["ratio_to_jaxsparse"]["jaxsparse"] == 1.0
