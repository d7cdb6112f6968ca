"""Drop-and-grow dynamic sparse training: SET and RigL.

At a mask-update step ``t``, in each sparsified layer with ``n`` active weights and drop fraction
``f_t``:

1. **drop** ``d = floor(n * f_t)`` weights: keep the top ``n - d`` active weights by the drop score
   (``|theta|``);
2. **grow** ``d`` weights: among every position not kept (the just-dropped included, as in the
   RigL reference), take the top ``d`` by the grow score (``|dL/d(theta*m)|`` for RigL, uniform
   random for SET).

The active count is exactly ``n`` before and after. A weight dropped and regrown in the same update
is not "new": it keeps its value and optimizer slots.

References:
  Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications 2018 (SET).
  Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020, Section 3 (RigL).
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.algorithms._base import (
    AlgorithmState,
    ParamReset,
    SparseAlgorithm,
    grown_values,
    layer_key,
    newly_active,
    sparse_forward_cost,
)
from jaxsparse.algorithms._factory_options import drop_fraction_schedule, make_layout
from jaxsparse.algorithms._registry import Method, Option, Settings, register
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
from jaxsparse.schedules import Schedule, UpdateSchedule
from jaxsparse.scores import Score, gradient_magnitude, magnitude, random
from jaxsparse.selection import top_k_mask

__all__ = ["DropAndGrow", "dense_gradient_update_cost", "drop_count", "grad_leaves", "drop_and_regrow", "rigl", "set_"]

# Scores that read no gradient: drop-and-grow with only these (SET) never needs the dense gradient.
_GRADIENT_FREE_SCORES = (magnitude, random)


def drop_count(n_active: int, fraction: jax.typing.ArrayLike) -> jax.Array:
    """``floor(n_active * f)``, clipped to ``[0, n_active]`` (an int32 scalar)."""
    dropped = jnp.floor(jnp.asarray(fraction, jnp.float32) * n_active).astype(jnp.int32)
    return jnp.clip(dropped, 0, n_active)


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class DropAndGrow(SparseAlgorithm):
    """Drop by ``drop_score``, regrow by ``grow_score``, at a scheduled fraction.

    Scores are element scores; a structured layout ranks groups by their reduction (see
    :mod:`jaxsparse.masks`).

    Attributes:
      layout: which leaves are sparsified and at what sparsity.
      schedule: the mask-update grid.
      drop_fraction: schedule ``f_t`` of the fraction of active weights replaced per update.
      grow_score: ranks inactive positions for growth.
      drop_score: ranks active weights for keeping (default ``|theta|``).
      skip_optimizer_on_update: on a mask-update step, apply no optimizer step (the RigL reference).
      grow_init: ``jax.nn.initializers``-style ``init(key, shape, dtype)`` for newly grown weights.
      regularizer: an optional penalty.
      name: ``"set"`` or ``"rigl"`` for the built-in factories.
    """

    name: str = "drop_and_grow"
    layout: SparsityLayout
    schedule: UpdateSchedule
    drop_fraction: Schedule
    grow_score: Score
    drop_score: Score = magnitude
    skip_optimizer_on_update: bool = True
    grow_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros
    regularizer: Regularizer | None = None

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Uniformly random masks with exactly ``floor(S_l * N_l)`` zeros per layer."""
        return random_masks(key, params, self.plan(params))

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Drop the ``floor(n f_t)`` lowest-scoring of a layer's ``n`` active entries, regrow as many.

        Rows (N:M groups, neurons) regrow what they lost: see :func:`drop_and_regrow`.
        """
        param_leaves = jax.tree.leaves(params)
        gradients = grad_leaves(params, grads)
        current = mask_leaves(params, masks)
        fraction = self.drop_fraction(step)
        new_leaves = []
        for index, plan in enumerate(self.plan(params)):
            if plan is None:
                new_leaves.append(None)
                continue
            param, grad, mask = param_leaves[index], gradients[index], current[index]
            if plan.zeros == 0:  # a layer the distribution saturated to dense stays dense
                new_leaves.append(mask)
                continue
            drop_key, grow_key, keep_ties, grow_ties = jax.random.split(layer_key(key, index), 4)
            new_leaves.append(
                drop_and_regrow(
                    plan,
                    mask,
                    plan.structure.group_scores(self.drop_score(param, grad, drop_key)),
                    plan.structure.group_scores(self.grow_score(param, grad, grow_key)),
                    drop_count(plan.active, fraction),
                    jax.random.bits(keep_ties, (), jnp.uint32),
                    jax.random.bits(grow_ties, (), jnp.uint32),
                )
            )
        return masks_from_leaves(params, new_leaves), state

    def on_mask_change(self, params, old, new, state, key, is_update) -> ParamReset:
        """Newly grown weights start at ``grow_init`` (zeros, the reference's)."""
        if self.grow_init is jax.nn.initializers.zeros:
            return SparseAlgorithm.on_mask_change(self, params, old, new, state, key, is_update)

        def draw(index, p):  # only on mask-update steps, not on every step
            return lax.cond(
                is_update,
                lambda: self.grow_init(jax.random.fold_in(key, index), p.shape, p.dtype),
                lambda: jnp.zeros(p.shape, p.dtype),
            )

        return ParamReset(grown_values(params, old, draw), newly_active(old, new))

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``3 f_S`` per step; RigL's mask-update steps cost ``2 f_S + f_D`` (the dense weight gradient).

        The paper's average ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` counts the update as one step
        added to every ``dT``; here the update steps are counted exactly from the schedule. Any
        score other than ``|theta|`` and random is taken to need the dense gradient, like RigL's.
        """
        del trainable_density, names, plans
        if self.grow_score in _GRADIENT_FREE_SCORES and self.drop_score in _GRADIENT_FREE_SCORES:
            return sparse_forward_cost(flops, forward_density)
        return dense_gradient_update_cost(self, flops, forward_density, total_steps)


def drop_and_regrow(
    plan: LayerPlan,
    mask: jax.Array,
    keep_scores: jax.Array,
    grow_scores: jax.Array,
    dropped: jax.typing.ArrayLike,
    keep_seed: jax.typing.ArrayLike,
    grow_seed: jax.typing.ArrayLike,
) -> jax.Array:
    """One layer's drop and grow: the new mask, with every row's count unchanged.

    The ``a - d`` highest ``keep_scores`` of the ``a`` active entries stay, chosen across the whole
    layer (exact radix select). Each row then regrows as many entries as it lost, the highest
    ``grow_scores`` among its entries not kept: for one row (unstructured, blocks, channels) that is
    ``d``, the RigL rule; under N:M each group of ``m`` regrows what it lost, and under constant
    fan-in each neuron tops back up to ``k``, as the SRigL reference regrows per neuron. Dropping
    per row instead would round ``floor(f n)`` to 0 for every 2:4 group (``n = 2``), and masks would
    never change.

    Args:
      plan: the layer's plan.
      mask: its current mask (group level).
      keep_scores, grow_scores: group scores of the mask's shape.
      dropped: ``d``, how many active entries the layer drops (a traced int is fine).
      keep_seed, grow_seed: tie seeds of the two selections.
    """
    kept = top_k_mask(keep_scores, plan.active - dropped, candidates=mask, tie_seed=keep_seed)
    regrow = dropped if plan.rows == 1 else plan.row_active - plan.structure.row_sums(kept)
    return kept | plan.structure.select(grow_scores, regrow, candidates=~kept, tie_seed=grow_seed)


def dense_gradient_update_cost(
    algorithm: SparseAlgorithm, flops: np.ndarray, forward_density: np.ndarray, total_steps: int
) -> float:
    """RigL's cost: ``3 f_S`` per step, ``2 f_S + f_D`` on the algorithm's mask-update steps (the dense gradient)."""
    sparse, dense = forward_density @ flops, flops.sum()
    updates = int(np.count_nonzero(np.asarray(algorithm.is_update_step(np.arange(total_steps)))))
    total = 3.0 * sparse * (total_steps - updates) + (2.0 * sparse + dense) * updates
    return float(total / (3.0 * dense * total_steps))


def grad_leaves(params: Params, grads: Params | None) -> list[jax.Array | None]:
    """Gradient leaves aligned with the parameter leaves (``None`` when no grads are given).

    Raises:
      ValueError: ``grads`` does not have the params' structure or shapes.
    """
    n_leaves = len(jax.tree.leaves(params))
    if grads is None:
        return [None] * n_leaves
    if jax.tree.structure(grads) != jax.tree.structure(params):
        raise ValueError(
            "grads do not match params: pass the gradient of the loss with respect to the same "
            f"parameter pytree (got structure {jax.tree.structure(grads)}, expected "
            f"{jax.tree.structure(params)})."
        )
    for (path, p), g in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(grads), strict=True):
        if jnp.shape(g) != jnp.shape(p):
            raise ValueError(f"gradient of {leaf_name(path)!r} has shape {jnp.shape(g)}, expected {jnp.shape(p)}.")
    return jax.tree.leaves(grads)


def _drop_and_grow(
    name: str,
    grow_score: Score,
    sparsity: float,
    distribution: str,
    update_every: int,
    begin_step: int,
    end_step: int | None,
    drop_fraction: float | Schedule,
    drop_fraction_decay: str,
    skip_optimizer_on_update: bool,
    grow_init: jax.nn.initializers.Initializer,
    regularizer: Regularizer | None,
    layout_options: dict,
) -> DropAndGrow:
    schedule = UpdateSchedule(begin_step, end_step, update_every)
    return DropAndGrow(
        name=name,
        layout=make_layout(sparsity, distribution, layout_options),
        schedule=schedule,
        drop_fraction=drop_fraction_schedule(drop_fraction, drop_fraction_decay, schedule),
        grow_score=grow_score,
        skip_optimizer_on_update=skip_optimizer_on_update,
        grow_init=grow_init,
        regularizer=regularizer,
    )


def set_(
    sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 100,
    begin_step: int = 0,
    end_step: int | None = None,
    drop_fraction: float | Schedule = 0.3,
    drop_fraction_decay: str = "cosine",
    skip_optimizer_on_update: bool = True,
    grow_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> DropAndGrow:
    """SET: drop the smallest-magnitude weights, regrow uniformly at random.

    Every ``update_every`` steps in ``[begin_step, end_step]``, each layer with ``n`` active weights
    drops ``floor(n f_t)`` by ``|theta|`` and grows as many uniformly at random among the rest.

    Args:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      update_every: steps between mask updates.
      begin_step: first step that updates masks (0 updates on the very first step).
      end_step: last step that may update masks (``None``: never stop; then use a constant decay).
      drop_fraction: ``alpha``, or a schedule ``step -> f_t``.
      drop_fraction_decay: ``"cosine"`` (RigL's, from ``alpha`` at ``begin_step`` to 0 at
        ``end_step``) or ``"constant"``.
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (RigL reference).
      grow_init: initializer of grown weights (zeros, as in the RigL codebase).
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = set_(0.9, end_step=1000)
      >>> algo.name
      'set'

    References:
      Mocanu et al., Nature Communications 9, 2383 (2018).
    """
    return _drop_and_grow(
        "set", random, sparsity, distribution, update_every, begin_step, end_step, drop_fraction,
        drop_fraction_decay, skip_optimizer_on_update, grow_init, regularizer, layout_options,
    )  # fmt: skip


def rigl(
    sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 100,
    begin_step: int = 0,
    end_step: int | None = None,
    drop_fraction: float | Schedule = 0.3,
    drop_fraction_decay: str = "cosine",
    skip_optimizer_on_update: bool = True,
    grow_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> DropAndGrow:
    """RigL: drop the smallest-magnitude weights, regrow where the dense gradient is largest.

    Like :func:`set_`, but growth takes the top ``floor(n f_t)`` inactive positions by
    ``|dL/d(theta * m)|``, the dense gradient with respect to the masked weights.

    Args:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      update_every: steps between mask updates (``Delta T``; the paper uses 100).
      begin_step: first step that updates masks.
      end_step: last step that may update masks (the paper: about 75% of training).
      drop_fraction: ``alpha`` (0.3 in the paper), or a schedule ``step -> f_t``.
      drop_fraction_decay: ``"cosine"`` (the paper's) or ``"constant"``.
      skip_optimizer_on_update: apply no optimizer step on mask-update steps (the reference's).
      grow_init: initializer of grown weights (zeros, as in the reference).
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = rigl(0.9, distribution="erk", update_every=100, end_step=7_500, drop_fraction=0.3)
      >>> round(float(algo.drop_fraction(0)), 6), float(algo.drop_fraction(7_500))
      (0.3, 0.0)

    References:
      Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners",
      ICML 2020.
    """
    return _drop_and_grow(
        "rigl", gradient_magnitude, sparsity, distribution, update_every, begin_step, end_step,
        drop_fraction, drop_fraction_decay, skip_optimizer_on_update, grow_init, regularizer, layout_options,
    )  # fmt: skip


DROP_FRACTION = Option(
    "drop_fraction",
    float,
    0.3,
    "fraction of active weights dropped and regrown per update (set, rigl)",
    valid=lambda value, settings: 0.0 <= value <= 1.0,
    rule="must be in [0, 1], e.g. 0.3",
)


def _builder(factory):
    def build(settings: Settings) -> DropAndGrow:
        return factory(
            settings.sparsity, drop_fraction=settings.options["drop_fraction"], **settings.factory_keywords()
        )

    return build


register(
    Method(
        "set",
        _builder(set_),
        "drop the smallest |w|, regrow at random (Mocanu et al. 2018)",
        (DROP_FRACTION,),
        accepts_init=True,
    )
)
register(
    Method(
        "rigl",
        _builder(rigl),
        "drop the smallest |w|, regrow the largest |grad| (Evci et al. 2020)",
        (DROP_FRACTION,),
        accepts_init=True,
    )
)
