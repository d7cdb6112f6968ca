"""Resetting per-parameter optimizer slots at positions whose mask changed.

A reset slot takes the value the optimizer's own ``init`` gives it: 0 for momentum and Adam's
moments, ``initial_accumulator_value`` for Adagrad, the parameter itself for look-ahead copies.
So a newly grown weight starts exactly as a weight of a freshly initialised optimizer would.

optax states mirror the parameter tree wherever they keep per-parameter statistics (momentum,
Adam's ``mu``/``nu``, ``MultiSteps``' accumulated gradients, ...), whatever wraps them (``chain``,
``inject_hyperparams``, ``MultiSteps``, ``masked``). So a state leaf is a *slot* of parameter ``P``
exactly when

* its key path ends with ``P``'s key path, and
* it has ``P``'s shape.

That rule finds slots in any optax state without knowing its type. Leaves that summarise a
parameter with another shape are left alone: Adafactor's factored second moments (``v_row``,
``v_col``) are row and column statistics shared by many weights, so zeroing them for one grown
weight would disturb its neighbours; its unfactored ``v`` (for small parameters) and its momentum
are parameter-shaped and are reset.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsparse.masks import Masks, Params, mask_leaves

__all__ = ["reset_slots", "slot_owners"]


def slot_owners(state: Any, params: Params) -> list[jax.tree_util.KeyPath | None]:
    """For each leaf of ``state``, the key path of the parameter it is a slot of, or ``None``.

    A leaf is a slot of parameter ``P`` when its key path ends with ``P``'s and it has ``P``'s
    shape (the longest such suffix wins). Works on arrays and on ``jax.ShapeDtypeStruct`` trees,
    so it can run on ``jax.eval_shape(tx.init, params)``.

    Args:
      state: any pytree, e.g. an optax state or a :class:`~jaxsparse.transform.SparsifyState`.
      params: the parameter pytree (arrays or shape structs).

    Returns:
      One entry per leaf of ``state``, in ``jax.tree.leaves`` order.
    """
    shapes = {path: tuple(jnp.shape(param)) for path, param in jax.tree_util.tree_leaves_with_path(params)}

    def owner(path, leaf):
        shape = tuple(jnp.shape(leaf))
        if not shape:  # counts, keys, scalar hyperparameters
            return None
        for start in range(len(path) + 1):
            if shapes.get(path[start:]) == shape:
                return path[start:]
        return None

    return [owner(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)]


def reset_slots(
    opt_state: optax.OptState, fresh_state: optax.OptState, params: Params, positions: Masks
) -> optax.OptState:
    """Resets every parameter-shaped optimizer slot to its fresh value where ``positions`` is set.

    Args:
      opt_state: any optax state.
      fresh_state: the same optimizer's ``init(params)`` (same structure as ``opt_state``).
      params: the parameters the state belongs to (for paths and shapes).
      positions: mask tree (``None`` at dense leaves) of the positions to reset, shaped like the params.

    Returns:
      The state with those slots reset, dtypes and structure unchanged.
    """
    where_by_path = {
        path: where
        for (path, _), where in zip(
            jax.tree_util.tree_leaves_with_path(params), mask_leaves(params, positions), strict=True
        )
    }

    def reset(leaf, fresh, owner):
        if owner is None or where_by_path[owner] is None:
            return leaf
        return jnp.where(where_by_path[owner], jnp.asarray(fresh, leaf.dtype), leaf)

    leaves, treedef = jax.tree.flatten(opt_state)
    owners = slot_owners(opt_state, params)
    return jax.tree.unflatten(
        treedef, [reset(*entry) for entry in zip(leaves, jax.tree.leaves(fresh_state), owners, strict=True)]
    )
