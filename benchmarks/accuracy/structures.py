"""What mask structure costs in accuracy: RigL at each structure, SRigL and N:M STE, at matched densities.

Every run is a :mod:`benchmarks.accuracy.sweep` run (the same harness, CSV resume and summary), at
``uniform`` sparsity over the same layers for every structure, so that densities match exactly:

* ``digits`` (MLP 64-256-256-10, 1000 steps): the classifier is kept dense (``keep_dense="Dense_2"``),
  both hidden kernels are sparsified;
* ``mnist1d`` (LeNet-5, 3000 steps): the convolutions and the classifier are kept dense
  (``keep_dense="Conv|Dense_2"``), the two hidden dense kernels (160x120, 120x84) are sparsified.

Every sparsified kernel divides into 4x4 blocks and into groups of 4 along its input axis, so each
structure fits. The grid, 3 seeds each:

* 50%: RigL unstructured, 2:4, block:4x4, channel and fan_in; SRigL; N:M STE and SR-STE at 2:4;
  dense;
* 75%: the same at 1:4 instead of 2:4 (no dense);
* 90%: RigL unstructured, block:4x4, channel and fan_in; SRigL (N:M has no 90% pattern here).

The rows of the tables and plots name the structure's family: ``N:M`` is 2:4 at 50% and 1:4 at 75%.
At 90% the channel and fan-in counts of some layers round (25.6 of 256 neurons), so measured
densities differ from the target by up to a few tenths of a percent; the JSON records them.

The summary checks three orderings from the literature, without asserting them: SR-STE at least as
good as plain STE at N:M (Zhou et al. 2021); at one density, unstructured >= N:M >= blocks >=
channels (structure costs accuracy, Hoefler et al. 2021); SRigL within a point of RigL (Lasby et
al. 2024). Margins are in accuracy points and in standard errors of the difference of the means.

Rerun from the repository root::

    python -m benchmarks.accuracy.structures --jobs 2    # digits + MNIST-1D, 3 seeds: ~22 min on 2 cores
    python -m benchmarks.accuracy.structures --quick     # three tiny runs: seconds (CI)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

from benchmarks.accuracy import sweep
from benchmarks.common import COMPILATION_CACHE, argument_parser, output_path, write_results
from jaxsparse.masks import NM, parse_structure

DATASETS = ("digits", "mnist1d")
DISTRIBUTION = "uniform"
KEEP_DENSE = {"digits": "Dense_2", "mnist1d": "Conv|Dense_2"}
"""The same layers are sparsified at every structure: the MLP's hidden kernels, LeNet-5's hidden dense kernels."""
GRID: dict[float, tuple[tuple[str, str], ...]] = {
    0.5: (
        ("rigl", "unstructured"),
        ("rigl", "2:4"),
        ("rigl", "block:4x4"),
        ("rigl", "channel"),
        ("rigl", "fan_in"),
        ("srigl", "fan_in"),
        ("nm_ste", "2:4"),
        ("nm_sr_ste", "2:4"),
    ),
    0.75: (
        ("rigl", "unstructured"),
        ("rigl", "1:4"),
        ("rigl", "block:4x4"),
        ("rigl", "channel"),
        ("rigl", "fan_in"),
        ("srigl", "fan_in"),
        ("nm_ste", "1:4"),
        ("nm_sr_ste", "1:4"),
    ),
    0.9: (
        ("rigl", "unstructured"),
        ("rigl", "block:4x4"),
        ("rigl", "channel"),
        ("rigl", "fan_in"),
        ("srigl", "fan_in"),
    ),
}
"""Per sparsity, the (method, structure) cells; dense runs once per data set and seed."""
QUICK_GRID = {0.5: (("rigl", "2:4"), ("nm_sr_ste", "2:4"))}
ROWS = (
    "rigl unstructured",
    "rigl N:M",
    "rigl block:4x4",
    "rigl channel",
    "rigl fan_in",
    "srigl fan_in",
    "nm_ste N:M",
    "nm_sr_ste N:M",
)
"""The table's rows, in order (``N:M``: 2:4 at 50%, 1:4 at 75%)."""
COARSENING = ("rigl unstructured", "rigl N:M", "rigl block:4x4", "rigl channel")
"""Ordering (b): each structure at least as accurate as the next, coarser one, at one density."""
SRIGL_TOLERANCE_POINTS = 1.0
"""Ordering (c): SRigL counts as close to RigL within this many accuracy points."""


def family(structure: str) -> str:
    """``N:M`` for any N:M pattern (so 2:4 at 50% and 1:4 at 75% share a row), else the name."""
    return "N:M" if isinstance(parse_structure(structure), NM) else structure


def row_label(cell: dict[str, Any]) -> str:
    """A cell's row: its method and structure family (``rigl N:M``), ``dense`` for dense."""
    return "dense" if cell["method"] == "dense" else f"{cell['method']} {family(cell['structure'])}"


def plan(
    datasets: Sequence[str],
    grid: dict[float, tuple[tuple[str, str], ...]],
    seeds: int,
    steps: int | None,
    update_every: int,
) -> list[sweep.Run]:
    """Dense once per data set and seed, then every cell of ``grid``, sparsest rows last."""
    shared = dict(datasets=datasets, distributions=[DISTRIBUTION], seeds=seeds, steps=steps, update_every=update_every)
    runs = sweep.plan(methods=["dense"], sparsities=[], **shared)
    for sparsity, cells in grid.items():
        for method, structure in cells:
            runs += sweep.plan(
                methods=[method], sparsities=[sparsity], structure=structure, keep_dense=KEEP_DENSE, **shared
            )
    return runs


