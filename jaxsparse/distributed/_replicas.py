"""Replicated copies of a pytree: placing them for ``pmap`` and checking they are bit-identical.

``pmap`` keeps one copy per device along a leading axis; ``jax.jit`` over a mesh keeps one copy
per device of every replicated shard, on every host. In both layouts every copy of the same data
must hold the same bits; :func:`assert_replicas_equal` checks exactly that, across the local
devices and, under ``jax.distributed``, across processes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxsparse.distributed._fingerprint import fingerprint

__all__ = ["assert_replicas_equal", "replicate", "unreplicate"]


def replicate(tree: Any, *, axis_name: str, devices: Sequence[jax.Device] | None = None) -> Any:
    """One copy of ``tree`` per device, stacked along a new leading axis, as ``pmap`` takes it.

    (The replacement for the removed ``jax.device_put_replicated``.) The copies are placed exactly
    as ``jax.pmap(..., axis_name=axis_name)`` places its outputs, so feeding them back does not
    trace the step a second time.

    Args:
      tree: a pytree of arrays (params, a ``sparsify`` state; PRNG keys included).
      axis_name: the ``axis_name`` of the ``pmap`` that will take the copies.
      devices: the devices ``pmap`` runs on; default ``jax.local_devices()``.

    Returns:
      The tree with every leaf ``x`` turned into an array of shape ``(n, *x.shape)`` whose row
      ``i`` lives on ``devices[i]``.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    sharding = NamedSharding(Mesh(np.array(devices), (axis_name,)), PartitionSpec(axis_name))
    return jax.tree.map(lambda x: jax.device_put(jnp.broadcast_to(x, (len(devices), *jnp.shape(x))), sharding), tree)


def unreplicate(tree: Any) -> Any:
    """The first copy of a ``pmap``-replicated tree (the inverse of :func:`replicate`)."""
    return jax.tree.map(lambda x: x[0], tree)


_fingerprint_jit = jax.jit(fingerprint)


def _copy_fingerprints(leaf: jax.Array, stacked: bool) -> list[tuple[int, int]]:
    """``(region id, fingerprint)`` of each copy of ``leaf`` this process holds."""
    rows = []
    for shard in leaf.addressable_shards:
        index = shard.index[1:] if stacked else shard.index  # under pmap, axis 0 enumerates the copies
        region = zlib.crc32(repr([(s.start, s.stop, s.step) for s in index]).encode())
        data = shard.data[0] if stacked else shard.data
        rows.append((region, int(_fingerprint_jit(data))))
    return rows


def assert_replicas_equal(tree: Any, *, stacked: bool = False, name: str = "tree") -> None:
    """Raises ``AssertionError`` unless every copy of every element of ``tree`` holds the same bits.

    Each device's copy of each shard is fingerprinted where it lives; copies of the same region
    are compared across local devices and, when ``jax.process_count() > 1``, across processes
    (every process must call this, as for any collective).

    Args:
      tree: a pytree of ``jax.Array`` (``None`` leaves skipped).
      stacked: ``True`` for ``pmap`` layouts, where the leading axis holds one copy per device
        (as made by :func:`replicate`).
      name: how to call the tree in the error message.
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    rows = [(i, *copy) for i, (_, leaf) in enumerate(leaves) for copy in _copy_fingerprints(leaf, stacked)]
    rows = np.array(rows, dtype=np.int64).reshape(-1, 3)
    if jax.process_count() > 1:
        rows = np.asarray(multihost_utils.process_allgather(rows)).reshape(-1, 3)
    seen: dict[tuple[int, int], int] = {}
    for leaf_index, region, value in rows.tolist():
        if seen.setdefault((leaf_index, region), value) != value:
            path = jax.tree_util.keystr(leaves[leaf_index][0])
            raise AssertionError(
                f"{name}{path} differs between replicas (devices or processes hold different bits). "
                "Derive masks only from replicated inputs: all-reduce gradients (lax.pmean) before tx.update "
                "and never fold a device or process index into the sparsify key."
            )
