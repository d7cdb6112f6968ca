"""Per-position integers computed elementwise: flat indices and their hashes.

Both are built from per-axis iotas, never as ``iota(size).reshape(shape)``: a reshape of a sharded
array can force XLA to gather it, while these carry the array's own sharding, so selection and
fingerprints of a sharded kernel stay local to each shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse._explicit import explicit_sharding

__all__ = ["flat_positions", "mix32"]


def mix32(x: jax.Array) -> jax.Array:
    """A bijection of ``uint32`` (the MurmurHash3 finaliser): orders tied positions, mixes fingerprints."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def flat_positions(like: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Row-major flat index of every position of ``like``, sharded like ``like``.

    ``sum_d iota_d * stride_d``; under a mesh with explicit axes the iotas are created with
    ``like``'s sharding, elsewhere XLA's propagation shards them like ``like``.
    """
    sharding = explicit_sharding(like)
    position = jnp.zeros_like(like, dtype)
    stride = 1
    for axis in reversed(range(like.ndim)):
        iota = lax.broadcasted_iota(dtype, like.shape, axis, out_sharding=sharding)
        position = position + iota * jnp.asarray(stride, dtype)
        stride *= like.shape[axis]
    return position
