"""Shardings of optimizer and ``sparsify`` state derived from the parameters' shardings.

A mask is sharded exactly like the parameter it masks, and so is every parameter-shaped optimizer
slot (momentum, Adam's moments, ...), the same way optax's own states are sharded when a user
shards the parameters. Everything else (the step counter, the key, scalar hyperparameters) is
replicated. Which state leaf belongs to which parameter is decided by the rule that also resets
optimizer slots (:func:`jaxsparse.transform.slot_owners`): the leaf's key path ends with the
parameter's, and the shapes agree.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec, Sharding

from jaxsparse.masks import Params
from jaxsparse.transform import slot_owners

__all__ = ["state_shardings"]


def _is_spec(x: Any) -> bool:
    return isinstance(x, (PartitionSpec, Sharding))


def state_shardings(state: Any, params: Params, param_shardings: Any) -> Any:
    """Shardings (or partition specs) for ``state``, given those of ``params``.

    Args:
      state: the state, or its shapes: ``jax.eval_shape(tx.init, params)``.
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      param_shardings: a tree like ``params`` of ``jax.sharding.Sharding`` or of ``PartitionSpec``
        (e.g. for ``jax.shard_map``).

    Returns:
      A tree like ``state``: each parameter-shaped leaf (masks, optimizer slots) gets its
      parameter's entry; every other leaf is replicated (``PartitionSpec()``, or a
      ``NamedSharding`` replicated over the parameters' mesh).

    Example:
      >>> import jax, jax.numpy as jnp, optax, jaxsparse as jsp
      >>> from jax.sharding import PartitionSpec as P
      >>> params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
      >>> tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), jsp.static(0.5), key=jax.random.key(0))
      >>> specs = state_shardings(jax.eval_shape(tx.init, params), params, {"w": P("model"), "b": P()})
      >>> specs.masks["w"], specs.inner_state[0].trace["w"], specs.step
      (P('model',), P('model',), P())
    """
    entries = jax.tree_util.tree_leaves_with_path(param_shardings, is_leaf=_is_spec)
    param_paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    if [path for path, _ in entries] != param_paths:
        raise ValueError(
            "param_shardings does not match params: give one Sharding or PartitionSpec per parameter leaf, "
            "in a tree shaped like params."
        )
    by_path = dict(entries)
    first = next((entry for _, entry in entries if isinstance(entry, NamedSharding)), None)
    replicated = PartitionSpec() if first is None else NamedSharding(first.mesh, PartitionSpec())
    leaves = [replicated if owner is None else by_path[owner] for owner in slot_owners(state, params)]
    return jax.tree.unflatten(jax.tree.structure(state), leaves)
