"""The movement-pruning benchmark's quick mode: what it trains, what it writes, and that it resumes."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.accuracy import movement


def test_bisect_penalty_brackets_then_halves_in_log_lambda():
    """Decade steps until the target is bracketed, then midpoints; stops within the tolerance."""
    probes = []

    def probe(x):
        probes.append(x)
        return min(max(0.3 * (x + 4.0), 0.0), 1.0)  # sparsity 0.9 at x = -1

    best = movement.bisect_penalty(probe, 0.9, 20, {})
    assert probes[:3] == [movement.SOFT_START, -2.0, -1.0]
    assert best == -1.0
    seen = {-3.0: 0.3, 0.0: 1.0}  # earlier probes bracket the target: the first new probe is their midpoint
    probes.clear()
    movement.bisect_penalty(probe, 0.9, 1, seen)
    assert probes == [-1.5]


def test_movement_quick_fine_tunes_every_method_and_resumes(tmp_path):
    out = tmp_path / "movement.json"
    record = movement.main(["--quick", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["table"] == json.loads(json.dumps(record["table"]))
    assert "git_commit" in written["environment"]
    assert out.with_suffix(".png").stat().st_size > 0

    rows = movement.read_rows(out.with_suffix(".csv"))
    evals = [row for row in rows if row["phase"] == "eval"]
    tunes = [row for row in rows if row["phase"] == "tune"]
    assert {(row["setting"], row["method"]) for row in evals} == {
        ("transfer", "dense"),
        ("transfer", "linear_probe"),
        ("transfer", "scratch"),
        ("transfer", "magnitude"),
        ("transfer", "movement"),
        ("transfer", "soft_movement"),
        ("same_task", "pretrained"),
        ("same_task", "dense"),
        ("same_task", "magnitude"),
        ("same_task", "movement"),
        ("same_task", "soft_movement"),
    }
    for row in evals:
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert 0.0 <= row["validation_accuracy"] <= 1.0
    for row in tunes:  # tuning reads the validation split only
        assert math.isnan(row["test_accuracy"])
        assert 0.0 <= row["validation_accuracy"] <= 1.0
    assert {row["method"] for row in tunes} == {"dense", "soft_movement"}

    # The hard variants land on the layout's exact counts: floor(S N) zeros in each 40x32 and 32x32 kernel.
    sizes = (40 * 32, 32 * 32)
    exact = sum(math.floor(0.9 * n) for n in sizes) / sum(sizes)
    for row in evals:
        if row["method"] in ("magnitude", "movement"):
            assert row["target_sparsity"] == 0.9
            assert row["measured_sparsity"] == pytest.approx(exact, abs=1e-12)
            assert [float(s) for s in row["layer_sparsity"].split()] == pytest.approx(
                [math.floor(0.9 * n) / n for n in sizes], abs=1e-4
            )
            assert 0.0 <= row["overlap"] <= 1.0
        elif row["method"] == "soft_movement":
            assert 0.0 <= row["measured_sparsity"] <= 1.0
        else:
            assert row["measured_sparsity"] == 0.0
    for row in evals:  # the untouched model and the probe's frozen features keep the pretrained kernels exactly
        if row["method"] in ("pretrained", "linear_probe"):
            assert row["relative_change"] == 0.0
        else:
            assert row["relative_change"] > 0.0

    chosen = {soft["setting"]: soft for soft in record["tuning"]["soft"]}
    assert set(chosen) == {"transfer", "same_task"}
    assert all(1 <= soft["probes"] <= movement.QUICK["soft_probes"] for soft in chosen.values())
    claims = {(check["setting"], check["claim"]) for check in record["margins"]}
    assert claims == {
        (setting, f"{method} > magnitude")
        for setting in ("transfer", "same_task")
        for method in ("movement", "soft_movement")
    }
    text = out.with_suffix(".md").read_text()
    assert "| 90% |" in text and "soft movement (sparsity reached)" in text

    again = movement.main(["--quick", "--out", str(out)])  # every run is in the CSV: nothing trains
    assert len(movement.read_rows(out.with_suffix(".csv"))) == len(rows)
    assert again["table"] == record["table"]
