"""Masks from scores: keep the best-scored groups of every sparsified leaf, with the layout's exact counts.

Element scores (one per weight, larger means "keep") are reduced to one per group by the layer's
structure and selected with the library's exact top-k, so counts are exact and ties are broken by a
keyed hash of the position (:mod:`jaxsparse.selection`):

* ``scope="layer"``: each layer keeps its plan's count per row (:meth:`Structure.select`);
* ``scope="global"``: one threshold over every layer keeps the layout's total (the selection of
  :func:`~jaxsparse.selection.global_top_k_masks`).

Signed (or additive) scores are reduced to the *sum* over a group rather than the L2 norm that
:meth:`Structure.group_scores` takes for floats: a norm forgets the sign, and criteria that
estimate the change of the loss when a group is removed (GraSP's first-order term, OBD's diagonal
quadratic) add up over the group's weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.masks._layout import LayerPlan, SparsityLayout
from jaxsparse.masks._masks import Masks, Params, masks_from_leaves
from jaxsparse.selection import order_keys, top_k_mask

__all__ = ["REDUCTIONS", "group_scores", "layout_counts", "masks_from_scores", "select", "tie_key"]

# Tie seeds come from their own stream of the key, so the same key can also draw random scores
# (``fold_in(key, leaf_index)``, as :func:`~jaxsparse.masks.random_masks` draws).
_TIE_STREAM = 0x7FFFFFFE


REDUCTIONS: tuple[str, ...] = ("norm", "sum", "none")
"""How :func:`masks_from_scores` turns a group's element scores into one."""


def tie_key(key: jax.Array) -> jax.Array:
    """The key that orders ties, from its own stream of ``key``."""
    return jax.random.fold_in(key, _TIE_STREAM)


def group_scores(plan: LayerPlan, scores: jax.Array, summed: bool = False) -> jax.Array:
    """Element scores of the parameter's shape reduced to the plan's mask shape.

    Non-negative floating scores take the group's L2 norm and ``uint32`` draws its maximum
    (:meth:`Structure.group_scores`); ``summed`` scores take the group's sum.
    """
    if not summed or plan.group_size == 1:
        return plan.structure.group_scores(scores)
    # sum(s) = ||sqrt(s+)||^2 - ||sqrt(s-)||^2: the structure's own grouping, without the sign lost.
    scores = scores.astype(jnp.float32)
    positive = plan.structure.group_scores(jnp.sqrt(jnp.maximum(scores, 0.0)))
    negative = plan.structure.group_scores(jnp.sqrt(jnp.maximum(-scores, 0.0)))
    return jnp.square(positive) - jnp.square(negative)


def select(
    plans: Sequence[LayerPlan],
    scores: Sequence[jax.Array],
    counts: jax.typing.ArrayLike,
    candidates: Sequence[jax.Array | None],
    scope: str,
    tie_key: jax.Array,
) -> list[jax.Array]:
    """The masks keeping the largest group ``scores`` of the sparsified layers ``plans``.

    Args:
      plans: the sparsified layers' plans.
      scores: one group-score array per plan (mask-shaped).
      counts: ``scope="global"``: the total to keep (a scalar); ``"layer"``: one count per row of
        each layer (shape ``(len(plans),)``).
      candidates: per layer, the entries that may be kept (``None``: all).
      scope: ``"global"`` or ``"layer"``.
      tie_key: orders ties: its bits for the pooled selection, ``fold_in(tie_key, j)`` for layer ``j``.

    Returns:
      One ``bool`` mask per plan.
    """
    if scope == "global":
        return _pooled(scores, counts, candidates, jax.random.bits(tie_key, (), jnp.uint32))
    counts = jnp.asarray(counts, jnp.int32)
    return [
        plan.structure.select(
            score,
            counts[j],
            candidates=candidate,
            tie_seed=jax.random.bits(jax.random.fold_in(tie_key, j), (), jnp.uint32),
        )
        for j, (plan, score, candidate) in enumerate(zip(plans, scores, candidates, strict=True))
    ]


