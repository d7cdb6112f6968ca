"""The benchmark scripts run end to end in their ``--quick`` modes and write what they promise.

These tests prove the scripts work (and check the invariants each script validates itself:
exact top-k counts, target sparsities, masks that change only on update steps); they never judge
a timing. The committed numbers come from full runs (``benchmarks/README.md``).
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from benchmarks.accuracy import lottery, pruning_at_init, structures, sweep
from benchmarks.speed import compare, distributed, memory, selection, step_time, versus_commit, wall_clock
from benchmarks.speed.workloads import QUICK_WORKLOADS
from jaxsparse.training import ConfigError


def _written(out):
    assert out.exists() and out.with_suffix(".png").stat().st_size > 0
    record = json.loads(out.read_text())
    assert record["quick"] is True and record["environment"]["versions"]["jax"]
    return record


def test_accuracy_sweep_quick_trains_every_method_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert "imp" not in sweep.SPARSE_METHODS  # on request only: a run is IMP_ROUNDS + 1 trainings
    methods = ["--methods", "dense", *sweep.SPARSE_METHODS, "imp"]
    record = sweep.main(["--quick", *methods, "--out", str(out)])
    assert _written(out)["table"] == record["table"]
    rows = sweep.read_rows(out.with_suffix(".csv"))
    assert sorted(row["method"] for row in rows) == sorted(["dense", *sweep.SPARSE_METHODS, "imp"])
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["measured_sparsity"] == pytest.approx(0.0 if row["method"] == "dense" else 0.9, abs=1e-3)
        assert (row["init"], row["layer_collapse"]) == ("-", 0)
    (imp_row,) = [row for row in rows if row["method"] == "imp"]
    assert imp_row["training_flops_ratio"] > 1.0  # the dense round and four pruned ones: more than one dense training
    assert {check["claim"] for check in record["orderings"]} == {
        *(f"{m} > static" for m in ("set", "rigl", "top_kast", "snfs", "gradual_magnitude")),
        "snfs > set",
        "rigl > snfs",
    }
    assert "| rigl |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    sweep.main(["--quick", *methods, "--out", str(out)])  # everything is in the CSV: nothing is trained again
    runs = len(sweep.SPARSE_METHODS) + 2  # the registry's methods (the worked example too), imp and dense
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
            "structure": "unstructured",
            "keep_dense": "",
            "distribution": "erk",
            "sparsity": 0.95,
            "init": "-",
            "accuracy": accuracy,
            "measured_sparsity": 0.95,
            "training_flops_ratio": 0.5,
            "layer_collapse": 0,
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


def test_sweep_leaves_structured_methods_to_the_structure_study(tmp_path):
    assert set(sweep.STRUCTURED) >= {"nm_ste", "nm_sr_ste", "srigl"}
    assert not set(sweep.STRUCTURED) & set(sweep.SPARSE_METHODS)
    runs = sweep.plan(["digits"], ["rigl", "nm_ste"], [0.8], ["uniform"], 1, 20, 5)
    assert [(run.method, run.structure) for run in runs] == [("rigl", "unstructured"), ("nm_ste", "2:4")]
    with pytest.raises(ConfigError, match="conflicts with structure"):  # before anything trains
        sweep.run_all(runs, tmp_path / "sweep.csv", 1, tmp_path / "cache")
    assert not (tmp_path / "sweep.csv").exists()


def test_sweep_reads_and_extends_a_csv_from_before_the_structure_columns(tmp_path):
    path = tmp_path / "old.csv"
    old_columns = [name for name in sweep.COLUMNS if name not in ("structure", "keep_dense", "init", "layer_collapse")]
    values = dict(dataset="d", model="m", steps=1, update_every=1, method="rigl", distribution="erk", sparsity=0.9)
    values |= dict(seed=0, accuracy=0.5, test_loss=1.0, measured_sparsity=0.9, training_flops_ratio=0.5)
    values |= dict(inference_flops_ratio=0.1, wall_time_s=1.0, git_commit="x")
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=old_columns)
        writer.writeheader()
        writer.writerow(values)
    (old,) = sweep.read_rows(path)
    assert (old["structure"], old["keep_dense"], old["init"], old["layer_collapse"]) == ("unstructured", "", "-", 0)
    sweep.append_row(path, {**old, "structure": "2:4", "sparsity": 0.5})
    assert path.read_text().splitlines()[0] == ",".join(sweep.COLUMNS)
    assert [row["structure"] for row in sweep.read_rows(path)] == ["unstructured", "2:4"]


def test_sweep_gives_imp_rounds_that_end_at_the_sparsity():
    from jaxsparse.algorithms import imp_sparsity

    for sparsity in (0.8, 0.9, 0.95, 0.98):
        (run,) = sweep.plan(["mnist1d"], ["imp"], [sparsity], ["uniform"], 1, None, 50)
        options = dict(sweep.config(run).options)
        assert options["imp_rounds"] == sweep.IMP_ROUNDS
        assert imp_sparsity(options["imp_rounds"], options["imp_fraction"]) == pytest.approx(sparsity, abs=1e-12)


def test_lottery_quick_trains_tickets_and_both_controls(tmp_path):
    out = tmp_path / "lottery.json"
    record = lottery.main(["--quick", "--out", str(out)])
    assert _written(out)["table"] == record["table"]
    rows = lottery.read_rows(out.with_suffix(".csv"))
    assert sorted((row["round"], row["variant"]) for row in rows) == [
        (0, "ticket"),
        (1, "random_mask"),
        (1, "random_reinit"),
        (1, "ticket"),
    ]
    for row in rows:
        assert row["measured_sparsity"] == pytest.approx(0.5 * row["round"], abs=1e-3)
    flops = {(row["round"], row["variant"]): row["training_flops_ratio"] for row in rows}
    assert flops[1, "ticket"] > 1.0 + flops[1, "random_mask"] - 1e-3  # a ticket costs the dense round too
    assert {check["claim"] for check in record["margins"]} == {"ticket > random_mask", "ticket > random_reinit"}
    assert "| 50.0% (round 1) |" in out.with_suffix(".md").read_text()


def test_pruning_at_init_quick_records_the_criterion_and_layer_collapse(tmp_path):
    out = tmp_path / "pai.json"
    record = pruning_at_init.main(["--quick", "--out", str(out)])
    assert _written(out)["table"] == record["table"]
    rows = sweep.read_rows(out.with_suffix(".csv"))
    assert sorted(row["init"] for row in rows) == ["snip", "synflow"]
    for row in rows:
        assert row["method"] == "static" and row["measured_sparsity"] == pytest.approx(0.9, abs=1e-3)
        assert row["layer_collapse"] >= 0
    (check,) = record["synflow_checks"]
    assert set(check["against"]) == {"snip"}
    assert "| synflow |" in out.with_suffix(".md").read_text()


def test_structure_study_quick(tmp_path):
    out = tmp_path / "structures.json"
    record = structures.main(["--quick", "--out", str(out)])
    assert _written(out)["table"] == record["table"]
    rows = sweep.read_rows(out.with_suffix(".csv"))
    assert sorted((row["method"], row["structure"], row["keep_dense"]) for row in rows) == [
        ("dense", "-", ""),
        ("nm_sr_ste", "2:4", "Dense_2"),
        ("rigl", "2:4", "Dense_2"),
    ]
    for row in rows:
        assert row["measured_sparsity"] == pytest.approx(0.0 if row["method"] == "dense" else 0.5, abs=1e-6)
    assert {structures.row_label(cell) for cell in record["table"]} == {"dense", "rigl N:M", "nm_sr_ste N:M"}
    assert "| rigl N:M |" in out.with_suffix(".md").read_text()


def test_structure_study_plans_matched_layers_and_checks_the_orderings():
    runs = structures.plan(["digits", "mnist1d"], structures.GRID, 1, None, 50)
    sparse = [run for run in runs if run.method != "dense"]
    assert {run.keep_dense for run in sparse if run.dataset == "mnist1d"} == {"Conv|Dense_2"}
    assert {run.distribution for run in sparse} == {"uniform"}
    assert {run.structure for run in sparse if run.sparsity == 0.75 and run.method.startswith("nm")} == {"1:4"}
    for run in runs:
        sweep.config(run)  # every structure fits, and N:M runs at the sparsity it fixes

    def cell(label, accuracies, sparsity=0.5):
        method, structure = label.split()
        structure = {"N:M": "2:4"}.get(structure, structure)
        mean = sum(accuracies) / len(accuracies)
        std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (len(accuracies) - 1))
        return dict(dataset="d", sparsity=sparsity, method=method, structure=structure, mean=mean, std=std, seeds=2)

    table = [
        cell("rigl unstructured", (0.90, 0.92)),
        cell("rigl N:M", (0.90, 0.90)),
        cell("rigl channel", (0.93, 0.93)),
        cell("srigl fan_in", (0.905, 0.905)),
        cell("nm_ste N:M", (0.80, 0.82)),
        cell("nm_sr_ste N:M", (0.81, 0.81)),
    ]
    checks = {check["claim"]: check for check in structures.orderings(table)}
    assert set(checks) == {
        "nm_sr_ste N:M >= nm_ste N:M",
        "rigl unstructured >= rigl N:M",
        "rigl N:M >= rigl channel",  # no blocks at this sparsity: the next coarser structure present
        "srigl fan_in ~ rigl unstructured",
    }
    assert checks["nm_sr_ste N:M >= nm_ste N:M"]["holds"] and checks["rigl unstructured >= rigl N:M"]["holds"]
    broken = checks["rigl N:M >= rigl channel"]
    assert not broken["holds"] and broken["margin_points"] == pytest.approx(-3.0)
    assert broken["margin_in_std_errors"] is None  # both cells without spread
    close = checks["srigl fan_in ~ rigl unstructured"]
    assert close["holds"] and close["margin_in_std_errors"] == pytest.approx(-0.005 / math.sqrt(0.0002 / 2))


def test_step_time_quick(tmp_path):
    out = tmp_path / "step_time.json"
    (result,) = step_time.main(["--quick", "--out", str(out)])["results"]
    assert _written(out)["results"][0]["workload"] == result["workload"]
    for method, ratios in result["ratio_to_dense"].items():
        assert all(value > 0 and math.isfinite(value) for value in ratios.values()), method
    assert set(result["ratio_to_dense"]) == set(step_time.QUICK_METHODS)
    for method in set(step_time.CHANGING_MASKS) & set(step_time.QUICK_METHODS):
        assert result["checks"][method]["mask_changes_normal_step"] == 0
        assert result["checks"][method]["mask_changes_update_step"] > 0


def test_step_time_quick_structures(tmp_path):
    out = tmp_path / "structures.json"
    (result,) = step_time.main(["--quick", "--structures", "--out", str(out)])["results"]
    assert _written(out)["benchmark"] == "step time by structure"
    assert list(result["ratio_to_baseline"]) == list(step_time.QUICK_STRUCTURES)
    assert result["ratio_to_baseline"][result["baseline"]] == {"normal": 1.0, "update": 1.0, "amortised": 1.0}
    for label, ratios in result["ratio_to_dense"].items():
        assert all(value > 0 and math.isfinite(value) for value in ratios.values()), label
    assert result["checks"]["rigl block:4x4"]["mask_changes_update_step"] > 0
    assert result["checks"]["nm_sr_ste 2:4"]["mask_changes_normal_step"] > 0  # its mask follows |W| every step


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
        for method in versus_commit.QUICK_METHODS
        for kind in ("normal", "update")
        if (method, kind) != ("static", "update")
    }
    for cell in result["ratio_to_dense"].values():
        assert cell["earlier"] > 0 and cell["current"] > 0
        assert cell["current_over_earlier"] == pytest.approx(cell["current"] / cell["earlier"])


def test_one_shot_quick_prunes_exact_counts_fine_tunes_on_the_masks_and_resumes(tmp_path, capsys):
    from benchmarks.accuracy import one_shot

    out = tmp_path / "one_shot.json"
    record = one_shot.main(["--quick", "--out", str(out)])
    written = _written(out)
    assert written["table"] == record["table"] and written["all_exact_counts"] and written["all_zero_off_mask"]
    rows = one_shot.read_rows(out.with_suffix(".csv"))
    (calibration,) = one_shot.QUICK["calibrations"]
    assert sorted((row["criterion"], row["calibration"]) for row in rows) == [
        ("magnitude", 0),  # reads no calibration data: run once
        ("sparsegpt", calibration),
        ("wanda", calibration),
    ]
    for row in rows:
        assert row["level"] == "0.5" and row["measured_sparsity"] == 0.5  # 512 of the 32x32 middle kernel's 1024
        assert row["exact_counts"] and row["zero_off_mask"]
        for name in ("dense_accuracy", "accuracy", "finetuned_accuracy"):
            assert 0.0 <= row[name] <= 1.0
    assert len({row["dense_accuracy"] for row in rows}) == 1  # every criterion prunes the same dense model
    assert {(c["pair"], c["level"]) for c in record["orderings"]} == {
        ("sparsegpt >= wanda", "0.5"),
        ("wanda >= magnitude", "0.5"),
    }
    by = {cell["criterion"]: cell for cell in record["table"]}
    check = next(c for c in record["orderings"] if c["pair"] == "wanda >= magnitude")
    assert check["margin_points"] == pytest.approx(
        100 * (by["wanda"]["one_shot"]["mean"] - by["magnitude"]["one_shot"]["mean"])
    )
    assert "| sparsegpt | " in out.with_suffix(".md").read_text()
    assert one_shot.dense_path(one_shot.dense_dir_of(out), one_shot.quick_setup(), "mlp", 0).exists()
    capsys.readouterr()
    one_shot.main(["--quick", "--out", str(out)])  # the CSV holds every pruning and the dense model is cached
    assert " -> " not in capsys.readouterr().out and len(one_shot.read_rows(out.with_suffix(".csv"))) == 3
    paired = one_shot.margin(
        {"seeds_run": [0, 1, 2], "one_shot_per_seed": [0.80, 0.70, 0.90]},
        {"seeds_run": [0, 1, 2], "one_shot_per_seed": [0.70, 0.62, 0.78]},
    )  # differences 10, 8, 12 points: mean 10, standard error 2 / sqrt(3)
    assert paired["margin_points"] == pytest.approx(10.0)
    assert paired["margin_in_paired_std_errors"] == pytest.approx(10.0 / (2.0 / math.sqrt(3)))


def test_one_shot_cost_quick_times_and_measures_the_memory_of_each_criterion(tmp_path):
    from benchmarks.speed import one_shot_cost

    out = tmp_path / "one_shot_cost.json"
    record = one_shot_cost.main(["--quick", "--out", str(out)])
    (result,) = _written(out)["results"]
    assert result == record["results"][0]
    (workload,) = one_shot_cost.QUICK_WORKLOADS
    widths = (40, workload.hidden, workload.hidden, 10)
    kernels = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    assert result["sizes"]["params"] == kernels + sum(widths[1:]) and result["sizes"]["sparsified_params"] == kernels
    assert set(result["criteria"]) == set(result["memory"]) == set(one_shot_cost.QUICK_CRITERIA)
    for criterion in one_shot_cost.QUICK_CRITERIA:
        timing, memory = result["criteria"][criterion], result["memory"][criterion]
        assert timing["run"]["n"] == 2 and 0 < timing["run"]["min_ms"] <= timing["run"]["median_ms"]
        assert timing["first_call_s"] > 0
        assert 0 < memory["rss_after_build_bytes"] <= memory["peak_first_call_bytes"]
        assert memory["extra_first_call_bytes"] == memory["peak_first_call_bytes"] - memory["rss_after_build_bytes"]
        assert memory["extra_compiled_call_bytes"] >= 0  # the peak was reset to the resident set before the call
        assert memory["rss_before_second_call_bytes"] <= memory["peak_second_call_bytes"]
    assert "| mlp-16 |" in out.with_suffix(".md").read_text()


def test_compaction_study_quick_removes_channels_measures_small_models_and_resumes(tmp_path, capsys):
    import jax
    import jax.numpy as jnp

    from benchmarks.accuracy import compaction
    from jaxsparse.models import create_model

    out = tmp_path / "compaction.json"
    record = compaction.main(["--quick", "--out", str(out)])
    assert _written(out)["table"] == record["table"]
    rows = compaction.read_rows(out.with_suffix(".csv"))
    by_method = {row["method"]: row for row in rows}
    assert sorted(by_method) == ["dense", "l1_filter", "small_dense", "ssl"] and len(rows) == 4
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["flops_fraction"] <= 1.0
        assert row["accuracy"] == row["accuracy_before_compaction"] and row["predictions_differing"] == 0
    assert by_method["dense"]["flops_fraction"] == 1.0 and by_method["dense"]["params_fraction"] == 1.0
    # Half of each hidden layer's filters pruned: compaction removes channels for real (the kernels shrink).
    l1 = by_method["l1_filter"]
    assert l1["flops_fraction"] < 1.0 and l1["params_after"] < l1["params_dense"]
    assert l1["layers"]["Dense_0/kernel"]["after"][1] < 256 and l1["mask_density"] == pytest.approx(0.5, abs=0.01)
    assert by_method["small_dense"]["layers"]["Dense_0/kernel"]["after"] == [64, 128]
    assert by_method["small_dense"]["flops_fraction"] < 0.5
    assert "| l1_filter | 0.5 |" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    compaction.main(["--quick", "--out", str(out)])  # everything is in the CSV: nothing is trained again
    assert "4 runs, 4 already in" in capsys.readouterr().out
    assert len(compaction.read_rows(out.with_suffix(".csv"))) == 4

    # At width 1 the small-dense loop is the harness's dense run: same accuracy, same FLOPs.
    full = compaction.Point("digits", "mlp", sweep.QUICK_STEPS, "small_dense", "-", 1.0, 0)
    measured = compaction.train_small_dense(full, sweep.QUICK_UPDATE_EVERY)
    assert measured["accuracy"] == by_method["dense"]["accuracy"]
    assert (measured["flops_after"], measured["params_after"]) == (l1["flops_dense"], l1["params_dense"])
    x = jnp.zeros((1, 40, 1))
    shapes = [
        jax.tree.map(lambda v: v.shape, jax.eval_shape(lambda m=model: m.init(jax.random.key(0), x, train=False)))
        for model in (create_model("lenet5", num_classes=10, input_shape=(40, 1)),
                      compaction.scaled_model("lenet5", 1.0, 10, (40, 1)))
    ]  # fmt: skip
    assert shapes[0] == shapes[1]  # the width-scaled LeNet-5 at width 1 is the library's

    front = compaction.pareto_front(
        [{"flops_fraction": f, "mean": a} for f, a in ((1.0, 0.9), (0.5, 0.92), (0.4, 0.8), (0.6, 0.85))]
    )
    assert [(c["flops_fraction"], c["mean"]) for c in front] == [(0.4, 0.8), (0.5, 0.92)]


def test_compaction_speed_quick_times_both_models_and_checks_equal_outputs(tmp_path):
    from benchmarks.speed import compaction

    out = tmp_path / "compaction.json"
    record = compaction.main(["--quick", "--out", str(out)])
    (row, *_) = record["rows"]
    assert row["flops_compact"] < row["flops_dense"] and row["params_compact"] < row["params_dense"]
    assert row["speedup"] == row["dense"]["median_ms"] / row["compact"]["median_ms"]
    assert out.with_suffix(".md").read_text().count("| lenet5 |") == len(record["rows"])
