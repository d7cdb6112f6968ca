"""GaP: scheduled grow-and-prune, cyclic (Ma et al., ICLR 2022).

The sparsified layers are split into ``kappa`` partitions of consecutive layers (network order,
roughly equal parameter counts, or given as name patterns). One partition at a time is dense:

* **start:** partition ``d_0 = 0`` is dense; every other layer has a random mask at its target;
* **phase** ``k = 0 .. kappa R - 1`` trains ``T`` steps with partition ``d_k`` dense;
* **at step** ``k T`` (``k = 1 .. kappa R``) the dense partition ``d_{k-1}`` is magnitude-pruned back
  to its target (per layer, exactly ``floor(S_l N_l)`` zeros), and, for ``k < kappa R``, partition
  ``d_k`` grows to dense. Its regrown weights start at 0 (they were pruned) and their optimizer
  slots are reset, as for every mask change;
* **final prune** at step ``kappa R T``: nothing grows, and the dense partition is pruned per layer
  or, with ``final_scope="global"``, by one magnitude threshold over all layers (the code's
  ``--sp-global-weight-sparsity``). The masks then stay fixed: the rest of training fine-tunes.

The order is cyclic, ``d_k = k mod kappa``, or random (the code's other option): each ``d_k`` is
drawn uniformly from the partitions other than ``d_{k-1}``. The dense partition is the algorithm's
state, so a resumed run continues the same order.

Differences from the reference code, on purpose: the code restarts Adam and its learning-rate
warm-up at every phase (each phase is a new process); here the optimizer runs on, with its slots
reset where masks changed. The code masks weights after each optimizer step but not gradients;
here the optimizer sees gradients restricted to the mask, so no moment accumulates on pruned
weights.

References:
  Ma et al., "Effective Model Sparsification by Scheduled Grow-and-Prune Methods", ICLR 2022;
  code: github.com/boone891214/GaP.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms._base import SparseAlgorithm, layer_key
from jaxsparse.algorithms._factory_options import check_pooled_scope, make_layout
from jaxsparse.algorithms._magnitude_pruning import SCOPES
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import (
    LayerPlan,
    Masks,
    Params,
    SparsityLayout,
    mask_leaves,
    masks_from_leaves,
    natural_key,
    random_masks,
)
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import UpdateSchedule
from jaxsparse.selection import global_top_k_masks

__all__ = ["GapState", "GrowAndPrune", "checked_count", "checked_partitions", "gap", "gap_partitions"]

ORDERS = ("cyclic", "random")

# The random order draws from its own stream of a step's key; the layer keys fold in leaf indices.
_ORDER_STREAM = 0x6A70


class GapState(typing.NamedTuple):
    """GaP's state: the partition that is dense now (``-1`` after the final prune)."""

    dense_partition: jax.Array


