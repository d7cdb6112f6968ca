"""Whole-run wall clock of ``jaxsparse train`` on digits, every sparse method against dense.

What is measured
----------------
For each method (dense, static, SET, RigL, Top-KAST, gradual magnitude pruning) the real command
line runs in a fresh process, as a user runs it::

    jaxsparse train --method M --dataset digits --model mlp --steps 2000 --sparsity 0.9 --quiet --out DIR

with every other setting at the harness default (MLP 64-256-256-10, AdamW, batch 128, 90% ERK,
mask updates every 50 steps until 75% of training, an evaluation every 500 steps and a checkpoint
every 1000). The command is the ``jaxsparse`` console script installed next to this Python
(``python -m jaxsparse.training`` does not exist: the package has no ``__main__``). Each run is
repeated ``--repeats`` times (3), interleaved: every method runs once per round, in an order
shuffled anew each round, so drifting machine load hits every method alike. Per method the JSON
holds

* the **process wall time** (``time.perf_counter`` around ``subprocess.run``): everything a user
  waits for, from interpreter start-up and imports through data loading, the sparse optimizer's
  init, compilation, training, evaluations and checkpoints, to ``summary.json`` and the plots;
* the **in-loop training time**, ``wall_time`` of the run's ``summary.json``: the training loop's
  own clock, which includes compiling the train step (on its first call), evaluations and
  checkpoints, but not start-up, the optimizer's init or the final report;
* the final test **accuracy** and the final sparsity from ``summary.json``, and the run's
  training-FLOPs ratio to dense (RigL paper accounting), to set the wall-clock ratio beside;

as the median, quartiles and minimum over repeats and, for both times, the ratio of the medians to
dense. A full run uses no compilation cache (no ``--compilation-cache``, and the
``JAX_COMPILATION_CACHE_*`` / ``JAX_PERSISTENT_CACHE_*`` variables are removed from the runs'
environment): every run starts cold, as a user's first run does. Every run must end at the
target sparsity (dense at 0), or the benchmark stops.

Timings on a shared machine drift; compare the ratios within one run, and check the recorded load
average. Rerun from the repository root::

    python -m benchmarks.speed.wall_clock            # 6 methods x 3 repeats: 18 runs, several minutes
    python -m benchmarks.speed.wall_clock --quick    # 20 steps, 1 repeat: proves the script runs (CI)

``--quick`` also updates masks every 5 steps, so that gradual magnitude pruning reaches its target
within 20 steps, and lets its runs share the persistent compilation cache under
``benchmarks/results/quick/`` (``--compilation-cache``, as the accuracy sweep's runs do): a repeated
smoke test then skips most compilation, so its times are not cold start and mean nothing.

``--out PATH.json`` chooses the JSON file; the plot is written next to it as ``PATH.png``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from benchmarks.common import (
    COMPILATION_CACHE,
    argument_parser,
    interleaved_times,
    output_path,
    summarize_ms,
    write_results,
)
from jaxsparse.training import method_names

DATASET = "digits"
MODEL = "mlp"
SPARSITY = 0.9
STEPS = 2000
REPEATS = 3
QUICK_STEPS = 20
# With the default (50), 20 steps would hold one mask update, at step 0, where gradual magnitude
# pruning's ramp is still dense; every 5 steps its ramp reaches the target at step 15 (75%).
QUICK_UPDATE_EVERY = 5
SPARSITY_TOLERANCE = 1e-3  # ERK's per-layer floor counts
CACHE_VARIABLES = ("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE")


def console_script() -> Path:
    """The ``jaxsparse`` command installed with this interpreter."""
    script = Path(sys.executable).parent / "jaxsparse"
    if not script.exists():
        raise FileNotFoundError(
            f"no jaxsparse command next to {sys.executable}: install the package (pip install -e '.[train]')"
        )
    return script


def cold_environment() -> dict[str, str]:
    """This process's environment without the variables that would turn on a compilation cache."""
    return {k: v for k, v in os.environ.items() if not k.startswith(CACHE_VARIABLES)}


def train_command(method: str, steps: int, update_every: int | None, cache: Path | None, out_dir: Path) -> list[str]:
    """The ``jaxsparse train`` command line of one run.

    ``update_every=None`` keeps the harness default; ``cache`` is a compilation cache (``None``: none).
    """
    return [
        str(console_script()),
        "train",
        "--method", method,
        "--dataset", DATASET,
        "--model", MODEL,
        "--steps", str(steps),
        "--sparsity", str(SPARSITY),
        "--quiet",
        "--out", str(out_dir),
        *([] if update_every is None else ["--update-every", str(update_every)]),
        *([] if cache is None else ["--compilation-cache", str(cache)]),
    ]  # fmt: skip


