"""Shardings under ``jax.sharding`` meshes with *explicit* axes, where they are part of an array's type.

Under explicit axes (the default of ``jax.make_mesh``) a freshly created array (an iota, random
bits, a histogram) is replicated unless told otherwise, and combining it with a sharded array is a
type error rather than an implicit all-gather. So the selection code creates such arrays sharded
like the parameter they belong to, and asks for replicated histograms (an all-reduce of per-shard
counts). Under automatic axes, or with no mesh, the helpers return ``None``: XLA's sharding
propagation decides, and follows the parameter anyway.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = ["explicit_sharding", "replicated_sharding"]


def _explicit_mesh(like: jax.Array):
    mesh = jax.typeof(like).sharding.mesh
    if mesh.empty or AxisType.Explicit not in mesh.axis_types:
        return None
    return mesh


def explicit_sharding(like: jax.Array) -> NamedSharding | None:
    """``like``'s sharding if it lives on a mesh with explicit axes, else ``None``."""
    return None if _explicit_mesh(like) is None else jax.typeof(like).sharding


def replicated_sharding(like: jax.Array) -> NamedSharding | None:
    """Full replication on ``like``'s mesh if that mesh has explicit axes, else ``None``."""
    mesh = _explicit_mesh(like)
    return None if mesh is None else NamedSharding(mesh, PartitionSpec())
