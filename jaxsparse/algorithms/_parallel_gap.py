"""Parallel GaP (P-GaP, Ma et al., ICLR 2022): ``kappa`` replicas, each with another partition dense.

Replica ``r`` trains a copy of the model with partition ``r`` dense and every other layer at its
target. Each round is ``T`` training steps plus one assembly step, on which the replicas exchange
weights (one all-reduce over the replica axis):

* the assembled model takes partition ``r``'s layers from replica ``r``. A dense leaf (a bias)
  goes with the partition of the sparsified leaf beside it (same parent path, so
  ``Dense_0/bias`` follows ``Dense_0/kernel``). Leaves with no such sibling are averaged over the
  replicas (the code leaves them at their initial values, which we do not copy);
* every layer of the assembled model is magnitude-pruned to its target, exactly
  ``floor(S_l N_l)`` zeros (ties broken by position, the same on every replica);
* replica ``r`` takes the assembled model, regrows partition ``r`` dense from zero, and restarts
  its optimizer, as the code restarts Adam each round. The assembly step takes no optimizer step.

After ``R`` rounds the last assembly grows nothing: every replica then holds the same pruned model
and the rest of training fine-tunes it (identically on every replica).

The replicas are a named axis: run ``sparsify``'s ``init`` and ``update`` under
``jax.vmap(..., axis_name=replica_axis)``, sharded over a mesh axis with ``spmd_axis_name`` and
with :func:`replica_axes` as ``in_axes``/``out_axes`` of the state, so that the step counter and
key are shared and the mask update stays under its ``lax.cond`` (a batched step would turn it into
a select that runs, and communicates, on every step). The axis size must be ``kappa``.

References:
  Ma et al., "Effective Model Sparsification by Scheduled Grow-and-Prune Methods", ICLR 2022;
  code: github.com/boone891214/GaP (``parallel_gap_distributed_run_*.py``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.algorithms._base import ParamReset, SparseAlgorithm
from jaxsparse.algorithms._factory_options import make_layout
from jaxsparse.algorithms._gap import GapState, checked_count, checked_partitions, gap_partitions
from jaxsparse.masks import (
    LayerPlan,
    Masks,
    Params,
    SparsityLayout,
    leaf_name,
    mask_leaves,
    masks_from_leaves,
    random_masks,
)
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import UpdateSchedule

__all__ = ["ParallelGrowAndPrune", "parallel_gap", "replica_axes"]


def _parent(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class ParallelGrowAndPrune(SparseAlgorithm):
    """P-GaP: replica ``r`` of ``kappa`` trains with partition ``r`` dense; replicas assemble each round.

    Attributes:
      layout: the targets ``S_l`` of every layer.
      schedule: the assembly steps ``T, 2T + 1, .., R (T + 1) - 1``.
      partitions: ``kappa``, or one tuple of name patterns per partition.
      steps_per_round: ``T`` training steps per round.
      rounds: ``R``.
      replica_axis: the name of the replica axis (of size ``kappa``).
      regularizer: an optional penalty.
    """

    name: str = "p_gap"
    layout: SparsityLayout
    schedule: UpdateSchedule
    partitions: int | tuple[tuple[str, ...], ...]
    steps_per_round: int
    rounds: int
    replica_axis: str = "replica"
    regularizer: Regularizer | None = None
    skip_optimizer_on_update: bool = dataclasses.field(default=True, init=False)

    fixed_counts: typing.ClassVar[bool] = False

    @property
    def num_partitions(self) -> int:
        """``kappa``, the number of replicas."""
        return self.partitions if isinstance(self.partitions, int) else len(self.partitions)

    @property
    def replicas(self) -> int:
        """One replica per partition."""
        return self.num_partitions

    @property
    def final_step(self) -> int:
        """``R (T + 1) - 1``: the last assembly; the masks are fixed after it."""
        return self.rounds * (self.steps_per_round + 1) - 1

    def partition_of(self, params: Params) -> list[int | None]:
        """The partition of each leaf of ``params`` (flattening order), ``None`` for dense leaves."""
        return gap_partitions(self.plan(params), self.partitions)

    def _replica(self) -> jax.Array:
        size = lax.axis_size(self.replica_axis)
        if size != self.num_partitions:
            raise ValueError(
                f"P-GaP has {self.num_partitions} partitions but the {self.replica_axis!r} axis has {size} replicas: "
                f"vmap over exactly {self.num_partitions} copies of the params."
            )
        return lax.axis_index(self.replica_axis)

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Every layer random at its target (the same on every replica), then the own partition dense."""
        replica, owners = self._replica(), self.partition_of(params)
        leaves = mask_leaves(params, random_masks(key, params, self.plan(params)))
        return masks_from_leaves(
            params,
            [None if m is None else jnp.where(replica == p, True, m) for m, p in zip(leaves, owners, strict=True)],
        )

    def init_state(self, params: Params, masks: Masks) -> GapState:
        """Replica ``r`` has partition ``r`` dense."""
        del params, masks
        return GapState(self._replica().astype(jnp.int32))

    def _assembled(self, params: Params) -> tuple[list[jax.Array | None], list[jax.Array | None]]:
        """Each leaf from the replica that owns it, and each sparsified layer's pruned mask.

        A leaf is owned by its own partition, or its sparsified sibling's; unowned leaves are averaged.
        """
        replica = self._replica()
        plans, owners = self.plan(params), self.partition_of(params)
        names = [leaf_plan.name for leaf_plan in plans if leaf_plan is not None]
        by_parent = dict(zip(map(_parent, names), (o for o in owners if o is not None), strict=True))
        leaves = jax.tree_util.tree_leaves_with_path(params)
        assembled, pruned = [], []
        for (path, leaf), plan, owner in zip(leaves, plans, owners, strict=True):
            if owner is None:
                owner = by_parent.get(_parent(leaf_name(path)))
            if owner is None:
                value = lax.pmean(leaf, self.replica_axis)
            else:
                value = lax.psum(jnp.where(replica == owner, leaf, jnp.zeros((), leaf.dtype)), self.replica_axis)
            assembled.append(value)
            pruned.append(None if plan is None else _prune(plan, value))
        return assembled, pruned

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: GapState
    ) -> tuple[Masks, GapState]:
        """The assembled model's pruned masks, with the own partition dense again unless this is the last round."""
        del masks, grads, key
        replica, owners = self._replica(), self.partition_of(params)
        final = step >= self.final_step
        _, pruned = self._assembled(params)
        leaves = [
            None if m is None else jnp.where((replica == p) & ~final, True, m)
            for m, p in zip(pruned, owners, strict=True)
        ]
        return masks_from_leaves(params, leaves), GapState(jnp.where(final, -1, replica).astype(jnp.int32))

    def on_mask_change(self, params, old, new, state, key, is_update) -> ParamReset:
        """On an assembly step: every leaf takes the assembled (pruned) model's value; the optimizer restarts."""
        del old, new, state, key

        def assemble():
            assembled, pruned = self._assembled(params)
            return [
                v if m is None else jnp.where(m, v, jnp.zeros((), v.dtype))
                for v, m in zip(assembled, pruned, strict=True)
            ]

        values = lax.cond(is_update, assemble, lambda: jax.tree.leaves(params))
        structure = jax.tree.structure(params)
        where = [jnp.full(jnp.shape(p), is_update) for p in jax.tree.leaves(params)]
        return ParamReset(jax.tree.unflatten(structure, values), jax.tree.unflatten(structure, where), is_update)

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """All ``kappa`` replicas' FLOPs over the run, relative to training one dense model.

        In a round replica ``r`` costs ``3 f`` with partition ``r`` dense and the rest at target;
        assembly steps take no optimizer step but their forward and backward passes are run (and
        counted); after the last assembly every replica fine-tunes the pruned model, ``3 f_S`` each.
        So the ratio is ``kappa`` times one replica's average.
        """
        del forward_density, trainable_density
        by_name = {plan.name: plan for plan in plans if plan is not None}
        owners = {plan.name: p for plan, p in zip(plans, gap_partitions(plans, self.partitions), strict=True) if plan}
        target = np.array([1.0 if n not in by_name else by_name[n].active / by_name[n].size for n in names])
        part = np.array([owners.get(n, -1) for n in names])
        in_rounds = float(sum(np.where(part == r, flops, target * flops).sum() for r in range(self.num_partitions)))
        fine_tune = self.num_partitions * float(target @ flops)
        steps = np.arange(total_steps)
        costs = np.where(steps <= self.final_step, in_rounds, fine_tune)
        return float(costs.mean() / flops.sum())


