"""The masked weight the forward pass sees, with the gradient each algorithm needs flowing back.

``masked(theta, m_value, m_grad)`` is ``theta`` where ``m_value`` is set and exactly ``0``
elsewhere. Its derivative is not the product rule's: it is passed straight through, dense, when
``m_grad`` is ``None`` (``d/d theta = dL/d(theta * m)``, which RigL ranks inactive positions by),
and restricted to ``m_grad`` otherwise (Top-KAST's ``1_B * dL/d(theta * A)``, Jayakumar et al. 2020,
eq. 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["masked"]


@jax.custom_vjp
def masked(param: jax.Array, value_mask: jax.Array, grad_mask: jax.Array | None) -> jax.Array:
    """``theta`` on ``value_mask`` and ``0`` elsewhere; the gradient is restricted to ``grad_mask`` (if any)."""
    return jnp.where(value_mask, param, jnp.zeros((), param.dtype))


def _masked_fwd(param, value_mask, grad_mask):
    return masked(param, value_mask, grad_mask), grad_mask


def _masked_bwd(grad_mask, cotangent):
    if grad_mask is not None:
        cotangent = jnp.where(grad_mask, cotangent, jnp.zeros((), cotangent.dtype))
    return cotangent, None, None


masked.defvjp(_masked_fwd, _masked_bwd)
