"""Inspecting sparsity: per-layer and total counts, and a readable summary table.

These functions read concrete arrays and return Python numbers; call them outside ``jit``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxsparse._variables import unboxed
from jaxsparse.masks import Params, check_masks, leaf_name, mask_leaves
from jaxsparse.transform import resolve_masks

__all__ = ["LayerStats", "layer_stats", "summary", "total_sparsity"]


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Counts for one parameter leaf.

    Attributes:
      name: the ``/``-joined key path.
      shape: the parameter's shape.
      size: number of weights ``N_l``.
      active: ``True`` entries of the mask (``size`` for dense leaves).
      nonzero: non-zero parameter values.
      sparsified: whether the leaf carries a mask.
    """

    name: str
    shape: tuple[int, ...]
    size: int
    active: int
    nonzero: int
    sparsified: bool

    @property
    def sparsity(self) -> float:
        """``1 - active / size``."""
        return 1.0 - self.active / self.size if self.size else 0.0


def layer_stats(params: Params, state_or_masks: Any) -> list[LayerStats]:
    """Per-leaf counts of mask entries and non-zero values, in flattening order.

    ``state_or_masks`` is a ``sparsify`` state (found anywhere inside an enclosing state) or a mask
    tree. flax nnx states are read unboxed, so leaves are named ``hidden/kernel``, not ``hidden/kernel/value``.
    """
    params = unboxed(params)
    masks = resolve_masks(state_or_masks)
    check_masks(params, masks)
    stats = []
    for (path, param), mask in zip(
        jax.tree_util.tree_leaves_with_path(params), mask_leaves(params, masks), strict=True
    ):
        values = np.asarray(param)
        stats.append(
            LayerStats(
                name=leaf_name(path),
                shape=tuple(values.shape),
                size=int(values.size),
                active=int(values.size if mask is None else np.count_nonzero(np.asarray(mask))),
                nonzero=int(np.count_nonzero(values)),
                sparsified=mask is not None,
            )
        )
    return stats


def total_sparsity(state_or_masks: Any) -> float:
    """The fraction of inactive entries over all sparsified leaves."""
    leaves = [np.asarray(m) for m in jax.tree.leaves(resolve_masks(state_or_masks))]
    size = sum(m.size for m in leaves)
    return 1.0 - sum(int(np.count_nonzero(m)) for m in leaves) / size if size else 0.0


def summary(params: Params, state_or_masks: Any) -> str:
    """A table of every leaf's shape, size, active count, non-zeros and sparsity, with totals.

    Example:
      >>> import jax.numpy as jnp
      >>> print(summary({"w": jnp.array([[1.0, 0.0]])}, {"w": jnp.array([[True, False]])}))
      layer       shape   size  active  nonzero  sparsity
      w           (1, 2)     2       1        1    50.00%
      sparsified             2       1        1    50.00%
      all                    2       1        1    50.00%
    """
    stats = layer_stats(params, state_or_masks)

    def total(rows: list[LayerStats], name: str) -> list[str]:
        size, active = sum(r.size for r in rows), sum(r.active for r in rows)
        nonzero = sum(r.nonzero for r in rows)
        return [name, "", str(size), str(active), str(nonzero), f"{100 * (1 - active / size):.2f}%" if size else "-"]

    rows = [["layer", "shape", "size", "active", "nonzero", "sparsity"]]
    rows += [
        [
            s.name,
            str(s.shape),
            str(s.size),
            str(s.active),
            str(s.nonzero),
            f"{100 * s.sparsity:.2f}%" if s.sparsified else "dense",
        ]
        for s in stats
    ]
    sparsified = [s for s in stats if s.sparsified]
    if sparsified:  # a dense model has no sparsified total to report
        rows.append(total(sparsified, "sparsified"))
    rows.append(total(stats, "all"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
