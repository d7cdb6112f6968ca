"""Pruning at initialisation on MNIST-1D: random, magnitude, SNIP, GraSP and SynFlow masks, trained static.

Every run is a :mod:`benchmarks.accuracy.sweep` run (the same harness, CSV resume and summary code):
``jaxsparse.training.Config(method="static", init=CRITERION, init_scope="global")``, i.e. the masks
are scored once on the freshly initialised network (SynFlow: 100 data-free rounds on an
exponential schedule; SNIP and GraSP: the first training batch), one threshold over all layers
decides every layer's count, as in Tanaka et al. (2020), and the masks never change afterwards.
``summary.json`` records how many sparsified layers the criterion left with no weight
(``layer_collapse``); the CSV keeps it per run.

* **model**: LeNet-5 on MNIST-1D, 3000 steps, the sweep's setting, so the rows sit beside the
  sweep's MNIST-1D rows. Its five kernels are very unequal (30 and 480 weights in the two
  convolutions, 19,200, 10,080 and 840 in the dense layers), which is where global criteria empty
  layers; the residual MLP of the lottery study has three, two of them large;
* **layers**: every kernel is sparsified, the first and the classifier included, as Tanaka et al.
  prune every layer (the sweep's ``erk`` rows, which keep no layer dense; with one global
  threshold ERK only sets the total count, ``S`` of all kernel weights);
* **grid**: 80/90/95/98/99% sparsity, the five criteria, 3 seeds; dense once per seed.

The claim checked (Tanaka et al. 2020, Figure 1 and Section 6): at extreme sparsity SynFlow keeps
every layer and stays above chance (10%), where SNIP and GraSP collapse layers and fall to chance.
Its two parts are checked apart (:func:`checks`): SynFlow survives, and SNIP and GraSP collapse. At
each sparsity the summary also gives SynFlow's margin over SNIP and over GraSP (points and standard
errors, :func:`benchmarks.accuracy.sweep.difference`), its margin over chance in standard errors,
and each criterion's collapsed layers per seed.

``--sparsities`` and ``--seeds`` train part of the grid; ``--summary-only`` trains nothing and
summarises whatever part of the full grid the CSV holds, each cell with its own number of seeds.

Rerun from the repository root::

    python -m benchmarks.accuracy.pruning_at_init           # 78 runs: ~35 min on 2 cores (~25 s a run)
    python -m benchmarks.accuracy.pruning_at_init --quick   # two tiny runs on digits: seconds (CI)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from benchmarks.accuracy import sweep
from benchmarks.common import COMPILATION_CACHE, argument_parser, output_path, write_results
from jaxsparse.pruning_at_init import CRITERIA

DATASET = "mnist1d"
DISTRIBUTION = "erk"
"""With ``--init-scope global`` the distribution only sets the total count; ``erk`` keeps no layer dense."""
SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
EXTREME = (0.98, 0.99)
"""The sparsities of the claim."""
CHANCE = 0.1
ORDER = ("random", "magnitude", "snip", "grasp", "synflow")
QUICK = {"dataset": "digits", "criteria": ("snip", "synflow"), "sparsities": (0.9,)}


def plan(
    dataset: str, criteria: Sequence[str], sparsities: Sequence[float], seeds: int, steps: int | None, dense: bool
) -> list[sweep.Run]:
    """Dense once per seed (if ``dense``), then ``static`` from every criterion's masks at every sparsity."""
    shared = dict(datasets=[dataset], distributions=[DISTRIBUTION], seeds=seeds, steps=steps, update_every=50)
    runs = sweep.plan(methods=["dense"], sparsities=[], **shared) if dense else []
    return runs + sweep.plan(methods=["static"], sparsities=sparsities, inits=criteria, **shared)


