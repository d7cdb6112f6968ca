"""Test accuracy of every method at several sparsities, distributions and seeds (mean ± std).

Every run is one ``jaxsparse.training.train`` call, the same code path as ``jaxsparse train``:
AdamW with cosine decay, gradient clipping and weight decay (the harness defaults), mask updates
every 50 steps until 75% of training, Top-KAST's backward set twice as dense as its forward set,
gradual magnitude pruning ramping from dense to the target sparsity over the same steps (Zhu &
Gupta 2017's cubic schedule). The reported accuracy is the test accuracy after the last step: no
checkpoint is picked by its test score.

* methods: dense, static (random masks, fixed), SET, RigL, Top-KAST, gradual magnitude, GaP, SNFS:
  every registered method whose masks are unstructured by default. Those with a structure of their
  own (N:M STE and SR-STE, SRigL at constant fan-in) belong to the structure study
  (:mod:`benchmarks.accuracy.structures`), which compares them at matched layers and densities;
  here they run on request only (``--methods srigl``);
* IMP (iterative magnitude pruning with rewinding to init) runs on request only (``--methods imp``).
  It is not one training at the sweep's budget: its ``steps`` are one round's, so a run trains the
  dense network and then :data:`IMP_ROUNDS` pruned rounds, ``IMP_ROUNDS + 1`` times the steps of
  every other row (the training-FLOPs column shows the cost, 1 + the rounds' densities). In the
  default grid it would cost as much as four other methods together, for a method whose own study
  (:mod:`benchmarks.accuracy.lottery`) runs it as its paper does. The fraction pruned per round is
  derived from the sparsity, ``p = 1 - (1 - S)^(1/R)``, so that ``R = IMP_ROUNDS`` rounds end at
  ``S`` exactly (8 rounds of 20% stop at 83%);
* ``--inits`` scores the initial masks at initialisation (``jaxsparse.training.Config.init``:
  random, magnitude, SNIP, GraSP, SynFlow) for the methods that accept them; each row records the
  criterion and the number of layers it left empty (``layer_collapse``). The pruning-at-init study
  (:mod:`benchmarks.accuracy.pruning_at_init`) runs it;
* sparsities 80/90/95/98% of the sparsified kernels; distributions ``uniform`` (with the first
  layer kept dense, as in Evci et al. 2020) and ``erk``;
* data sets that need no download: ``digits`` (scikit-learn, an MLP) and ``mnist1d`` (generated,
  LeNet-5); ``mnist``, ``fashion_mnist`` and ``cifar10`` are run when prepared for TFDS (see
  ``jaxsparse.data``) and otherwise skipped with the command that prepares them.

Runs are appended to ``<out>.csv`` as they finish and skipped when the file already holds them, so
an interrupted sweep resumes where it stopped. ``--jobs N`` trains N runs at a time in separate
processes sharing one XLA compilation cache. The summary (``<out>.json``, ``<out>.md`` and
``<out>.png``) reports mean ± sample std over seeds and checks the orderings the literature reports
at high sparsity (dynamic sparse training above static random masks, gradual magnitude pruning
strong), without asserting them.

Rerun from the repository root::

    python -m benchmarks.accuracy.sweep --jobs 2          # digits + MNIST-1D, 3 seeds: ~40 min on 2 cores
    python -m benchmarks.accuracy.sweep --quick           # one tiny run per method: seconds (CI)

SNFS against SET and RigL on MNIST-1D (the committed ``results/accuracy/snfs.*``)::

    python -m benchmarks.accuracy.sweep --datasets mnist1d --distributions uniform \
        --methods dense static set rigl snfs --sparsities 0.9 0.95 0.98 \
        --out benchmarks/results/accuracy/snfs.json          # 39 runs: ~10 min on 2 cores
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import multiprocessing
import statistics
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from benchmarks.common import COMPILATION_CACHE, argument_parser, output_path, write_results
from jaxsparse.algorithms import lookup, registered
from jaxsparse.pruning_at_init import CRITERIA
from jaxsparse.training import Config

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"p_gap": ("gap", {"gap_parallel": True})}
"""Rows that run a registered method with options of its own: parallel GaP is ``gap --gap-parallel``."""
STRUCTURED = tuple(method.name for method in registered() if method.default_structure not in (None, "unstructured"))
"""Registered methods with a structure of their own (``nm_ste``'s 2:4, which fixes the sparsity at 50%;
``srigl``'s constant fan-in): the structure study runs them, this sweep only on request."""
ON_REQUEST = ("imp", "ssl")
"""Unstructured methods whose run is several trainings (IMP: ``IMP_ROUNDS + 1``), or whose sparsity is no
target but follows from a penalty's strength (SSL's ``lambda``): only with ``--methods imp`` / ``ssl``."""
IMP_ROUNDS = 4
"""IMP's pruning rounds after the dense round; the fraction per round is derived from the sparsity."""
SPARSE_METHODS = (
    *(method.name for method in registered() if method.name not in (*STRUCTURED, *ON_REQUEST)),
    *VARIANTS,
)
"""Every registered unstructured algorithm, and the variants: a newly registered one joins the sweep."""
STUDIES: dict[str, tuple[str, dict[str, Any]]] = {
    "gap_r2": ("gap", {"gap_rounds": 2}),
    "gap_k2": ("gap", {"gap_partitions": 2}),
    "gap_k4": ("gap", {"gap_partitions": 4}),
}
"""Variations run on request only (``--methods gap_r2 ...``), e.g. GaP's rounds and partitions."""
TABLE_ORDER = (*SPARSE_METHODS, *ON_REQUEST, *STUDIES, *STRUCTURED)
DYNAMIC = ("set", "rigl", "top_kast", "snfs")
PAIRS = (("snfs", "set"), ("rigl", "snfs"))
"""Orderings between two methods the papers report: SNFS above SET (Dettmers & Zettlemoyer 2019, Table 1),
RigL above SNFS (Evci et al. 2020, Figure 2)."""
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
DISTRIBUTIONS = ("uniform", "erk")
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    # The MLP has 3 kernels, 2 sparsified when the first layer is dense: GaP gets 2 partitions.
    "digits": {"model": "mlp", "steps": 1000, "options": {"gap_partitions": 2}},
    "mnist1d": {"model": "lenet5", "steps": 3000},
    "mnist": {"model": "lenet300_100", "steps": 6000},
    "fashion_mnist": {"model": "lenet5", "steps": 6000},
    "cifar10": {"model": "resnet20", "steps": 30000},
}
QUICK_STEPS = 20
QUICK_UPDATE_EVERY = 5
COLUMNS = (
    "dataset",
    "model",
    "steps",
    "update_every",
    "method",
    "distribution",
    "sparsity",
    "seed",
    "structure",
    "keep_dense",
    "init",
    "accuracy",
    "test_loss",
    "measured_sparsity",
    "training_flops_ratio",
    "inference_flops_ratio",
    "wall_time_s",
    "layer_collapse",
    "git_commit",
)
KEY = COLUMNS[:11]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run (dense runs have distribution and structure ``"-"`` and sparsity 0).

    ``structure`` is a :func:`jaxsparse.masks.parse_structure` name. ``keep_dense`` is a regular
    expression of the parameters kept dense (``""``: none). ``uniform`` keeps the first layer dense
    (Evci et al. 2020) unless the run names its dense layers with ``keep_dense``. ``init`` is the
    criterion scoring the initial masks (``Config.init``, with one global threshold), ``"-"`` for
    the method's own masks.
    """

    dataset: str
    model: str
    steps: int
    update_every: int
    method: str
    distribution: str
    sparsity: float
    seed: int
    structure: str
    keep_dense: str
    init: str = "-"

    def key(self) -> tuple[str, ...]:
        return row_key(dataclasses.asdict(self))


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """What identifies a run in the CSV: its settings, as the strings the CSV stores."""
    return tuple(str(row[name]) for name in KEY)


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """The registered method a table row runs and the options it sets (``p_gap``: ``gap``, parallel)."""
    return {**VARIANTS, **STUDIES}.get(name, (name, {}))


def default_structure(name: str) -> str:
    """The structure ``name`` runs at when none is asked for (``"-"`` for dense)."""
    return "-" if name == "dense" else lookup(resolve(name)[0]).default_structure or "unstructured"


def plan(
    datasets: Sequence[str],
    methods: Sequence[str],
    sparsities: Sequence[float],
    distributions: Sequence[str],
    seeds: int,
    steps: int | None,
    update_every: int,
    structure: str | None = None,
    keep_dense: Mapping[str, str] | None = None,
    inits: Sequence[str] = ("-",),
) -> list[Run]:
    """Every run of the sweep: dense once per data set and seed, each sparse method on the full grid.

    ``structure`` applies to every sparse run (``None``: each method's own); ``keep_dense`` maps a
    data set to the pattern of the parameters its sparse runs keep dense; each sparse run is
    repeated for every criterion of ``inits`` (``"-"``: the method's own initial masks).
    """
    runs = []
    for dataset in datasets:
        settings = DATASET_SETTINGS[dataset]
        common = dict(
            dataset=dataset, model=settings["model"], steps=steps or settings["steps"], update_every=update_every
        )
        dense_layers = (keep_dense or {}).get(dataset, "")
        for seed in range(seeds):
            if "dense" in methods:
                runs.append(
                    Run(
                        **common,
                        method="dense",
                        distribution="-",
                        sparsity=0.0,
                        seed=seed,
                        structure="-",
                        keep_dense="",
                    )
                )
            for method, init, distribution, sparsity in itertools.product(
                [m for m in methods if m != "dense"], inits, distributions, sparsities
            ):
                runs.append(
                    Run(
                        **common,
                        method=method,
                        distribution=distribution,
                        sparsity=sparsity,
                        seed=seed,
                        structure=structure or default_structure(method),
                        keep_dense=dense_layers,
                        init=init,
                    )
                )
    return runs


def config(run: Run) -> Config:
    """The harness's settings of ``run`` (a :class:`~jaxsparse.training.ConfigError` if they conflict)."""
    method, variant = resolve(run.method)
    own = {option.name for option in lookup(method).options} if method != "dense" else set()
    options = {**DATASET_SETTINGS[run.dataset].get("options", {}), **variant}
    if method == "imp":
        options |= imp_options(run.sparsity)
    return Config(
        method=method,
        sparsity=run.sparsity,
        structure=None if run.structure == "-" else run.structure,
        distribution="erk" if run.distribution == "-" else run.distribution,
        dense_first_layer=run.distribution == "uniform" and not run.keep_dense,
        keep_dense=run.keep_dense or None,
        init=None if run.init == "-" else run.init,
        dataset=run.dataset,
        model=run.model,
        steps=run.steps,
        update_every=run.update_every,
        seed=run.seed,
        eval_every=run.steps,
        checkpoint_every=run.steps,
        keep_checkpoints=1,
        options=tuple((name, value) for name, value in options.items() if name in own),
    )


def imp_options(sparsity: float) -> dict[str, Any]:
    """IMP's rounds and the fraction per round, ``1 - (1 - S)^(1/R)``, that end exactly at ``sparsity``.

    Example:
      >>> options = imp_options(0.9)
      >>> options["imp_rounds"], round(options["imp_fraction"], 4)
      (4, 0.4377)
    """
    return {"imp_rounds": IMP_ROUNDS, "imp_fraction": 1.0 - (1.0 - sparsity) ** (1.0 / IMP_ROUNDS)}


def train_one(run: Run, cache_dir: str) -> dict[str, Any]:
    """Trains ``run`` with the harness (results folder in a temporary directory) and returns its CSV row."""
    from jaxsparse.training import compilation_cache, train

    with tempfile.TemporaryDirectory() as out_dir, compilation_cache(cache_dir):
        result = train(config(run).replace(out_dir=out_dir), progress=False)
    last = result.metrics[-1]
    if abs(last["sparsity"] - run.sparsity) > 0.01:
        raise RuntimeError(f"{run} ended at sparsity {last['sparsity']:.4f}, not {run.sparsity}: check the schedule")
    return {
        **dataclasses.asdict(run),
        "accuracy": result.accuracy,
        "test_loss": last["test_loss"],
        "measured_sparsity": last["sparsity"],
        "training_flops_ratio": result.report["flops"]["training_ratio"],
        "inference_flops_ratio": result.report["flops"]["inference_ratio"],
        "wall_time_s": result.report["wall_time"],
        "layer_collapse": result.report.get("init", {}).get("layer_collapse", 0),
        "git_commit": result.report["git_commit"],
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The finished runs in ``path`` (none if it does not exist), numbers parsed.

    A CSV written before the ``structure`` and ``keep_dense`` columns existed holds unstructured
    runs with no layers named dense, and reads as such; one from before ``init`` and
    ``layer_collapse`` holds runs from their methods' own masks, whose layouts keep at least one
    weight in every layer.
    """
    if not path.exists():
        return []
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        row.setdefault("structure", "-" if row["method"] == "dense" else "unstructured")
        row.setdefault("keep_dense", "")
        row.setdefault("init", "-")
        row.setdefault("layer_collapse", 0)
    numeric = {
        "steps": int,
        "update_every": int,
        "seed": int,
        "sparsity": float,
        "accuracy": float,
        "test_loss": float,
        "measured_sparsity": float,
        "training_flops_ratio": float,
        "inference_flops_ratio": float,
        "wall_time_s": float,
        "layer_collapse": int,
    }
    return [{name: numeric.get(name, str)(value) for name, value in row.items()} for row in rows]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Appends ``row`` to the CSV at ``path``, first rewriting one with older columns in today's."""
    if path.exists() and _header(path) != list(COLUMNS):
        rows = read_rows(path)
        path.unlink()
        for old in rows:
            append_row(path, old)
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({name: row[name] for name in COLUMNS})


def _header(path: Path) -> list[str]:
    with path.open(newline="") as file:
        return next(csv.reader(file), [])


def run_all(runs: Sequence[Run], csv_path: Path, jobs: int, cache_dir: Path) -> list[dict[str, Any]]:
    """Trains the runs ``csv_path`` does not hold yet, appending each row as it finishes.

    Every run's settings are checked first, so a conflict (``nm_ste`` at 80%) stops the sweep
    before anything trains.
    """
    done = {row_key(row) for row in read_rows(csv_path)}
    todo = [run for run in runs if run.key() not in done]
    for run in todo:
        config(run)
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {csv_path}, {len(todo)} to train", flush=True)
    if jobs == 1:
        finished = (train_one(run, str(cache_dir)) for run in todo)
        _record_all(finished, csv_path, len(todo))
    else:
        context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(train_one, run, str(cache_dir)) for run in todo]
            _record_all((future.result() for future in futures), csv_path, len(todo))
    return read_rows(csv_path)


def _record_all(rows: Iterable[dict[str, Any]], csv_path: Path, total: int) -> None:
    """Appends each finished run's row to the CSV as it arrives, and reports it."""
    for index, row in enumerate(rows, 1):
        append_row(csv_path, row)
        init = "" if row["init"] == "-" else f" init {row['init']} ({row['layer_collapse']} layers empty)"
        print(
            f"[{index}/{total}] {row['dataset']} {row['method']} {row['structure']} {row['distribution']} "
            f"{row['sparsity']:.2f}{init} seed {row['seed']}: {row['accuracy']:.4f} ({row['wall_time_s']:.0f} s)",
            flush=True,
        )


def aggregate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of the accuracy over seeds, per cell of the grid."""
    fields = ("dataset", "model", "steps", "method", "structure", "keep_dense", "init", "distribution", "sparsity")
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[name] for name in fields), []).append(row)
    table = []
    for cell, group in sorted(cells.items()):
        accuracies = [row["accuracy"] for row in group]
        table.append(
            {
                **dict(zip(fields, cell, strict=True)),
                "seeds": len(group),
                "mean": statistics.mean(accuracies),
                "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "measured_sparsity": statistics.mean(row["measured_sparsity"] for row in group),
                "training_flops_ratio": statistics.mean(row["training_flops_ratio"] for row in group),
                "layer_collapse": [row["layer_collapse"] for row in group],
            }
        )
    return table


def difference(better: dict[str, Any], worse: dict[str, Any]) -> dict[str, Any]:
    """``better``'s mean accuracy minus ``worse``'s, in points and in standard errors of the difference.

    The standard error is ``sqrt(std_a^2 / n_a + std_b^2 / n_b)``, so a reader can see which gaps
    exceed seed noise (``None`` when both cells have no spread).
    """
    margin = better["mean"] - worse["mean"]
    noise = (better["std"] ** 2 / better["seeds"] + worse["std"] ** 2 / worse["seeds"]) ** 0.5
    return {"margin_points": 100 * margin, "margin_in_std_errors": margin / noise if noise > 0 else None}


def orderings(table: Sequence[dict[str, Any]], high: float = 0.9) -> list[dict[str, Any]]:
    """At each sparsity >= ``high``: dynamic methods and gradual magnitude above static masks, and :data:`PAIRS`.

    Only rows from the methods' own initial masks take part (``init`` ``"-"``). Margins are in
    accuracy points and in standard errors of the difference (:func:`difference`).
    """
    cells = {
        (c["dataset"], c["distribution"], c["sparsity"], c["method"]): c for c in table if c.get("init", "-") == "-"
    }
    pairs = [(method, "static") for method in (*DYNAMIC, "gradual_magnitude")] + list(PAIRS)
    checks = []
    for (dataset, distribution, sparsity, method), cell in sorted(cells.items()):
        if sparsity < high:
            continue
        for better, worse in pairs:
            other = cells.get((dataset, distribution, sparsity, worse))
            if better != method or other is None:
                continue
            margin = difference(cell, other)
            checks.append(
                {
                    "dataset": dataset,
                    "distribution": distribution,
                    "sparsity": sparsity,
                    "claim": f"{method} > {worse}",
                    "holds": margin["margin_points"] > 0,
                    **margin,
                }
            )
    return checks


def orderings_markdown(checks: Sequence[dict[str, Any]]) -> str:
    """The ordering checks as one Markdown table, margins in points and in standard errors."""
    lines = [
        "| data set | distribution | sparsity | claim | holds | margin (points) | margin (SE) |",
        "|---|---|---|---|---|---|---|",
    ]
    for check in checks:
        se = check["margin_in_std_errors"]
        lines.append(
            f"| {check['dataset']} | {check['distribution']} | {100 * check['sparsity']:g}% | {check['claim']} | "
            f"{'yes' if check['holds'] else 'no'} | {check['margin_points']:+.2f} | "
            f"{'-' if se is None else f'{se:+.1f}'} |"
        )
    return "\n".join(lines) + "\n"


def method_label(cell: dict[str, Any]) -> str:
    """A cell's row in the sweep's tables and plots: its method."""
    return cell["method"]


def markdown(
    table: Sequence[dict[str, Any]],
    label: Callable[[dict[str, Any]], str] = method_label,
    order: Sequence[str] = TABLE_ORDER,
    flops: bool = False,
) -> str:
    """One table per data set: ``label(cell)`` as rows, in ``order``; ``distribution sparsity`` as columns.

    Each entry is ``mean ± std`` in %. With ``flops``, a second table per data set gives each cell's
    training FLOPs relative to dense training (mean over seeds).
    """
    lines = []
    for dataset in sorted({c["dataset"] for c in table}):
        cells = [c for c in table if c["dataset"] == dataset]
        sparse = [c for c in cells if c["method"] != "dense"]
        columns = sorted({(c["distribution"], c["sparsity"]) for c in sparse}, key=lambda x: (x[0], x[1]))
        first = cells[0]
        by_key = {(label(c), c["distribution"], c["sparsity"]): c for c in sparse}
        names = [n for n in order if any(label(c) == n for c in sparse)]
        header = [
            "| method | " + " | ".join(f"{d} {100 * s:g}%" for d, s in columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        lines += [f"### {dataset} ({first['model']}, {first['steps']} steps, {first['seeds']} seeds)", "", *header]
        for cell in cells:
            if cell["method"] == "dense":
                dense = f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"
                lines.append(f"| dense | {dense} (all columns) |" + " |" * (len(columns) - 1))
        lines += _method_rows(names, columns, by_key, lambda c: f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}")
        if flops:
            lines += ["", f"Training FLOPs relative to dense training ({dataset}):", "", *header]
            lines += _method_rows(names, columns, by_key, lambda c: f"{c['training_flops_ratio']:.3g}")
        lines.append("")
    return "\n".join(lines)


def _method_rows(
    names: Sequence[str],
    columns: Sequence[tuple[str, float]],
    by_key: Mapping[tuple[str, str, float], dict[str, Any]],
    entry: Callable[[dict[str, Any]], str],
) -> list[str]:
    """One Markdown line per method: ``entry(cell)`` in each column, empty where the cell did not run."""
    return [
        f"| {name} | "
        + " | ".join("" if by_key.get((name, d, s)) is None else entry(by_key[name, d, s]) for d, s in columns)
        + " |"
        for name in names
    ]


def plot(
    record: dict[str, Any],
    label: Callable[[dict[str, Any]], str] = method_label,
    order: Sequence[str] = TABLE_ORDER,
) -> Figure:
    """Accuracy against sparsity: one panel per data set and distribution, one line per ``label`` in ``order``."""
    import matplotlib.pyplot as plt

    table = record["table"]
    datasets = sorted({c["dataset"] for c in table})
    distributions = [d for d in DISTRIBUTIONS if any(c["distribution"] == d for c in table)]
    fig, axes = plt.subplots(
        len(datasets), len(distributions), figsize=(5.5 * len(distributions), 3.8 * len(datasets)), squeeze=False
    )
    for row, dataset in enumerate(datasets):
        for col, distribution in enumerate(distributions):
            ax = axes[row][col]
            for cell in table:
                if cell["dataset"] == dataset and cell["method"] == "dense":
                    ax.axhline(100 * cell["mean"], color="black", linestyle="--", label="dense")
                    ax.axhspan(
                        100 * (cell["mean"] - cell["std"]),
                        100 * (cell["mean"] + cell["std"]),
                        color="black",
                        alpha=0.08,
                    )
            for name in order:
                cells = sorted(
                    (
                        c
                        for c in table
                        if (c["dataset"], c["distribution"], label(c)) == (dataset, distribution, name)
                        and c["method"] != "dense"
                    ),
                    key=lambda c: c["sparsity"],
                )
                if cells:
                    ax.errorbar(
                        [100 * c["sparsity"] for c in cells],
                        [100 * c["mean"] for c in cells],
                        yerr=[100 * c["std"] for c in cells],
                        marker="o",
                        capsize=3,
                        label=name,
                    )
            ax.set_title(f"{dataset}, {distribution}")
            ax.set_xlabel("sparsity (%)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Test accuracy vs sparsity (mean ± std over seeds)")
    return fig


def available(datasets: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The data sets that can be loaded, and for the others the reason (how to prepare them)."""
    from jaxsparse.data import DatasetNotPreparedError, load_dataset

    ready, skipped = [], {}
    for name in datasets:
        try:
            load_dataset(name)
            ready.append(name)
        except DatasetNotPreparedError as error:
            skipped[name] = str(error)
            print(f"skipping {name}: {error}", flush=True)
    return ready, skipped


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"], choices=sorted(DATASET_SETTINGS))
    parser.add_argument("--methods", nargs="+", default=["dense", *SPARSE_METHODS], choices=["dense", *TABLE_ORDER])
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS), choices=DISTRIBUTIONS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per cell (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="override every data set's number of steps")
    parser.add_argument("--update-every", type=int, default=50, help="steps between mask updates (default 50)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one process each")
    parser.add_argument(
        "--inits",
        nargs="+",
        default=["-"],
        choices=["-", *CRITERIA],
        help="criteria scoring each sparse run's initial masks (Config.init; default '-': the method's own)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.sparsities, args.distributions, args.seeds = ["digits"], [0.9], ["erk"], 1
        args.steps, args.update_every = args.steps or QUICK_STEPS, QUICK_UPDATE_EVERY
    out = output_path(args, "accuracy", "sweep")
    out.parent.mkdir(parents=True, exist_ok=True)
    datasets, skipped = available(args.datasets)
    runs = plan(
        datasets,
        args.methods,
        args.sparsities,
        args.distributions,
        args.seeds,
        args.steps,
        args.update_every,
        inits=args.inits,
    )
    csv_path = out.with_suffix(".csv")
    rows = run_all(runs, csv_path, args.jobs, COMPILATION_CACHE)
    wanted = {run.key() for run in runs}
    rows = [row for row in rows if row_key(row) in wanted]
    table = aggregate(rows)
    record = {
        "benchmark": "accuracy sweep",
        "quick": args.quick,
        "settings": {
            "datasets": DATASET_SETTINGS,
            "harness": "jaxsparse.training.Config defaults otherwise",
            "uniform": "first layer dense (Evci et al. 2020)",
            "imp": f"{IMP_ROUNDS} rounds of fraction 1 - (1 - S)^(1/{IMP_ROUNDS}), steps per round, rewind to init",
            "accuracy": "test accuracy after the last step",
        },
        "skipped_datasets": skipped,
        "table": table,
        "orderings": orderings(table),
    }
    text = markdown(table, flops=True)
    out.with_suffix(".md").write_text(text + "\n### Orderings\n\n" + orderings_markdown(record["orderings"]))
    write_results(record, out, plot)
    print(text)
    return record


if __name__ == "__main__":
    main()
