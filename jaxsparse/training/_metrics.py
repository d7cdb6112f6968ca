"""The metrics log of a run: one row per evaluation, in ``metrics.jsonl`` and ``metrics.csv``.

Both files always hold the same rows. JSON Lines is the record other tools read back; CSV opens in
a spreadsheet. A resumed run first truncates the log to the checkpoint it restarts from, so rows
written after that checkpoint by the killed process are replaced, never duplicated.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxsparse.masks import Masks

__all__ = ["COLUMNS", "ROUND_COLUMN", "MetricsLog", "mask_change", "round_results"]

COLUMNS = ("step", "train_loss", "test_loss", "test_accuracy", "sparsity", "mask_change", "wall_time")
"""The columns of a metrics row.

``train_loss`` is the mean training loss since the previous evaluation; ``sparsity`` the fraction
of inactive sparsified weights; ``mask_change`` the fraction of weights active at the previous
evaluation that are inactive now (:func:`mask_change`); ``wall_time`` the seconds so far on the
training loop's clock (compilation, evaluations and checkpoints included; start-up not).
"""
ROUND_COLUMN = "round"
"""The extra column of a run with pruning rounds (IMP): the round of the row's last training step."""


def mask_change(previous: Masks, current: Masks) -> float:
    """The fraction of previously active weights that are no longer active.

    ``|m_prev & ~m_now| / |m_prev|`` over all sparsified leaves. Drop-and-grow keeps the count, so
    this is also the fraction of active weights that were newly grown; for magnitude pruning it is
    the fraction pruned. ``None`` leaves (dense) are skipped; no masks at all gives 0.

    Example:
      >>> mask_change({"w": np.array([True, True, False, False])}, {"w": np.array([True, False, True, False])})
      0.5
    """
    dropped = active = 0
    for old, new in zip(_mask_leaves(previous), _mask_leaves(current), strict=True):
        dropped += int(np.count_nonzero(old & ~new))
        active += int(np.count_nonzero(old))
    return dropped / active if active else 0.0


def round_results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each round (the round's trained network at its sparsity); ``[]`` without rounds.

    Example:
      >>> rows = [dict(step=5, round=0, test_accuracy=0.8), dict(step=10, round=0, test_accuracy=0.9),
      ...         dict(step=16, round=1, test_accuracy=0.85)]
      >>> [row["step"] for row in round_results(rows)]
      [10, 16]
    """
    last: dict[int, dict[str, Any]] = {}
    for row in rows:
        if ROUND_COLUMN in row:
            last[row[ROUND_COLUMN]] = row
    return [last[index] for index in sorted(last)]


def _mask_leaves(masks: Masks) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(masks)]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON Lines log; a last line cut short (a process killed mid-write) is dropped.

    Such a line belongs to an evaluation after the newest checkpoint, which the resumed run repeats.
    """
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
    return rows


class MetricsLog:
    """Appends evaluation rows to ``<folder>/metrics.jsonl`` and ``<folder>/metrics.csv``.

    Example:
      >>> import tempfile
      >>> log = MetricsLog(tempfile.mkdtemp(), keep_until=None)
      >>> log.append(dict(step=10, train_loss=1.0, test_loss=1.1, test_accuracy=0.5, sparsity=0.9,
      ...                 mask_change=0.0, wall_time=1.0))
      >>> [row["step"] for row in log.rows]
      [10]
    """

    def __init__(self, folder: str | Path, *, keep_until: int | None, rounds: bool = False) -> None:
        """Opens the log, keeping the existing rows up to step ``keep_until`` (``None``: start empty).

        With ``rounds`` every row also has the :data:`ROUND_COLUMN`.
        """
        folder = Path(folder)
        self.columns = (*COLUMNS, ROUND_COLUMN) if rounds else COLUMNS
        self.jsonl_path = folder / "metrics.jsonl"
        self.csv_path = folder / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if keep_until is not None and self.jsonl_path.exists():
            self.rows = [row for row in _read_rows(self.jsonl_path) if row["step"] <= keep_until]
        self._rewrite()

    def _rewrite(self) -> None:
        self.jsonl_path.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        with self.csv_path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        """Adds one row (the keys of :data:`COLUMNS`, and the round's if the log has rounds) to both files."""
        if set(row) != set(self.columns):
            raise ValueError(f"a metrics row needs exactly the columns {self.columns}, got {tuple(row)}.")
        self.rows.append(row)
        with self.jsonl_path.open("a") as file:
            file.write(json.dumps(row) + "\n")
        with self.csv_path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.columns).writerow(row)