def orderings(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three orderings at every data set and sparsity where both cells of a comparison ran.

    * (a) ``nm_sr_ste N:M >= nm_ste N:M``;
    * (b) each adjacent pair of :data:`COARSENING` present at that sparsity (``rigl unstructured >=
      rigl N:M``, ...; at 90%, where N:M has no pattern, unstructured against blocks);
    * (c) ``srigl fan_in`` within :data:`SRIGL_TOLERANCE_POINTS` of ``rigl unstructured`` and of
      ``rigl fan_in`` (the latter isolates SRigL's neuron ablation).

    Each entry gives the margin (first minus second) in points and in standard errors
    (:func:`benchmarks.accuracy.sweep.difference`) and whether the claim holds.
    """
    cells = {(c["dataset"], c["sparsity"], row_label(c)): c for c in table}
    checks = []
    for dataset, sparsity in sorted({(c["dataset"], c["sparsity"]) for c in table if c["method"] != "dense"}):
        present = [name for name in COARSENING if (dataset, sparsity, name) in cells]
        pairs = [("a", "nm_sr_ste N:M", "nm_ste N:M", ">=")]
        pairs += [("b", first, second, ">=") for first, second in itertools.pairwise(present)]
        pairs += [("c", "srigl fan_in", "rigl unstructured", "~"), ("c", "srigl fan_in", "rigl fan_in", "~")]
        for ordering, first, second, relation in pairs:
            a, b = cells.get((dataset, sparsity, first)), cells.get((dataset, sparsity, second))
            if a is None or b is None:
                continue
            margin = sweep.difference(a, b)
            close = abs(margin["margin_points"]) <= SRIGL_TOLERANCE_POINTS
            checks.append(
                {
                    "dataset": dataset,
                    "sparsity": sparsity,
                    "ordering": ordering,
                    "claim": f"{first} {relation} {second}",
                    "holds": close if relation == "~" else margin["margin_points"] >= 0,
                    **margin,
                }
            )
    return checks


def orderings_markdown(checks: Sequence[dict[str, Any]]) -> str:
    """The checks as one Markdown table: the margin in points and in standard errors."""
    lines = ["| data set | sparsity | claim | holds | margin (points) | margin (SE) |", "|---|---|---|---|---|---|"]
    for check in checks:
        se = check["margin_in_std_errors"]
        lines.append(
            f"| {check['dataset']} | {100 * check['sparsity']:g}% | ({check['ordering']}) {check['claim']} | "
            f"{'yes' if check['holds'] else 'no'} | {check['margin_points']:+.2f} | "
            f"{'-' if se is None else f'{se:+.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument(
        "--sparsities", nargs="+", type=float, default=list(GRID), choices=list(GRID), help="rows of the grid to run"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per cell (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="override every data set's number of steps")
    parser.add_argument("--update-every", type=int, default=50, help="steps between mask updates (default 50)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one process each")
    args = parser.parse_args(argv)
    grid = {sparsity: GRID[sparsity] for sparsity in args.sparsities}
    if args.quick:
        args.datasets, grid, args.seeds = ["digits"], QUICK_GRID, 1
        args.steps, args.update_every = args.steps or sweep.QUICK_STEPS, sweep.QUICK_UPDATE_EVERY
    out = output_path(args, "accuracy", "structures")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = plan(args.datasets, grid, args.seeds, args.steps, args.update_every)
    rows = sweep.run_all(runs, out.with_suffix(".csv"), args.jobs, COMPILATION_CACHE)
    wanted = {run.key() for run in runs}
    table = sweep.aggregate(row for row in rows if sweep.row_key(row) in wanted)
    checks = orderings(table)
    record = {
        "benchmark": "accuracy by mask structure",
        "quick": args.quick,
        "settings": {
            "datasets": {name: sweep.DATASET_SETTINGS[name] for name in args.datasets},
            "steps_override": args.steps,
            "distribution": f"{DISTRIBUTION}, the same layers sparsified at every structure",
            "keep_dense": KEEP_DENSE,
            "grid": {str(sparsity): [list(cell) for cell in cells] for sparsity, cells in grid.items()},
            "rows": "N:M is 2:4 at 50% and 1:4 at 75%",
            "harness": "jaxsparse.training.Config defaults otherwise (AdamW, cosine decay, masks every 50 steps)",
            "accuracy": "test accuracy after the last step",
            "srigl_close_within_points": SRIGL_TOLERANCE_POINTS,
        },
        "table": table,
        "orderings": checks,
    }
    text = sweep.markdown(table, row_label, ROWS)
    out.with_suffix(".md").write_text(
        "N:M rows: 2:4 at 50%, 1:4 at 75%. Mean ± sample std of the test accuracy (%) over seeds.\n\n"
        f"{text}\n### Orderings\n\n{orderings_markdown(checks)}"
    )
    write_results(record, out, functools.partial(sweep.plot, label=row_label, order=ROWS))
    print(text)
    print(orderings_markdown(checks))
    return record


if __name__ == "__main__":
    main()