def _pooled(scores: Sequence[jax.Array], count, candidates: Sequence[jax.Array | None], seed) -> list[jax.Array]:
    """:func:`~jaxsparse.selection.global_top_k_masks`, on the scores concatenated into one array.

    The same selection, tie order included (a tie's priority hashes its position in the
    concatenation either way), but one radix select instead of one histogram per layer and pass:
    with tens of layers it compiles several times faster, and a copy of the scores costs nothing
    next to the scoring.
    """
    keys = jnp.concatenate([order_keys(s).ravel() for s in scores])
    valid = jnp.concatenate(
        [jnp.ones(s.size, bool) if c is None else c.ravel() for s, c in zip(scores, candidates, strict=True)]
    )
    kept = top_k_mask(keys, count, candidates=valid, tie_seed=seed)
    parts = jnp.split(kept, np.cumsum([s.size for s in scores])[:-1])
    return [part.reshape(s.shape) for part, s in zip(parts, scores, strict=True)]


def layout_counts(plans: Sequence[LayerPlan | None], scope: str):
    """The layout's counts for :func:`select`: the total for ``global``, each layer's per-row count for ``layer``."""
    chosen = [plan for plan in plans if plan is not None]
    if scope == "global":
        return sum(plan.active for plan in chosen)
    return np.array([plan.row_active for plan in chosen], np.int32)


@functools.partial(jax.jit, static_argnames=("layout", "scope", "reduction"))
def masks_from_scores(
    layout: SparsityLayout,
    params: Params,
    scores: Params,
    *,
    key: jax.Array,
    scope: str = "layer",
    reduction: str = "norm",
) -> Masks:
    """Masks keeping the best-scored groups of every sparsified leaf, with exactly the layout's counts.

    Element scores are reduced to one per group (``reduction="norm"``: the L2 norm, or for ``uint32``
    draws the maximum; ``"sum"``: the sum, for additive or signed criteria; ``"none"``: the scores
    are already one per group, of each leaf's mask shape) and the largest kept: ``scope="layer"``
    keeps each layer's ``row_active`` per row, ``scope="global"`` one threshold keeping
    ``sum_l active_l`` in total (refused for row-wise structures by the callers that accept a
    scope). Ties are broken by a hash of the position keyed
    by ``key``: the same key gives the same masks.

    Args:
      layout: which leaves are sparsified, and their counts.
      params: the parameter pytree (only shapes are used).
      scores: a pytree like ``params`` with one score per weight at each sparsified leaf (other
        leaves may be ``None`` or anything; they are not read).
      key: orders ties (keyword-only).
      scope: ``"layer"`` or ``"global"``.
      reduction: how a group's element scores become one: ``"norm"``, ``"sum"`` or ``"none"``.

    Returns:
      Masks as an algorithm's ``init_masks`` returns them: ``bool`` arrays of each sparsified leaf's
      group-level mask shape, ``None`` at dense leaves.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jnp.zeros((2, 2))}
      >>> scores = {"w": jnp.array([[0.5, -2.0], [1.0, 0.1]])}
      >>> masks_from_scores(SparsityLayout(0.5, "uniform"), params, scores, key=jax.random.key(0))["w"].tolist()
      [[True, False], [True, False]]
    """
    plans = layout.plan(params)
    indices = [i for i, plan in enumerate(plans) if plan is not None]
    leaves = jax.tree.structure(params).flatten_up_to(scores)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(map(repr, REDUCTIONS))}.")
    grouped = [
        leaves[i] if reduction == "none" else group_scores(plans[i], leaves[i], reduction == "sum") for i in indices
    ]
    kept = select(
        [plans[i] for i in indices],
        grouped,
        layout_counts(plans, scope),
        [None] * len(indices),
        scope,
        tie_key(key),
    )
    full = [None] * len(plans)
    for i, mask in zip(indices, kept, strict=True):
        full[i] = mask
    return masks_from_leaves(params, full)
