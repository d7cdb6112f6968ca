"""Two runs of one speed benchmark side by side: each ratio of the second run over the first.

For a change to the library (a port, a refactor) that must not cost speed, run the benchmark on
the commit before and on the commit after, one right after the other on a quiet machine, then::

    python -m benchmarks.speed.compare BEFORE.json AFTER.json --out benchmarks/results/speed/NAME.json

It reads ``step_time`` results (each method's normal / update / amortised ratio to dense, per
workload) and ``selection`` results (each method's time as a multiple of jaxsparse's, per size).
Each cell is ``after / before`` of that ratio; above 1 the second run is relatively slower. Both
runs' provenance (commit, load average) is kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from benchmarks.common import argument_parser, write_results


def _cells(record: dict[str, Any]) -> dict[str, float]:
    """``{"workload | method/kind": ratio}`` of a step-time run, or ``{"size | method": ratio}`` of a selection run."""
    cells = {}
    if record["benchmark"] == "step time":
        for result in record["results"]:
            for method, kinds in result["ratio_to_dense"].items():
                for kind, ratio in kinds.items():
                    cells[f"{result['workload']} | {method}/{kind}"] = ratio
    elif record["benchmark"] == "top-k selection":
        for result in record["results"]:
            for method, ratio in result["ratio_to_jaxsparse"].items():
                if method != "jaxsparse":
                    cells[f"{result['size']} | {method}"] = ratio
    else:
        raise ValueError(f"cannot compare {record['benchmark']!r} results: use step_time or selection JSON files.")
    return cells


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The cells of both runs and ``after / before`` for each cell they share."""
    if before["benchmark"] != after["benchmark"]:
        raise ValueError(f"the runs are of different benchmarks: {before['benchmark']!r} and {after['benchmark']!r}.")
    old, new = _cells(before), _cells(after)
    rows = [
        {"cell": cell, "before": old[cell], "after": new[cell], "after_over_before": new[cell] / old[cell]}
        for cell in old
        if cell in new
    ]
    return {
        "benchmark": before["benchmark"],
        "runs": {name: run["environment"] for name, run in (("before", before), ("after", after))},
        "rows": rows,
        "largest_growth": max(rows, key=lambda row: row["after_over_before"]),
    }


def plot(record: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(8, 0.22 * len(record["rows"]) + 1.2))
    ax = figure.subplots()
    values = np.array([row["after_over_before"] for row in record["rows"]])
    ax.barh(np.arange(len(values)), values - 1.0, left=1.0, color=np.where(values > 1.03, "tab:red", "tab:blue"))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(1.03, color="tab:red", linewidth=0.8, linestyle="--")
    ax.set_yticks(np.arange(len(values)), [row["cell"] for row in record["rows"]], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("ratio after / ratio before (dashed: +3%)")
    ax.set_title(f"{record['benchmark']}: second run over first", fontsize=9)
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("before", type=Path, help="the first run's JSON file")
    parser.add_argument("after", type=Path, help="the second run's JSON file")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("give --out PATH.json for the comparison")
    record = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    write_results(record, args.out, plot)
    for row in record["rows"]:
        print(f"{row['cell']:>60}: {row['before']:8.3f} -> {row['after']:8.3f}  ({row['after_over_before']:.3f}x)")
    return record


if __name__ == "__main__":
    main()