def checks(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """At every sparsity: SynFlow against chance, against SNIP and GraSP, and the layers each one emptied.

    The claim has two parts, checked apart: SynFlow keeps every layer in every seed and is above
    chance by more than 2 standard errors (``synflow_survives``); SNIP and GraSP each empty a layer
    in some seed (``others_collapse``). ``holds`` is both. ``synflow_ahead`` says whether SynFlow's
    mean is above each of the others', whatever the cause.
    """
    cells = {(c["sparsity"], c["init"]): c for c in table if c["method"] == "static"}
    out = []
    for sparsity in sorted({s for s, _ in cells}):
        synflow = cells.get((sparsity, "synflow"))
        if synflow is None:
            continue
        error = synflow["std"] / synflow["seeds"] ** 0.5
        above = (synflow["mean"] - CHANCE) / error if error > 0 else None
        against = {}
        for other in ("snip", "grasp"):
            cell = cells.get((sparsity, other))
            if cell is not None:
                against[other] = {
                    "mean": cell["mean"],
                    "seeds": cell["seeds"],
                    "collapse": cell["layer_collapse"],
                    **sweep.difference(synflow, cell),
                }
        survives = max(synflow["layer_collapse"]) == 0 and synflow["mean"] > CHANCE and (above is None or above > 2)
        collapse = bool(against) and all(max(o["collapse"]) > 0 for o in against.values())
        out.append(
            {
                "sparsity": sparsity,
                "extreme": sparsity in EXTREME,
                "synflow_mean": synflow["mean"],
                "synflow_seeds": synflow["seeds"],
                "synflow_collapse": synflow["layer_collapse"],
                "synflow_above_chance_in_std_errors": above,
                "against": against,
                "synflow_survives": survives,
                "others_collapse": collapse,
                "synflow_ahead": {other: o["margin_points"] > 0 for other, o in against.items()},
                "holds": survives and collapse,
            }
        )
    return out


def _accuracy(cell: dict[str, Any] | None, seeds: int | None = None) -> str:
    """``mean ± std`` in %, with ``(n = k)`` when the cell has fewer seeds than ``seeds``."""
    if cell is None:
        return ""
    text = f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"
    return text if seeds is None or cell["seeds"] >= seeds else f"{text} (n = {cell['seeds']})"


def markdown(table: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> str:
    """Accuracy, collapsed layers and training FLOPs per criterion and sparsity, and the claim's checks."""
    cells = {(c["sparsity"], c["init"]): c for c in table if c["method"] == "static"}
    sparsities = sorted({s for s, _ in cells})
    criteria = [c for c in ORDER if any(init == c for _, init in cells)]
    header = ["| criterion | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |"]
    header.append("|---" * (len(sparsities) + 1) + "|")
    dense = next((c for c in table if c["method"] == "dense"), None)
    first = table[0]
    lines = [
        f"### {first['dataset']} ({first['model']}, {first['steps']} steps, static training, one global threshold)",
        "",
    ]
    if dense is not None:
        lines += [f"Dense: {_accuracy(dense)} (n = {dense['seeds']}). Chance: {100 * CHANCE:g}%.", ""]
    lines += ["Test accuracy (%), mean ± sample std over seeds:", "", *header]
    most = max(c["seeds"] for c in cells.values())
    for criterion in criteria:
        row = [_accuracy(cells.get((s, criterion)), most) for s in sparsities]
        lines.append(f"| {criterion} | " + " | ".join(row) + " |")
    lines += ["", "Sparsified layers left with no weight (of 5), per seed:", "", *header]
    for criterion in criteria:
        row = [cells.get((s, criterion)) for s in sparsities]
        lines.append(
            f"| {criterion} | "
            + " | ".join("" if c is None else "/".join(str(n) for n in c["layer_collapse"]) for c in row)
            + " |"
        )
    lines += ["", "Training FLOPs relative to dense training:", "", *header]
    for criterion in criteria:
        row = [cells.get((s, criterion)) for s in sparsities]
        lines.append(
            f"| {criterion} | "
            + " | ".join("" if c is None else f"{c['training_flops_ratio']:.3g}" for c in row)
            + " |"
        )
    lines += [
        "",
        "### SynFlow against SNIP and GraSP (Tanaka et al. 2020)",
        "",
        "SynFlow survives: it keeps every layer in every seed and is above chance by more than 2 SE. "
        "The claim holds where it survives and SNIP and GraSP each empty a layer.",
        "",
        "| sparsity | SynFlow above chance (SE) | SynFlow − SNIP (points, SE) | SynFlow − GraSP (points, SE) | "
        "layers emptied: SynFlow / SNIP / GraSP | SynFlow survives | SNIP and GraSP collapse | claim holds |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    for entry in results:
        above = entry["synflow_above_chance_in_std_errors"]
        gaps, emptied = [], ["/".join(map(str, entry["synflow_collapse"]))]
        for other in ("snip", "grasp"):
            margin = entry["against"].get(other)
            se = None if margin is None else margin["margin_in_std_errors"]
            gaps.append(
                "" if margin is None else f"{margin['margin_points']:+.1f} ({'-' if se is None else f'{se:+.1f}'})"
            )
            emptied.append("" if margin is None else "/".join(map(str, margin["collapse"])))
        lines.append(
            f"| {100 * entry['sparsity']:g}% | {'-' if above is None else f'{above:+.1f}'} | {gaps[0]} | {gaps[1]} | "
            f"{' ; '.join(emptied)} | {yes(entry['synflow_survives'])} | {yes(entry['others_collapse'])} | "
            f"{yes(entry['holds'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any]) -> Figure:
    """Accuracy against sparsity per criterion (dense and chance dashed), and the mean number of empty layers."""
    import matplotlib.pyplot as plt

    table = record["table"]
    fig, (ax, collapse) = plt.subplots(1, 2, figsize=(11, 4))
    dense = next((c for c in table if c["method"] == "dense"), None)
    if dense is not None:
        ax.axhline(100 * dense["mean"], color="black", linestyle="--", label="dense")
    ax.axhline(100 * CHANCE, color="grey", linestyle=":", label="chance")
    for criterion in ORDER:
        cells = sorted((c for c in table if c.get("init") == criterion), key=lambda c: c["sparsity"])
        if not cells:
            continue
        x = [100 * c["sparsity"] for c in cells]
        ax.errorbar(
            x,
            [100 * c["mean"] for c in cells],
            yerr=[100 * c["std"] for c in cells],
            marker="o",
            capsize=3,
            label=criterion,
        )
        collapse.plot(x, [statistics.mean(c["layer_collapse"]) for c in cells], marker="o", label=criterion)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Static training from masks chosen at init (mean ± std)")
    collapse.set_ylabel("layers with no weight (mean over seeds)")
    collapse.set_title("Layer collapse")
    for axis in (ax, collapse):
        axis.set_xlabel("sparsity (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--criteria", nargs="+", default=list(ORDER), choices=CRITERIA)
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per cell (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="override the data set's number of steps")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one process each")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="train nothing: summarise the runs of the grid the CSV already holds (cells may have fewer seeds)",
    )
    args = parser.parse_args(argv)
    dataset, dense = DATASET, True
    if args.quick:
        dataset, args.criteria, args.sparsities = QUICK["dataset"], list(QUICK["criteria"]), list(QUICK["sparsities"])
        args.seeds, args.steps, dense = 1, args.steps or sweep.QUICK_STEPS, False
    out = output_path(args, "accuracy", "pruning_at_init")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = plan(dataset, args.criteria, args.sparsities, args.seeds, args.steps, dense)
    if args.summary_only:
        rows = sweep.read_rows(out.with_suffix(".csv"))
    else:
        rows = sweep.run_all(runs, out.with_suffix(".csv"), args.jobs, COMPILATION_CACHE)
    wanted = {run.key() for run in runs}
    table = sweep.aggregate(row for row in rows if sweep.row_key(row) in wanted)
    results = checks(table)
    record = {
        "benchmark": "pruning at initialisation, static training",
        "quick": args.quick,
        "settings": {
            "dataset": {dataset: sweep.DATASET_SETTINGS[dataset]},
            "steps_override": args.steps,
            "method": "static",
            "init_scope": "global (one threshold over all layers)",
            "distribution": f"{DISTRIBUTION}: every kernel sparsified; with a global threshold it sets the total only",
            "criteria": args.criteria,
            "harness": "jaxsparse.training.Config defaults otherwise (AdamW, cosine decay)",
            "accuracy": "test accuracy after the last step",
            "chance": CHANCE,
            "extreme_sparsities": list(EXTREME),
            "summary_only": args.summary_only,
        },
        "table": table,
        "synflow_checks": results,
    }
    text = markdown(table, results)
    out.with_suffix(".md").write_text(text)
    write_results(record, out, plot)
    print(text)
    return record


if __name__ == "__main__":
    main()
