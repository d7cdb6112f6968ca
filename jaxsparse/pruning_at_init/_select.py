"""Selecting masks from element scores: group scores, layer or global scope, and SynFlow's schedule.

Element scores (one per weight, larger means "keep") are reduced to one per group by the layer's
structure and selected with the library's exact top-k, so counts are exact and ties are broken by a
keyed hash of the position (:mod:`jaxsparse.selection`):

* ``scope="layer"``: each layer keeps ``count`` entries per row (:meth:`Structure.select`);
* ``scope="global"``: one threshold over every layer keeps ``count`` entries in total (the
  selection of :func:`~jaxsparse.selection.global_top_k_masks`).

Signed scores (GraSP's) are reduced to the *sum* over a group rather than the L2 norm that
:meth:`Structure.group_scores` takes for floats: a norm forgets the sign, and the sign is what
GraSP ranks by. The first-order change of the criterion when a whole group is removed is the sum
of its weights' terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.masks import LayerPlan
from jaxsparse.selection import order_keys, top_k_mask

__all__ = ["exponential_counts", "group_scores", "select"]


def group_scores(plan: LayerPlan, scores: jax.Array, signed: bool = False) -> jax.Array:
    """Element scores of the parameter's shape reduced to the plan's mask shape.

    Non-negative floating scores take the group's L2 norm and ``uint32`` draws its maximum
    (:meth:`Structure.group_scores`); ``signed`` scores take the group's sum.
    """
    if not signed or plan.group_size == 1:
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
    at initialisation.
    """
    keys = jnp.concatenate([order_keys(s).ravel() for s in scores])
    valid = jnp.concatenate(
        [jnp.ones(s.size, bool) if c is None else c.ravel() for s, c in zip(scores, candidates, strict=True)]
    )
    kept = top_k_mask(keys, count, candidates=valid, tie_seed=seed)
    parts = jnp.split(kept, np.cumsum([s.size for s in scores])[:-1])
    return [part.reshape(s.shape) for part, s in zip(parts, scores, strict=True)]


def exponential_counts(active: int, size: int, rounds: int) -> np.ndarray:
    """Entries kept after each of ``rounds`` rounds: density ``d^(k/n)`` after round ``k``, ``d = active/size``.

    The count after round ``k`` is ``size - floor((1 - d^(k/n)) size)``, kept between ``active`` and
    ``size``; the last round keeps exactly ``active``, so float rounding never leaves the final
    masks off the layout's counts (Tanaka et al. 2020's exponential schedule).

    Example:
      >>> exponential_counts(10, 1000, 2).tolist()
      [100, 10]
    """
    k = np.arange(1, rounds + 1, dtype=np.float64)
    density = (active / size) ** (k / rounds)
    kept = size - np.floor((1.0 - density) * size).astype(np.int64)
    kept = np.clip(kept, active, size)
    kept[-1] = active
    return kept