def gap_partitions(
    plans: Sequence[LayerPlan | None], partitions: int | tuple[tuple[str, ...], ...]
) -> list[int | None]:
    """The partition of each leaf (``None`` for dense leaves), from a count or from name patterns.

    With a count ``kappa``, the sparsified layers in network order (:func:`~jaxsparse.masks.natural_key`
    of their names) are cut into ``kappa`` runs of consecutive layers whose parameter counts are as
    equal as the layer boundaries allow: cut ``j`` goes where the running count is nearest
    ``j / kappa`` of the total. With patterns, partition ``i`` holds the sparsified layers whose
    names match one of ``partitions[i]`` (:func:`re.search`); every layer must match exactly one.

    Raises:
      ValueError: more partitions than sparsified layers; a layer in no partition or in two (the
        message names them); a partition that holds no layer.
    """
    indices = sorted((i for i, plan in enumerate(plans) if plan is not None), key=lambda i: natural_key(plans[i].name))
    names = [plans[i].name for i in indices]
    assignment: list[int | None] = [None] * len(plans)
    if isinstance(partitions, int):
        if partitions > len(indices):
            raise ValueError(
                f"GaP needs at least one layer per partition: {partitions} partitions, but only {len(indices)} "
                f"sparsified layers ({', '.join(names)}); use at most {len(indices)} partitions."
            )
        sizes = np.array([plans[i].size * plans[i].group_size for i in indices], dtype=np.float64)
        running = np.cumsum(sizes)
        cuts = [0]
        for j in range(1, partitions):
            low, high = cuts[-1] + 1, len(indices) - (partitions - j)
            candidates = np.arange(low, high + 1)
            target = j * running[-1] / partitions
            cuts.append(int(candidates[np.argmin(np.abs(running[candidates - 1] - target))]))
        for position, i in enumerate(indices):
            assignment[i] = int(np.searchsorted(cuts, position, side="right")) - 1
        return assignment
    for i, name in zip(indices, names, strict=True):
        owners = [p for p, patterns in enumerate(partitions) if any(re.search(pattern, name) for pattern in patterns)]
        if len(owners) != 1:
            where = "no partition" if not owners else f"partitions {owners}"
            raise ValueError(
                f"GaP partitions must cover each sparsified layer exactly once, but {name!r} matches {where} "
                f"(patterns {list(partitions)}; sparsified layers: {', '.join(names)})."
            )
        assignment[i] = owners[0]
    empty = [p for p in range(len(partitions)) if p not in assignment]
    if empty:
        raise ValueError(f"GaP partitions {empty} ({[partitions[p] for p in empty]}) match no sparsified layer.")
    return assignment


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class GrowAndPrune(SparseAlgorithm):
    """Cyclic scheduled grow-and-prune (C-GaP): one partition dense at a time.

    Attributes:
      layout: the targets ``S_l`` of every layer.
      schedule: the phase boundaries ``T, 2T, .., kappa R T`` (``update_every = T``).
      partitions: ``kappa``, or one tuple of name patterns per partition.
      steps_per_phase: ``T``.
      rounds: ``R``; a round makes every partition dense once.
      order: ``"cyclic"`` or ``"random"``.
      final_scope: ``"layer"`` (each layer to its target) or ``"global"`` (one threshold) at the final prune.
      skip_optimizer_on_update: apply no optimizer step at phase boundaries.
      regularizer: an optional penalty.
    """

    name: str = "gap"
    layout: SparsityLayout
    schedule: UpdateSchedule
    partitions: int | tuple[tuple[str, ...], ...]
    steps_per_phase: int
    rounds: int
    order: str = "cyclic"
    final_scope: str = "layer"
    skip_optimizer_on_update: bool = False
    regularizer: Regularizer | None = None

    fixed_counts: typing.ClassVar[bool] = False

    @property
    def num_partitions(self) -> int:
        """``kappa``."""
        return self.partitions if isinstance(self.partitions, int) else len(self.partitions)

    @property
    def final_step(self) -> int:
        """``kappa R T``: the step of the final prune; masks are fixed after it."""
        return self.num_partitions * self.rounds * self.steps_per_phase

    def partition_of(self, params: Params) -> list[int | None]:
        """The partition of each leaf of ``params`` (flattening order), ``None`` for dense leaves."""
        return gap_partitions(self.plan(params), self.partitions)

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Partition 0 dense; every other layer random at exactly its target count."""
        owners = self.partition_of(params)
        leaves = mask_leaves(params, random_masks(key, params, self.plan(params)))
        return masks_from_leaves(
            params,
            [None if m is None else (jnp.ones_like(m) if p == 0 else m) for m, p in zip(leaves, owners, strict=True)],
        )

    def init_state(self, params: Params, masks: Masks) -> GapState:
        """Partition 0 starts dense."""
        del params, masks
        return GapState(jnp.zeros((), jnp.int32))

    def _next_partition(self, dense: jax.Array, key: jax.Array) -> jax.Array:
        kappa = self.num_partitions
        if self.order == "cyclic" or kappa == 1:
            return (dense + 1) % kappa
        offset = jax.random.randint(jax.random.fold_in(key, _ORDER_STREAM), (), 1, kappa)
        return (dense + offset) % kappa

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: GapState
    ) -> tuple[Masks, GapState]:
        """Prune the dense partition to its targets by ``|theta|``; grow the next one (none at the final prune)."""
        del grads
        plans, owners = self.plan(params), self.partition_of(params)
        final = step >= self.final_step
        dense = state.dense_partition
        grown = jnp.where(final, -1, self._next_partition(dense, key))
        param_leaves, current = jax.tree.leaves(params), mask_leaves(params, masks)
        indices = [i for i, plan in enumerate(plans) if plan is not None]
        scores = {i: plans[i].structure.group_scores(jnp.abs(param_leaves[i])) for i in indices}
        seeds = {i: jax.random.bits(layer_key(key, i), (), jnp.uint32) for i in indices}
        new_leaves: list[jax.Array | None] = [None] * len(plans)
        for i in indices:
            mask = current[i]
            if plans[i].zeros == 0:  # a layer the distribution saturated to dense stays dense
                new_leaves[i] = mask
                continue
            pruned = plans[i].structure.select(scores[i], plans[i].row_active, tie_seed=seeds[i])
            kept = jnp.where(owners[i] == dense, pruned, mask)
            new_leaves[i] = jnp.where(owners[i] == grown, jnp.ones_like(mask), kept)
        if self.final_scope == "global":  # the final prune shares one threshold over every layer
            total = sum(plans[i].active for i in indices)
            pooled = global_top_k_masks(
                [scores[i] for i in indices],
                total,
                candidates=[current[i] for i in indices],
                tie_seed=seeds[indices[0]],
            )
            for i, mask in zip(indices, pooled, strict=True):
                new_leaves[i] = jnp.where(final, mask, new_leaves[i])
        return masks_from_leaves(params, new_leaves), GapState(grown.astype(jnp.int32))

    def _phase_of_steps(self, total_steps: int) -> np.ndarray:
        """The phase whose masks the forward pass of each step ``0 .. total_steps-1`` uses.

        The update at step ``u`` is computed after step ``u``'s gradients (whose optimizer step
        already lands on the new masks), so step ``t`` uses the masks of the last update before it:
        phase ``k`` covers steps ``k T + 1 .. (k + 1) T`` (phase 0 also step 0), and steps after
        ``kappa R T`` are phase ``kappa R`` (every layer at target).
        """
        steps = np.arange(total_steps)
        return np.minimum(np.maximum(steps - 1, 0) // self.steps_per_phase, self.num_partitions * self.rounds)

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``3 f(t)`` averaged over the steps, with the dense partition's layers at density 1.

        Every other sparsified layer is at its target density ``1 - floor(S_l N_l)/N_l``. A
        random order's cost is the expectation: after phase 0 each partition is dense with equal
        probability (exact for the cyclic order, and for the random order's total when every
        partition's FLOPs are equal).
        """
        del forward_density, trainable_density
        by_name = {plan.name: plan for plan in plans if plan is not None}
        owners = {plan.name: p for plan, p in zip(plans, gap_partitions(plans, self.partitions), strict=True) if plan}
        target = np.array([1.0 if n not in by_name else by_name[n].active / by_name[n].size for n in names])
        part = np.array([owners.get(n, -1) for n in names])
        kappa, last = self.num_partitions, self.num_partitions * self.rounds
        dense_cost = np.array([np.where(part == p, flops, target * flops).sum() for p in range(kappa)])
        sparse_cost = float(target @ flops)
        phases = self._phase_of_steps(total_steps)
        if self.order == "cyclic":
            costs = np.where(phases < last, dense_cost[phases % kappa], sparse_cost)
        else:
            expected = (dense_cost.sum() - dense_cost[0]) / max(kappa - 1, 1) if kappa > 1 else dense_cost[0]
            costs = np.where(phases == 0, dense_cost[0], np.where(phases < last, expected, sparse_cost))
        return float(costs.mean() / flops.sum())


