"""PNG plots of a run: learning curves, per-layer sparsity, mask change over time (and SSL's zero groups).

Figures are drawn on ``matplotlib.figure.Figure`` objects and saved through the Agg canvas, never
through ``pyplot``: the harness must not switch the global backend of a notebook or GUI session
that imports it, and it needs no display. Each figure's title names the run (method, sparsity,
model, dataset), so a PNG copied out of its results folder still says what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxsparse.inspection import LayerStats
from jaxsparse.training._config import Config
from jaxsparse.training._metrics import round_results

__all__ = ["plot_run", "run_figures"]


def _title(config: Config) -> str:
    """``"rigl, 90% sparse (erk): mlp on digits"``; a dense run has no sparsity to name."""
    if config.method == "dense":
        return f"dense: {config.model} on {config.dataset}"
    return f"{config.method}, {config.sparsity:.0%} sparse ({config.distribution}): {config.model} on {config.dataset}"


def _figure(config: Config, figsize: tuple[float, float]) -> Figure:
    # Constrained layout leaves room for the suptitle, which tight_layout may overlap.
    figure = Figure(figsize=figsize, layout="constrained")
    figure.suptitle(_title(config))
    return figure


def _curves(rows: Sequence[dict[str, Any]], config: Config) -> Figure:
    figure = _figure(config, (10, 4))
    steps = [row["step"] for row in rows]
    loss, accuracy = figure.subplots(1, 2)
    loss.plot(steps, [row["train_loss"] for row in rows], marker=".", label="train (mean since last eval)")
    loss.plot(steps, [row["test_loss"] for row in rows], marker=".", label="test")
    loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    loss.legend()
    accuracy.plot(steps, [row["test_accuracy"] for row in rows], marker=".")
    accuracy.set(xlabel="step", ylabel="accuracy", title="test accuracy")
    for axes in (loss, accuracy):
        axes.grid(alpha=0.3)
    return figure


def _layer_sparsity(stats: Sequence[LayerStats], config: Config) -> Figure:
    """Bars for the sparsified leaves only: biases and other dense leaves are always at 0."""
    layers = [s for s in stats if s.sparsified]
    figure = _figure(config, (8, 1.6 + 0.4 * max(len(layers), 1)))
    axes = figure.subplots()
    bars = axes.barh([s.name for s in layers], [s.sparsity for s in layers])
    axes.bar_label(bars, labels=[f"{s.sparsity:.1%}" for s in layers], padding=3)
    axes.invert_yaxis()  # first layer on top
    size = sum(s.size for s in layers)
    overall = 1.0 - sum(s.active for s in layers) / size if size else 0.0
    axes.set(xlim=(0, 1.1), xlabel="sparsity", title=f"per-layer sparsity ({overall:.1%} over sparsified layers)")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _mask_change(rows: Sequence[dict[str, Any]], config: Config) -> Figure:
    """The ``mask_change`` column: of the weights active at the previous evaluation, the fraction now inactive."""
    figure = _figure(config, (6, 4))
    axes = figure.subplots()
    axes.plot([row["step"] for row in rows], [row["mask_change"] for row in rows], marker=".")
    axes.set(
        xlabel="step",
        ylabel="fraction of the active set that changed",
        title="mask change since the previous evaluation",
    )
    axes.grid(alpha=0.3)
    return figure


def _rounds(rows: Sequence[dict[str, Any]], config: Config) -> Figure:
    """Each pruning round's test accuracy at its end against its sparsity (density on a log axis)."""
    results = round_results(list(rows))
    figure = _figure(config, (6, 4))
    axes = figure.subplots()
    density = [1.0 - row["sparsity"] for row in results]
    axes.plot(density, [row["test_accuracy"] for row in results], marker="o")
    for row, x in zip(results, density, strict=True):
        axes.annotate(str(row["round"]), (x, row["test_accuracy"]), textcoords="offset points", xytext=(0, 6))
    axes.set(
        xscale="log",
        xlabel="density (1 - sparsity), log scale",
        ylabel="test accuracy at the round's end",
        title="accuracy over pruning rounds (labels: round)",
    )
    axes.invert_xaxis()  # sparser to the right
    axes.grid(alpha=0.3)
    return figure


def _zero_groups(zero_groups: dict[str, dict[str, list[int]]], config: Config) -> Figure:
    """SSL's all-zero groups: per layer and group type, the fraction of its groups at zero (labels: zero / all)."""
    bars = [
        (f"{layer} ({kind})", zero, total)
        for layer, kinds in zero_groups.items()
        for kind, (zero, total) in kinds.items()
    ]
    figure = _figure(config, (8, 1.6 + 0.4 * max(len(bars), 1)))
    axes = figure.subplots()
    drawn = axes.barh([name for name, _, _ in bars], [zero / max(total, 1) for _, zero, total in bars])
    axes.bar_label(drawn, labels=[f"{zero}/{total}" for _, zero, total in bars], padding=3)
    axes.invert_yaxis()  # first layer on top
    axes.set(xlim=(0, 1.15), xlabel="fraction of groups all zero", title="zero groups per layer and group type")
    axes.grid(axis="x", alpha=0.3)
    return figure


def run_figures(
    rows: Sequence[dict[str, Any]],
    stats: Sequence[LayerStats],
    config: Config,
    regularizer: dict[str, Any] | None = None,
) -> dict[str, Figure]:
    """The figures :func:`plot_run` saves, by file name, each titled with the run it shows.

    Args:
      rows: the metrics rows (see :data:`~jaxsparse.training.COLUMNS`).
      stats: the final per-leaf statistics (:func:`jaxsparse.layer_stats`).
      config: the run's settings, which the titles name.
      regularizer: the regulariser's report (:func:`~jaxsparse.training.run_report`'s ``regularizer``).

    Returns:
      ``{"curves.png": ..., "layer_sparsity.png": ..., "mask_change.png": ...}``, unsaved,
      ``"rounds.png"`` (accuracy against sparsity over the rounds) for a run with pruning rounds, and
      ``"zero_groups.png"`` for a regulariser reporting ``zero_groups`` (SSL).
    """
    figures = {
        "curves.png": _curves(rows, config),
        "layer_sparsity.png": _layer_sparsity(stats, config),
        "mask_change.png": _mask_change(rows, config),
    }
    if round_results(list(rows)):
        figures["rounds.png"] = _rounds(rows, config)
    if regularizer is not None and regularizer.get("zero_groups"):
        figures["zero_groups.png"] = _zero_groups(regularizer["zero_groups"], config)
    return figures


def plot_run(
    rows: Sequence[dict[str, Any]],
    stats: Sequence[LayerStats],
    folder: str | Path,
    *,
    config: Config,
    regularizer: dict[str, Any] | None = None,
) -> list[Path]:
    """Writes ``curves.png``, ``layer_sparsity.png``, ``mask_change.png`` (and ``rounds.png``) into ``folder``.

    Args:
      rows: the metrics rows (see :data:`~jaxsparse.training.COLUMNS`).
      stats: the final per-leaf statistics (:func:`jaxsparse.layer_stats`).
      folder: where to write.
      config: the run's settings, which the titles name.
      regularizer: the regulariser's report, for ``zero_groups.png`` (SSL).

    Returns:
      The paths written.
    """
    paths = []
    for name, figure in run_figures(rows, stats, config, regularizer).items():
        FigureCanvasAgg(figure)
        figure.savefig(Path(folder) / name, dpi=120)
        paths.append(Path(folder) / name)
    return paths
