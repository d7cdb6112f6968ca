"""Drop-and-grow dynamic sparse training: SET and RigL.

At a mask-update step ``t``, in each sparsified layer with ``n`` active weights and drop fraction
``f_t``:

1. **drop** ``d = floor(n * f_t)`` weights: keep the top ``n - d`` active weights by the drop score
   (``|theta|``);
2. **grow** ``d`` weights: among every position not kept (the just-dropped included, as in the
   RigL reference), take the top ``d`` by the grow score (``|dL/d(theta*m)|`` for RigL, uniform
   random for SET).

The active count is exactly ``n`` before and after. A weight dropped and regrown in the same update
is not "new": it keeps its value and optimizer slots.

References:
  Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications 2018 (SET).
  Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020, Section 3 (RigL).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._base import SparseAlgorithm, layer_key
from jaxsparse.masks import Masks, Params, leaf_name, masks_from_leaves
from jaxsparse.schedules import Schedule
from jaxsparse.scores import Score, magnitude
from jaxsparse.selection import top_k_mask

__all__ = ["DropAndGrow", "drop_count"]


def drop_count(n_active: int, fraction: jax.typing.ArrayLike) -> jax.Array:
    """``floor(n_active * f)``, clipped to ``[0, n_active]`` (an int32 scalar)."""
    dropped = jnp.floor(jnp.asarray(fraction, jnp.float32) * n_active).astype(jnp.int32)
    return jnp.clip(dropped, 0, n_active)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DropAndGrow(SparseAlgorithm):
    """Drop by ``drop_score``, regrow by ``grow_score``, at a scheduled fraction.

    Attributes:
      drop_fraction: schedule ``f_t`` of the fraction of active weights replaced per update.
      grow_score: ranks inactive positions for growth.
      drop_score: ranks active weights for keeping (default ``|theta|``).
      name: ``"set"`` or ``"rigl"`` for the built-in factories.
    """

    name: str = "drop_and_grow"
    drop_fraction: Schedule
    grow_score: Score
    drop_score: Score = magnitude

    def update_rule(self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array) -> Masks:
        """Drop the ``floor(n f_t)`` lowest-scoring active weights per layer and grow as many."""
        param_leaves = jax.tree.leaves(params)
        grad_leaves = _grad_leaves(params, grads)
        mask_leaves = jax.tree.leaves(masks, is_leaf=lambda x: x is None)
        fraction = self.drop_fraction(step)
        new_leaves = []
        for index, plan in enumerate(self.plan(params)):
            if plan is None:
                new_leaves.append(None)
                continue
            param, grad, mask = param_leaves[index], grad_leaves[index], mask_leaves[index]
            if plan.zeros == 0:  # a layer the distribution saturated to dense stays dense
                new_leaves.append(mask)
                continue
            drop_key, grow_key, keep_ties, grow_ties = jax.random.split(layer_key(key, index), 4)
            dropped = drop_count(plan.active, fraction)
            kept = top_k_mask(
                self.drop_score(param, grad, drop_key),
                plan.active - dropped,
                candidates=mask,
                tie_seed=jax.random.bits(keep_ties, (), jnp.uint32),
            )
            grown = top_k_mask(
                self.grow_score(param, grad, grow_key),
                dropped,
                candidates=~kept,
                tie_seed=jax.random.bits(grow_ties, (), jnp.uint32),
            )
            new_leaves.append(kept | grown)
        return masks_from_leaves(params, new_leaves)


def _grad_leaves(params: Params, grads: Params | None) -> list[jax.Array | None]:
    """Gradient leaves aligned with the parameter leaves (``None`` when no grads are given)."""
    n_leaves = len(jax.tree.leaves(params))
    if grads is None:
        return [None] * n_leaves
    if jax.tree.structure(grads) != jax.tree.structure(params):
        raise ValueError(
            "grads do not match params: pass the gradient of the loss with respect to the same "
            f"parameter pytree (got structure {jax.tree.structure(grads)}, expected "
            f"{jax.tree.structure(params)})."
        )
    for (path, p), g in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(grads), strict=True):
        if jnp.shape(g) != jnp.shape(p):
            raise ValueError(f"gradient of {leaf_name(path)!r} has shape {jnp.shape(g)}, expected {jnp.shape(p)}.")
    return jax.tree.leaves(grads)