def _prune(plan: LayerPlan, value: jax.Array) -> jax.Array:
    """The ``plan.row_active`` largest ``|value|`` groups per row (ties by position: seed 0 on every replica)."""
    if plan.zeros == 0:
        return jnp.ones(plan.mask_shape, bool)
    return plan.structure.select(plan.structure.group_scores(jnp.abs(value)), plan.row_active, tie_seed=0)


def parallel_gap(
    sparsity: float,
    *,
    partitions: int | typing.Sequence[typing.Sequence[str]] = 3,
    steps_per_round: int,
    rounds: int = 10,
    replica_axis: str = "replica",
    distribution: str = "uniform",
    regularizer: Regularizer | None = None,
    **layout_options,
) -> ParallelGrowAndPrune:
    """Parallel scheduled grow-and-prune, P-GaP (Ma et al., ICLR 2022).

    Args:
      sparsity: the target ``S``, met by every layer after the last assembly.
      partitions: ``kappa`` (the number of replicas), or the partitions as lists of name patterns.
      steps_per_round: ``T`` training steps per round (the paper: 10 epochs).
      rounds: ``R`` (the paper: 10).
      replica_axis: the vmapped axis of the replicas.
      distribution: ``"uniform"`` (the paper's P-GaP rows) or ``"erk"``/``"er"``.
      regularizer: an optional penalty.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Example:
      >>> algo = parallel_gap(0.9, partitions=4, steps_per_round=100, rounds=3)
      >>> algo.final_step, [int(algo.is_update_step(t)) for t in (100, 201, 302, 403)]
      (302, [1, 1, 1, 0])
    """
    partitions = checked_partitions(partitions)
    steps_per_round = checked_count(steps_per_round, "steps_per_round")
    rounds = checked_count(rounds, "rounds")
    return ParallelGrowAndPrune(
        layout=make_layout(sparsity, distribution, layout_options),
        schedule=UpdateSchedule(steps_per_round, rounds * (steps_per_round + 1) - 1, steps_per_round + 1),
        partitions=partitions,
        steps_per_round=steps_per_round,
        rounds=rounds,
        replica_axis=replica_axis,
        regularizer=regularizer,
    )


def replica_axes(state: Any) -> Any:
    """``in_axes``/``out_axes`` for a ``sparsify`` state under ``vmap`` over replicas.

    Everything is per replica (axis 0) except the step counter and the key, which all replicas
    share, so that the mask update's ``lax.cond`` is not batched into a select.
    """
    return dataclasses.replace(state, inner_state=0, masks=0, algorithm_state=0, step=None, key=None)