def checked_count(value, name: str) -> int:
    """A GaP length or count as an int >= 1, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"GaP's {name} must be an int >= 1, got {value!r}.")
    return int(value)


def checked_partitions(partitions: int | Sequence[Sequence[str]]) -> int | tuple[tuple[str, ...], ...]:
    """``kappa`` as an int >= 1, or the partitions' patterns as a tuple of tuples (hashable)."""
    if isinstance(partitions, int | np.integer):
        return checked_count(partitions, "partitions")
    if isinstance(partitions, str) or any(isinstance(p, str) for p in partitions):
        raise TypeError("GaP partitions must be a count or a list of pattern lists, e.g. [['conv'], ['dense']].")
    partitions = tuple(tuple(p) for p in partitions)
    if not partitions:
        raise ValueError("GaP needs at least one partition.")
    return partitions


def gap(
    sparsity: float,
    *,
    partitions: int | Sequence[Sequence[str]] = 3,
    steps_per_phase: int,
    rounds: int = 10,
    order: str = "cyclic",
    final_scope: str = "layer",
    distribution: str = "uniform",
    skip_optimizer_on_update: bool = False,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> GrowAndPrune:
    """Cyclic scheduled grow-and-prune, C-GaP (Ma et al., ICLR 2022).

    Phase ``k`` trains ``T = steps_per_phase`` steps with partition ``d_k`` dense and the rest at
    their targets; ``kappa`` phases make a round, ``R`` rounds make the schedule, and the final prune
    at step ``kappa R T`` leaves every layer at its target for the fine-tuning that follows.

    Args:
      sparsity: the target ``S`` in ``[0, 1)``, met by every layer after the final prune.
      partitions: ``kappa`` (3, the paper's Transformer setting and the most the library's
        smallest model, the 3-layer MLP, allows; the paper uses 4 for ResNet-50), or the partitions
        as lists of name patterns, in order.
      steps_per_phase: ``T`` (the paper: about 10 epochs).
      rounds: ``R`` (the paper: 10).
      order: ``"cyclic"`` (the paper's recommendation) or ``"random"``.
      final_scope: ``"layer"`` (the code's default) or ``"global"`` for the final prune.
      distribution: ``"uniform"`` (the paper's uniform rows) or ``"erk"``/``"er"``.
      skip_optimizer_on_update: apply no optimizer step at phase boundaries.
      regularizer: an optional penalty.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Example:
      >>> algo = gap(0.9, partitions=3, steps_per_phase=100, rounds=2)
      >>> algo.final_step, [int(algo.is_update_step(t)) for t in (99, 100, 600, 700)]
      (600, [0, 1, 1, 0])

    References:
      Ma et al., "Effective Model Sparsification by Scheduled Grow-and-Prune Methods", ICLR 2022.
    """
    partitions = checked_partitions(partitions)
    steps_per_phase = checked_count(steps_per_phase, "steps_per_phase")
    rounds = checked_count(rounds, "rounds")
    if order not in ORDERS:
        raise ValueError(f"unknown GaP order {order!r}; choose 'cyclic' or 'random'.")
    if final_scope not in SCOPES:
        raise ValueError(f"unknown GaP final_scope {final_scope!r}; choose 'layer' or 'global'.")
    kappa = partitions if isinstance(partitions, int) else len(partitions)
    layout = make_layout(sparsity, distribution, layout_options)
    check_pooled_scope(final_scope, layout, "final_scope")
    return GrowAndPrune(
        layout=layout,
        schedule=UpdateSchedule(steps_per_phase, kappa * rounds * steps_per_phase, steps_per_phase),
        partitions=partitions,
        steps_per_phase=steps_per_phase,
        rounds=rounds,
        order=order,
        final_scope=final_scope,
        skip_optimizer_on_update=skip_optimizer_on_update,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> SparseAlgorithm:
    """C-GaP, or P-GaP with ``gap_parallel``, with ``R`` and ``T`` scaled to the mask-update window.

    A C-GaP round is ``kappa`` phases of ``T`` steps; a P-GaP round is ``T`` steps and one
    assembly step, on every replica at once.
    """
    from jaxsparse.algorithms._parallel_gap import parallel_gap  # P-GaP builds on this module

    options, window = settings.options, settings.end_step
    kappa, parallel = options["gap_partitions"], options["gap_parallel"]
    phases_per_round = 1 if parallel else kappa
    rounds = options["gap_rounds"] or max(1, min(10, window // (phases_per_round * settings.update_every)))
    steps = options["gap_steps_per_phase"] or max(1, window // (phases_per_round * rounds) - int(parallel))
    shared = dict(partitions=kappa, rounds=rounds, **settings.layout_keywords())
    if parallel:
        return parallel_gap(settings.sparsity, steps_per_round=steps, **shared)
    return gap(settings.sparsity, steps_per_phase=steps, **shared)


register(
    Method(
        "gap",
        _build,
        "scheduled grow-and-prune, cyclic: one partition dense at a time (Ma et al. 2022)",
        options=(
            Option(
                "gap_partitions",
                int,
                3,
                "GaP: the number of partitions kappa (the paper: 3 for the Transformer, 4 for ResNet-50)",
                lambda v, s: v >= 1,
                "an int >= 1",
            ),
            Option(
                "gap_steps_per_phase",
                int,
                None,
                "GaP: steps T per phase (default: end_step / (kappa R), so the phases fill the mask-update window "
                "and the remaining steps fine-tune; with --gap-parallel, per round: end_step / R - 1)",
                lambda v, s: v is None or v >= 1,
                "an int >= 1",
            ),
            Option(
                "gap_rounds",
                int,
                None,
                "GaP: rounds R (default: min(10, end_step / (kappa update_every)), the paper's 10 when there is room; "
                "with --gap-parallel, min(10, end_step / update_every))",
                lambda v, s: v is None or v >= 1,
                "an int >= 1",
            ),
            Option(
                "gap_parallel",
                bool,
                False,
                "GaP: parallel GaP (P-GaP): kappa replicas, each with another partition dense, laid over the visible "
                "devices, assembled every round",
            ),
        ),
    )
)
