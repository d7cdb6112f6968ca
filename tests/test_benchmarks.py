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
from benchmarks.speed import compare, distributed, memory, selection, step_time, versus_commit, wall_clock
from benchmarks.speed.workloads import QUICK_WORKLOADS


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
    runs = len(sweep.SPARSE_METHODS) + 1  # the registry's methods (the worked example too) and dense
    assert "averaged_growth" in sweep.SPARSE_METHODS
    assert f"{runs} runs, {runs} already in" in capsys.readouterr().out
    assert len(sweep.read_rows(out.with_suffix(".csv"))) == runs


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


def test_memory_quick_counts_the_masks_and_the_donated_state(tmp_path):
    out = tmp_path / "memory.json"
    (model,) = memory.main(["--quick", "--methods", "dense", "rigl", "--out", str(out)])["models"]
    assert _written(out)["models"][0]["label"] == model["label"]
    dense, rigl = model["variants"]["dense"], model["variants"]["rigl"]
    (workload,) = QUICK_WORKLOADS
    sizes = (workload.input_shape[0], *workload.options["hidden_sizes"], 10)
    kernel_weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    fields = rigl["state_bytes"]["optimizer_fields"]
    assert fields["masks"] == kernel_weights  # one byte per sparsified weight, nothing else
    assert fields["inner_state"] == rigl["state_bytes"]["params"] == dense["state_bytes"]["params"]  # one momentum
    for variant in (dense, rigl):  # params and optimizer state are donated: the step aliases all of it
        assert variant["xla"]["alias_bytes"] == variant["state_bytes"]["total"]
    assert rigl["ratio_to_dense"]["state_bytes"] > 1


def test_wall_clock_quick_runs_the_cli(tmp_path):
    out = tmp_path / "wall_clock.json"
    methods = wall_clock.main(["--quick", "--methods", "dense", "rigl", "--out", str(out)])["methods"]
    assert set(_written(out)["methods"]) == set(methods) == {"dense", "rigl"}
    assert methods["dense"]["ratio_to_dense"]["process_wall"] == 1.0
    assert methods["rigl"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert all(0.0 <= result["accuracy"] <= 1.0 for result in methods.values())


def test_distributed_quick_adds_no_collective(tmp_path):
    out = tmp_path / "distributed.json"
    (run,) = distributed.main(["--quick", "--devices", "2", "--out", str(out)])["runs"]
    assert _written(out)["runs"][0]["devices"] == run["devices"] == 2
    collectives = run["collectives_in_compiled_step"]
    assert collectives["jit_sparse_step"] == collectives["jit_dense_step"] == {"all-reduce": 1}
    assert collectives["pmap_sparse_step"] == collectives["pmap_dense_step"] == {"all-reduce": 1}
    assert run["sanity"]["replicas_bit_identical"]
    assert run["sanity"]["jit_mask_entries_changed_by_normal_step"] == 0


def test_compare_divides_each_ratio_of_the_second_run_by_the_first(tmp_path):
    def run(static, rigl_update):
        ratios = {"static": {"normal": static}, "rigl": {"normal": 1.5, "update": rigl_update}}
        return {"benchmark": "step time", "environment": {"git_commit": "x"}, "results": [
            {"workload": "MLP", "ratio_to_dense": ratios}
        ]}  # fmt: skip

    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps(run(1.2, 2.0)))
    after.write_text(json.dumps(run(1.2, 2.2)))
    record = compare.main([str(before), str(after), "--out", str(tmp_path / "port.json")])
    by_cell = {row["cell"]: row["after_over_before"] for row in record["rows"]}
    assert by_cell == {"MLP | static/normal": 1.0, "MLP | rigl/normal": 1.0, "MLP | rigl/update": pytest.approx(1.1)}
    assert record["largest_growth"]["cell"] == "MLP | rigl/update"
    assert (tmp_path / "port.png").stat().st_size > 0
    with pytest.raises(ValueError, match="different benchmarks"):
        compare.compare(run(1, 1), {**run(1, 1), "benchmark": "top-k selection"})


def test_versus_commit_quick_times_both_versions_side_by_side(tmp_path):
    out = tmp_path / "versus.json"
    record = versus_commit.main(["--commit", "HEAD", "--quick", "--out", str(out)])
    (result,) = _written(out)["results"]
    assert record["settings"]["commit"] == "HEAD"
    assert set(result["ratio_to_dense"]) == {
        f"{method}/{kind}"
        for method in versus_commit.METHODS
        for kind in ("normal", "update")
        if (method, kind) != ("static", "update")
    }
    for cell in result["ratio_to_dense"].values():
        assert cell["earlier"] > 0 and cell["current"] > 0
        assert cell["current_over_earlier"] == pytest.approx(cell["current"] / cell["earlier"])
