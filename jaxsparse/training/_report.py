"""The final report of a run (``summary.json``): accuracy, sparsity per layer, FLOPs, provenance."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

import jaxsparse as jsp
from jaxsparse.inspection import LayerStats
from jaxsparse.training._config import Config
from jaxsparse.training._metrics import round_results

__all__ = ["git_commit", "run_report", "versions"]

_DISTRIBUTIONS = ("jaxsparse", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def versions() -> dict[str, str | None]:
    """Python's and the installed versions of the packages a run depends on (``None``: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The commit of the jaxsparse source tree, with ``+dirty`` if the package has uncommitted changes.

    Only the package's own files count: a benchmark writing its results into the same checkout
    does not make the code that produced them dirty.

    ``None`` when jaxsparse is not running from a git checkout (e.g. installed from a wheel) or
    git is unavailable.
    """
    source = Path(jsp.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def run_report(
    config: Config,
    *,
    rows: Sequence[dict[str, Any]],
    stats: Sequence[LayerStats],
    table: str,
    flops: dict[str, float],
    wall_time: float,
    init: dict[str, Any] | None = None,
    regularizer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The contents of ``summary.json``.

    Args:
      config: the run's settings.
      rows: the metrics rows, one per evaluation.
      stats: the final per-leaf statistics of the weights used at inference.
      table: ``jsp.summary``'s table of the same.
      flops: dense FLOPs and the inference and training FLOPs ratios vs dense.
      wall_time: seconds on the training loop's clock: compiling the step, evaluations and
        checkpoints included, start-up and this report not; summed over the sessions of a resumed run.
      init: how ``--init`` chose the initial masks (criterion, scope, the number and names of the
        layers it left without an active weight); ``None``: the method's own.
      regularizer: what the algorithm's regulariser reports at the end
        (:meth:`~jaxsparse.regularizers.Regularizer.summary`; SSL: ``zero_groups``, per layer and
        group type the number of all-zero groups and of groups); ``None``: nothing.

    Returns:
      A JSON-serialisable dict: the final metrics row, the best test accuracy, the total and
      per-layer sparsity, the FLOPs, wall time, versions, git commit and device; for a run with
      pruning rounds (IMP), ``rounds``: each round's step, sparsity and test accuracy at its end;
      ``regularizer`` when the regulariser reports something.
    """
    sparsified = [s for s in stats if s.sparsified]
    size = sum(s.size for s in sparsified)
    return {
        "config": config.to_dict(),
        "final": dict(rows[-1]),
        "best_test_accuracy": max(row["test_accuracy"] for row in rows),
        "sparsity": 1.0 - sum(s.active for s in sparsified) / size if size else 0.0,
        "layers": [{**dataclasses.asdict(s), "shape": list(s.shape), "sparsity": s.sparsity} for s in stats],
        "summary_table": table,
        "flops": flops,
        "wall_time": wall_time,
        "versions": versions(),
        "git_commit": git_commit(),
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind} x {jax.device_count()}",
        **_rounds(rows),
        **({} if init is None else {"init": init}),
        **({} if regularizer is None else {"regularizer": regularizer}),
    }


def _rounds(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    results = round_results(list(rows))
    if not results:
        return {}
    keys = ("round", "step", "sparsity", "test_accuracy")
    return {"rounds": [{key: row[key] for key in keys} for row in results]}