def train_once(method: str, steps: int, update_every: int | None, cache: Path | None, out_dir: Path) -> dict[str, Any]:
    """Runs ``jaxsparse train`` once into ``out_dir`` and returns its checked ``summary.json``."""
    command = train_command(method, steps, update_every, cache, out_dir)
    done = subprocess.run(command, env=cold_environment(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary = json.loads((out_dir / "summary.json").read_text())
    expected = 0.0 if method == "dense" else SPARSITY
    if abs(summary["sparsity"] - expected) > SPARSITY_TOLERANCE:
        raise RuntimeError(f"{method} ended {summary['sparsity']:.4f} sparse, not {expected}")
    return summary


def summarize(process_s: list[float], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's timings, accuracy, sparsity and FLOPs ratio over its repeats."""
    accuracies = [s["final"]["test_accuracy"] for s in summaries]
    return {
        "process_wall": summarize_ms(process_s),
        "training_loop": summarize_ms([s["wall_time"] for s in summaries]),
        "accuracy": statistics.mean(accuracies),
        "accuracies": accuracies,
        "sparsity": summaries[-1]["sparsity"],
        "training_flops_ratio": summaries[-1]["flops"]["training_ratio"],
    }


def with_ratios(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Both medians, and the accuracy, of every method relative to dense."""
    dense = methods["dense"]
    for result in methods.values():
        result["ratio_to_dense"] = {
            "process_wall": result["process_wall"]["median_ms"] / dense["process_wall"]["median_ms"],
            "training_loop": result["training_loop"]["median_ms"] / dense["training_loop"]["median_ms"],
            "accuracy": result["accuracy"] / dense["accuracy"],
        }
    return methods


def plot(record: dict[str, Any]) -> Figure:
    """Bars of the process and in-loop wall-clock ratios to dense, per method (accuracy under each)."""
    import matplotlib.pyplot as plt
    import numpy as np

    methods = record["methods"]
    names = list(methods)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for offset, key, label in ((-0.2, "process_wall", "whole process"), (0.2, "training_loop", "training loop")):
        bars = ax.bar(x + offset, [methods[m]["ratio_to_dense"][key] for m in names], 0.4, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{m}\n{100 * methods[m]['accuracy']:.1f}%" for m in names])
    ax.set_ylabel("wall-clock ratio to dense (median)")
    ax.set_xlabel("method (final test accuracy)")
    start = "cold" if record["settings"]["compilation_cache"] is None else "cached"
    ax.set_title(
        f"jaxsparse train, {DATASET}/{MODEL}, {record['steps']} steps, {SPARSITY:.0%} sparse, "
        f"{record['repeats']} {start} run{'s' if record['repeats'] > 1 else ''} per method"
    )
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {STEPS})")
    parser.add_argument("--repeats", type=int, default=None, help=f"runs per method (default {REPEATS})")
    parser.add_argument(
        "--methods", nargs="+", default=list(method_names()), choices=method_names(), help="default: all"
    )
    args = parser.parse_args(argv)
    if "dense" not in args.methods:
        parser.error("--methods must include dense: every ratio is to the dense run")
    methods = args.methods
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    repeats = args.repeats or (1 if args.quick else REPEATS)
    update_every, cache = (QUICK_UPDATE_EVERY, COMPILATION_CACHE) if args.quick else (None, None)
    summaries: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    with tempfile.TemporaryDirectory(prefix="wall_clock-") as root:
        run_ids = itertools.count()

        def call(method: str):
            def run() -> None:
                out_dir = Path(root) / str(next(run_ids))
                summaries[method].append(train_once(method, steps, update_every, cache, out_dir))

            return run

        times = interleaved_times({method: call(method) for method in methods}, rounds=repeats)
    results = with_ratios({m: summarize(times[m], summaries[m]) for m in methods})
    record = {
        "benchmark": "whole-run wall clock of jaxsparse train",
        "quick": args.quick,
        "steps": steps,
        "repeats": repeats,
        "settings": {
            "command": " ".join(["jaxsparse", *train_command("M", steps, update_every, cache, Path("DIR"))[1:]]),
            "compilation_cache": None if cache is None else str(cache),
            "order": "interleaved, shuffled every round",
            "process_wall": "perf_counter around subprocess.run",
            "training_loop": "summary.json wall_time: the loop's clock, including step compilation, evals, checkpoints",
        },
        "methods": results,
    }
    write_results(record, output_path(args, "speed", "wall_clock"), plot)
    for method, result in results.items():
        ratio = result["ratio_to_dense"]
        print(
            f"{method:<18} process {result['process_wall']['median_ms'] / 1e3:7.1f} s ({ratio['process_wall']:.2f}x)"
            f"  loop {result['training_loop']['median_ms'] / 1e3:7.1f} s ({ratio['training_loop']:.2f}x)"
            f"  accuracy {100 * result['accuracy']:.2f}%"
        )
    return record


if __name__ == "__main__":
    main()
