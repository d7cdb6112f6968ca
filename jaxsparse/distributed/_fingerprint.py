"""Fingerprints of pytrees, to check that replicas hold bit-identical masks, params and state.

Data-parallel dynamic sparse training fails silently when replicas disagree on a mask: each keeps
training its own sparse network and the averaged gradients stop meaning anything. jaxsparse
derives every mask from replicated inputs (the all-reduced gradients, the params, and a key folded
with the step, never with a device index), so replicas agree by construction; a fingerprint is the
cheap run-time check of that.

The fingerprint of a tree is

.. math::

    F = \\sum_{\\ell} \\sum_i h\\big(h(i \\oplus s_\\ell) + b_{\\ell,i}\\big) \\bmod 2^{32}

over leaves ``l`` and flat positions ``i``, with ``b`` the element's bits as ``uint32``, ``s_l`` a
per-leaf salt and ``h`` the MurmurHash3 finaliser (a bijection). Any single changed element changes
``F``; it is one element-wise pass and one sum (a scalar all-reduce when the leaf is sharded).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse._positions import flat_positions, mix32

__all__ = ["fingerprint", "replicas_agree"]

_SALT = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive leaf indices


def _bits(leaf: jax.Array) -> jax.Array:
    """The element bits of ``leaf`` as ``uint32`` (64-bit elements folded to 32 bits)."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    size = leaf.dtype.itemsize
    if size == 8:
        halves = lax.bitcast_convert_type(leaf, jnp.uint32)
        return halves[..., 0] ^ mix32(halves[..., 1])
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def fingerprint(tree: Any) -> jax.Array:
    """A ``uint32`` checksum of every element of every array leaf of ``tree`` (``None`` skipped).

    Args:
      tree: any pytree of arrays: masks, params, a whole optimizer state.

    Returns:
      A ``uint32`` scalar; equal trees (same structure order, shapes, dtypes and bits) give equal
      fingerprints, and a difference in any one element always changes it.

    Example:
      >>> import jax.numpy as jnp
      >>> a = {"w": jnp.array([True, False, True])}
      >>> bool(fingerprint(a) == fingerprint({"w": jnp.array([True, True, False])}))
      False
    """
    total = jnp.uint32(0)
    for index, leaf in enumerate(jax.tree.leaves(tree)):
        bits = _bits(jnp.asarray(leaf))
        salt = mix32(jnp.uint32(((index + 1) * _SALT) & 0xFFFFFFFF))
        total = total + jnp.sum(mix32(mix32(flat_positions(bits, jnp.uint32) ^ salt) + bits), dtype=jnp.uint32)
    return total


def replicas_agree(tree: Any, axis_name: str) -> jax.Array:
    """Whether every replica along ``axis_name`` holds the same ``tree`` (inside ``pmap``/``shard_map``).

    Compares :func:`fingerprint` across the axis with one ``pmin`` and one ``pmax`` of a scalar.

    Args:
      tree: the per-replica values, e.g. ``jsp.masks_of(state)``.
      axis_name: the mapped axis holding the replicas.

    Returns:
      A ``bool`` scalar, the same on every replica.
    """
    local = fingerprint(tree)
    return lax.pmin(local, axis_name) == lax.pmax(local, axis_name)
