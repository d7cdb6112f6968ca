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

import jax
import jax.numpy as jnp
import optax

from jaxsparse.masks import Masks, Params

__all__ = ["reset_slots"]


def reset_slots(
    opt_state: optax.OptState, fresh_state: optax.OptState, params: Params, positions: Masks
) -> optax.OptState:
    """Resets every parameter-shaped optimizer slot to its fresh value where ``positions`` is set.

    Args:
      opt_state: any optax state.
      fresh_state: the same optimizer's ``init(params)`` (same structure as ``opt_state``).
      params: the parameters the state belongs to (for paths and shapes).
      positions: mask tree (``None`` at dense leaves) of the positions to reset.

    Returns:
      The state with those slots reset, dtypes and structure unchanged.
    """
    targets = {
        path: (jnp.shape(param), where)
        for (path, param), where in zip(
            jax.tree_util.tree_leaves_with_path(params),
            jax.tree.leaves(positions, is_leaf=lambda x: x is None),
            strict=True,
        )
        if where is not None
    }

    def reset(path, leaf, fresh):
        if not isinstance(leaf, jax.Array) or leaf.ndim == 0:
            return leaf
        for start in range(len(path) + 1):
            target = targets.get(path[start:])
            if target is not None and target[0] == leaf.shape:
                return jnp.where(target[1], jnp.asarray(fresh, leaf.dtype), leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(reset, opt_state, fresh_state)
