"""The value of an algorithm's regulariser, for logging."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.masks import Params
from jaxsparse.transform import find_sparsify_state

__all__ = ["penalty"]


def penalty(params: Params, state: Any) -> jax.Array:
    """``R_t(theta, m)``: the regulariser's value at the state's step (0 when the algorithm has none).

    Args:
      params: the parameters.
      state: a :func:`~jaxsparse.sparsify` state, or any optax state holding one.

    Returns:
      A float32 scalar; jittable.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jaxsparse as jsp
      >>> params = {"w": jnp.ones((4, 4))}
      >>> tx = jsp.sparsify(optax.sgd(0.1), jsp.top_kast(0.5, 0.5, penalty=0.1), key=jax.random.key(0))
      >>> float(penalty(params, tx.init(params)))  # 0.1 / 2 * 8 active weights of value 1
      0.4000000059604645
    """
    found = find_sparsify_state(state)
    if found is None:
        raise TypeError(f"penalty expects a state that holds sparsify's state, got {type(state).__name__}.")
    regularizer = found.algorithm.regularizer
    if regularizer is None:
        return jnp.zeros((), jnp.float32)
    return regularizer.value(params, found.masks, found.plans, found.step)
