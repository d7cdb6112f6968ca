"""The parameters the forward pass must see, with the right gradient flowing back.

* Masked algorithms (static, SET, RigL, magnitude pruning): the value is ``theta * m`` and the
  gradient is passed straight through, dense: ``d/d theta = dL/d(theta * m)``. RigL needs exactly
  this dense gradient to rank inactive positions, and the optimizer wrapper restricts it to the
  mask itself.
* Top-KAST (a :class:`~jaxsparse.masks.MaskPair`): the value is ``theta * A`` and the gradient is
  restricted to ``B``: ``d/d theta = 1_B * dL/d(theta * A)`` (Jayakumar et al. 2020, eq. 3).

So whether the user differentiates with respect to ``forward_params(...)``'s output or through it,
the wrapper receives what the algorithm needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.masks import MaskPair, Masks, Params, check_masks, forward_masks
from jaxsparse.transform._sparsify import SparsifyState

__all__ = ["forward_params"]


@jax.custom_vjp
def _masked(param: jax.Array, value_mask: jax.Array, grad_mask: jax.Array | None) -> jax.Array:
    return jnp.where(value_mask, param, jnp.zeros((), param.dtype))


def _masked_fwd(param, value_mask, grad_mask):
    return _masked(param, value_mask, grad_mask), grad_mask


def _masked_bwd(grad_mask, cotangent):
    if grad_mask is not None:
        cotangent = jnp.where(grad_mask, cotangent, jnp.zeros((), cotangent.dtype))
    return cotangent, None, None


_masked.defvjp(_masked_fwd, _masked_bwd)


def forward_params(params: Params, state: SparsifyState | Masks | MaskPair) -> Params:
    """The parameters to feed the forward pass: ``theta * m`` (Top-KAST: ``theta * A``).

    Args:
      params: the (dense-storage) parameters.
      state: a :func:`~jaxsparse.sparsify` state, or masks directly.

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
    masks = state.masks if isinstance(state, SparsifyState) else state
    value_masks = forward_masks(masks)
    check_masks(params, value_masks)
    if isinstance(masks, MaskPair):
        return jax.tree.map(
            lambda p, a, b: p if a is None else _masked(p, a, b),
            params,
            masks.forward,
            masks.backward,
            is_leaf=lambda x: x is None,
        )
    return jax.tree.map(lambda p, m: p if m is None else _masked(p, m, None), params, value_masks)
