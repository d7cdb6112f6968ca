"""``fit_layout``: the layout whose exact per-layer counts are those of given masks."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np

from jaxsparse.masks import LayerPlan, Masks, Params, SparsityLayout, check_masks, mask_leaves

__all__ = ["fit_layout"]

_NUDGES = 64


def _sparsity_keeping(plan: LayerPlan, active: int) -> float:
    """A float ``S`` in ``[0, 1]`` with ``structure.row_count(S, row_size) == active``.

    ``(row_size - active) / row_size`` can round so that ``floor(S * row_size)`` lands one short;
    it is nudged by single ulps until the layout's own count rule gives ``active`` back.
    """
    row = plan.row_size
    sparsity = (row - active) / row
    for _ in range(_NUDGES):
        try:
            got = plan.structure.row_count(sparsity, row)
        except ValueError:
            break  # the structure refuses this count (constant fan-in's k = 0): the layout says why below
        if got == active:
            return float(sparsity)
        sparsity = float(np.nextafter(sparsity, 1.0 if got > active else 0.0))
    return float(min(max(sparsity, 0.0), 1.0))


def fit_layout(layout: SparsityLayout, params: Params, masks: Masks) -> SparsityLayout:
    """``layout`` with a ``layer_sparsity`` override per sparsified layer equal to its count in ``masks``.

    An algorithm built with the result (``Static(layout=...)``, or a factory given
    ``layer_sparsity=fitted.layer_sparsity``) plans exactly the masks' per-layer counts, so
    ``sparsify(..., masks=masks)``, which checks them (``floor(S_l N_l)`` zeros), accepts masks
    whose counts differ from the distribution's, as global pruning at initialisation gives. Each
    override is an anchored pattern ``^name$``; they replace the layout's own overrides. A layer
    with no active entry gets sparsity ``1.0`` (see :func:`layer_collapse`). Layers whose
    structure fixes their count (N:M) keep it, and are checked against it.

    Args:
      layout: the layout the masks were made for (which leaves, which structure).
      params: the parameter pytree.
      masks: group-level masks for ``layout.plan(params)``, e.g. from :func:`prune_at_init`.

    Returns:
      The fitted layout.

    Raises:
      ValueError: the masks do not fit the layout's leaves and mask shapes; a row-wise layer
        (constant fan-in) has different counts in different rows; an N:M layer breaks its pattern.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxsparse.masks import SparsityLayout
      >>> params = {"a": jnp.ones((2, 5)), "b": jnp.ones((5, 2))}
      >>> masks = {"a": jnp.arange(10).reshape(2, 5) < 9, "b": jnp.arange(10).reshape(5, 2) < 1}
      >>> fitted = fit_layout(SparsityLayout(0.5, "uniform"), params, masks)
      >>> [plan.active for plan in fitted.plan(params)]
      [9, 1]
    """
    plans = layout.plan(params)
    check_masks(params, masks, plans)
    overrides = []
    for plan, mask in zip(plans, mask_leaves(params, masks), strict=True):
        if plan is None:
            continue
        rows = np.asarray(plan.structure.row_sums(jnp.asarray(mask)))
        if plan.structure.fixed_sparsity is not None:
            if (rows != plan.row_active).any():
                raise ValueError(
                    f"the mask of {plan.name!r} keeps {int(rows[rows != plan.row_active][0])} entries in a row, "
                    f"but its structure {plan.structure!r} fixes {plan.row_active} of every {plan.row_size}."
                )
            continue
        if (rows != rows[0]).any():
            raise ValueError(
                f"the mask of {plan.name!r} keeps between {rows.min()} and {rows.max()} entries per row, but its "
                f"structure {plan.structure!r} gives every row one count: select it with scope='layer'."
            )
        overrides.append((f"^{re.escape(plan.name)}$", _sparsity_keeping(plan, int(rows[0]))))
    fitted = dataclasses.replace(layout, layer_sparsity=tuple(overrides))
    for plan, want in zip(fitted.plan(params), mask_leaves(params, masks), strict=True):
        if plan is not None and plan.active != int(np.sum(np.asarray(want))):
            raise AssertionError(f"fit_layout: {plan.name!r} plans {plan.active} entries, the mask has another count.")
    return fitted
