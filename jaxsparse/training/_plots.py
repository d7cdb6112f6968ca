"""PNG plots of a run: learning curves, per-layer sparsity and mask change over time.

Figures are drawn on ``matplotlib.figure.Figure`` objects and saved through the Agg canvas, never
through ``pyplot``: the harness must not switch the global backend of a notebook or GUI session
that imports it, and it needs no display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxsparse.inspection import LayerStats

__all__ = ["plot_run"]


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def _curves(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    figure = Figure(figsize=(10, 4))
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
    return _save(figure, path)


def _layer_sparsity(stats: Sequence[LayerStats], path: Path) -> Path:
    """Bars for the sparsified leaves only: biases and other dense leaves are always at 0."""
    layers = [s for s in stats if s.sparsified]
    figure = Figure(figsize=(8, 1.2 + 0.4 * max(len(layers), 1)))
    axes = figure.subplots()
    bars = axes.barh([s.name for s in layers], [s.sparsity for s in layers])
    axes.bar_label(bars, labels=[f"{s.sparsity:.1%}" for s in layers], padding=3)
    axes.invert_yaxis()  # first layer on top
    size = sum(s.size for s in layers)
    overall = 1.0 - sum(s.active for s in layers) / size if size else 0.0
    axes.set(xlim=(0, 1.1), xlabel="sparsity", title=f"per-layer sparsity ({overall:.1%} over sparsified layers)")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _mask_change(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot([row["step"] for row in rows], [row["mask_change"] for row in rows], marker=".")
    axes.set(xlabel="step", ylabel="fraction of active weights", title="mask change since previous eval")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_run(rows: Sequence[dict[str, Any]], stats: Sequence[LayerStats], folder: str | Path) -> list[Path]:
    """Writes ``curves.png``, ``layer_sparsity.png`` and ``mask_change.png`` into ``folder``.

    Args:
      rows: the metrics rows (see :data:`~jaxsparse.training.COLUMNS`).
      stats: the final per-leaf statistics (:func:`jaxsparse.layer_stats`).
      folder: where to write.

    Returns:
      The paths written.
    """
    folder = Path(folder)
    return [
        _curves(rows, folder / "curves.png"),
        _layer_sparsity(stats, folder / "layer_sparsity.png"),
        _mask_change(rows, folder / "mask_change.png"),
    ]
