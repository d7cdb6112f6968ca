"""Training several replicas of one model at once, for algorithms that need them (P-GaP).

An algorithm with ``replicas > 1`` trains that many copies of the model, each with its own masks
and optimizer state, which exchange weights through collectives over the algorithm's
``replica_axis``. The harness stacks every per-replica array along a leading axis and runs
``init`` and the train step under ``jax.vmap`` over that axis, with
:func:`~jaxsparse.algorithms.replica_axes` for the ``sparsify`` state (the step counter and key
are shared). The replicas are laid over the visible devices on a ``(replica, data)`` mesh: with
``n`` devices and ``kappa`` replicas, ``kappa`` replica groups of ``n / kappa`` data-parallel
devices when ``kappa`` divides ``n``, or ``kappa / n`` replicas per device when ``n`` divides
``kappa``. Every replica sees the same batch. Evaluation, the summary and the plots read replica 0,
which after the last assembly is the model every replica holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsparse as jsp
from jaxsparse.algorithms import replica_axes
from jaxsparse.training._config import ConfigError

__all__ = ["Replicas"]


@dataclasses.dataclass(frozen=True)
class Replicas:
    """``count`` replicas on a ``(replica, data)`` mesh; ``axis`` is the algorithm's replica axis name."""

    count: int
    axis: str
    mesh: jax.sharding.Mesh

    @classmethod
    def for_algorithm(cls, algorithm: jsp.SparseAlgorithm | None, batch_size: int) -> Replicas | None:
        """The replica layout ``algorithm`` needs, or ``None`` for an ordinary single-model run.

        Raises:
          ConfigError: the device count is neither a multiple nor a divisor of the replica count.
        """
        if algorithm is None or algorithm.replicas == 1:
            return None
        count, devices = algorithm.replicas, jax.device_count()
        if devices % count == 0:
            shape = (count, devices // count)
        elif count % devices == 0:
            shape = (devices, 1)
        else:
            fits = sorted({d for d in range(1, devices + 1) if devices % d == 0} | {devices * k for k in (2, 3, 4)})
            raise ConfigError(
                f"--gap-parallel trains {count} replicas, one per partition, but {devices} devices are visible: the "
                f"device count must be a multiple or a divisor of the replica count. Use --gap-partitions with one of "
                f"{', '.join(map(str, fits))}, or make {count} (or a multiple) devices visible (on CPU: "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count})."
            )
        if batch_size % shape[1]:
            shape = (shape[0], 1)  # the batch does not split evenly: replicate it over the data axis
        mesh = jax.make_mesh(shape, (algorithm.replica_axis, "data"), axis_types=(AxisType.Auto, AxisType.Auto))
        return cls(count, algorithm.replica_axis, mesh)

    def stack(self, tree: Any) -> Any:
        """``count`` copies of every leaf along a new leading axis, sharded over the replica axis."""
        stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.count, *jnp.shape(x))), tree)
        return jax.device_put(stacked, NamedSharding(self.mesh, P(self.axis)))

    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def init(self, tx: Any, params: Any) -> tuple[Any, Any]:
        """``tx.init`` of every replica; returns the state and its ``vmap`` axes."""
        axes = replica_axes(jax.eval_shape(jax.vmap(tx.init, axis_name=self.axis), params))
        init = jax.vmap(tx.init, axis_name=self.axis, spmd_axis_name=self.axis, out_axes=axes)
        return jax.jit(init)(params), axes

    def vmap_step(self, step: Any, axes: Any) -> Any:
        """``step(params, model_state, opt_state, batch)`` of every replica; the loss is the replicas' mean."""
        mapped = jax.vmap(
            step,
            in_axes=(0, 0, axes, None),
            out_axes=(0, 0, axes, 0),
            axis_name=self.axis,
            spmd_axis_name=self.axis,
        )

        def replicated(params, model_state, opt_state, batch):
            params, model_state, opt_state, loss = mapped(params, model_state, opt_state, batch)
            return params, model_state, opt_state, jnp.mean(loss)

        return replicated

    @staticmethod
    def first(tree: Any, axes: Any = 0) -> Any:
        """Replica 0 of ``tree`` (``axes``: its ``vmap`` axes, ``None`` where shared)."""
        return jax.tree.map(
            lambda axis, sub: sub if axis is None else jax.tree.map(lambda x: x[0], sub),
            axes,
            tree,
            is_leaf=lambda x: x is None,
        )
