"""The parameters the forward pass must see, with the right gradient flowing back.

* Masked algorithms (static, SET, RigL, magnitude pruning): the value is ``theta * m`` and the
  gradient is passed straight through, dense: ``d/d theta = dL/d(theta * m)``. RigL needs exactly
  this dense gradient to rank inactive positions, and the optimizer wrapper restricts it to the
  mask itself.
* Top-KAST: the value is ``theta * A`` and the gradient is restricted to ``B``:
  ``d/d theta = 1_B * dL/d(theta * A)`` (Jayakumar et al. 2020, eq. 3).

Which one applies is the algorithm's own choice (``SparseAlgorithm.forward_params``), read from the
state. So whether the user differentiates with respect to ``forward_params(...)``'s output or
through it, the wrapper receives what the algorithm needs.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxsparse.masks import Masks, Params, check_masks, mask_leaves, masked
from jaxsparse.transform._state import find_sparsify_state

__all__ = ["forward_params"]


def forward_params(params: Params, state: Any) -> Params:
    """The parameters to feed the forward pass: ``theta * m`` (Top-KAST: ``theta * A``).

    Args:
      params: the (dense-storage) parameters.
      state: a :func:`~jaxsparse.sparsify` state, any optax state holding one, or a mask tree
        shaped like the params (then the gradient is passed straight through).

    Returns:
      Parameters of the same structure and dtypes; differentiating through them yields the dense
      gradient (masked algorithms) or the ``B``-restricted gradient (Top-KAST).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w, m = jnp.array([2.0, 3.0]), jnp.array([True, False])
      >>> forward_params({"w": w}, {"w": m})["w"].tolist()
      [2.0, 0.0]
      >>> jax.grad(lambda w: forward_params({"w": w}, {"w": m})["w"].sum())(w).tolist()
      [1.0, 1.0]
    """
    found = find_sparsify_state(state)
    if found is not None:
        return found.algorithm.forward_params(params, found.masks)
    masks: Masks = state
    check_masks(params, masks)
    leaves = [
        p if m is None else masked(p, m, None)
        for p, m in zip(jax.tree.leaves(params), mask_leaves(params, masks), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)
