"""Scores that rank weights for dropping, growing and pruning.

A score maps one parameter leaf, its gradient and a key to an array of the leaf's shape: larger
means "more worth keeping/growing". Floating scores are ranked exactly (NaN lowest, see
:mod:`jaxsparse.selection`); ``uint32`` scores are ranked as unsigned integers.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

from jaxsparse._explicit import explicit_sharding

__all__ = ["Score", "gradient_magnitude", "magnitude", "random"]


class Score(Protocol):
    """``score(param, grad, key) -> array shaped like param``."""

    def __call__(self, param: jax.Array, grad: jax.Array | None, key: jax.Array) -> jax.Array: ...


def magnitude(param: jax.Array, grad: jax.Array | None, key: jax.Array) -> jax.Array:
    """``|theta|``: the weight magnitude (SET and RigL drop, magnitude pruning, Top-KAST)."""
    del grad, key
    return jnp.abs(param)


def gradient_magnitude(param: jax.Array, grad: jax.Array | None, key: jax.Array) -> jax.Array:
    """``|dL/d(theta * m)|``: the dense gradient's magnitude (RigL grow, Evci et al. 2020 eq. 2)."""
    del param, key
    if grad is None:
        raise ValueError("gradient_magnitude needs gradients: pass grads= to the mask update.")
    return jnp.abs(grad)


def random(param: jax.Array, grad: jax.Array | None, key: jax.Array) -> jax.Array:
    """Independent uniform ``uint32`` draws: a uniformly random choice (SET grow, Mocanu et al. 2018)."""
    del grad
    # Threefry bits are the same however they are sharded: a sharded run draws what one device would.
    return jax.random.bits(key, jnp.shape(param), jnp.uint32, out_sharding=explicit_sharding(param))
