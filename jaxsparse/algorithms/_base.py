"""The algorithm protocol: pure functions of ``(params, masks, grads, step)``, plus the hooks every family needs.

An algorithm is an immutable value: a frozen dataclass holding its layout, its update schedule and
its hyperparameters. :class:`SparseAlgorithm` is abstract; every concrete algorithm is final
(equinox's rule), so no algorithm is "the base one" and nothing needs to test types.

**The centre.** Two pure functions give the masks:

* ``init_masks(params, key) -> masks``: the masks at step 0;
* ``update_rule(params, masks, grads, step, key, state) -> (masks, state)``: the new masks,
  unconditionally; ``update`` / ``update_with_state`` run it under ``lax.cond`` on the schedule's
  grid, so one compiled function serves every step.

**The extension points**, each with a default that does nothing:

* *algorithm state* (``init_state``, ``observe``): a pytree carried in the ``sparsify`` state, e.g.
  a momentum statistic or a rewind copy of the weights; ``observe`` updates it on every step.
  Parameter-shaped state should mirror the params tree: it is then sharded and reset like them.
* *how masks are used* (``forward_masks``, ``trainable_masks``, ``gradient_masks``,
  ``stores_dense``): one mask for the forward pass, the optimizer and storage (masked algorithms),
  or Top-KAST's nested ``A`` (forward) inside ``B`` (trained, dense storage).
* *structure*: the layout's :class:`~jaxsparse.masks.Structure` decides the unit a mask entry
  selects; masks are stored at group size and expanded where applied.
* *a regulariser* (``regularizer``): a penalty's gradient and an optional proximal step.
* *parameter actions* (``on_mask_change``): values to give parameters where masks change.
* *a cost model* (``training_flops``, ``inference_flops``): FLOPs relative to dense training.

Everything static (which leaves, how sparse, when) is resolved from shapes in Python, so it costs
nothing at run time and cannot differ between devices.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.masks import (
    LayerPlan,
    Masks,
    Params,
    SparsityLayout,
    check_masks,
    expand_masks,
    mask_leaves,
    masked,
)
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import UpdateSchedule

__all__ = [
    "AlgorithmState",
    "ParamReset",
    "SparseAlgorithm",
    "grown_values",
    "layer_key",
    "masked_backward_cost",
    "newly_active",
    "sparse_forward_cost",
]

AlgorithmState = Any
"""An algorithm's own pytree state (``()`` when it has none)."""


def layer_key(key: jax.Array, leaf_index: int) -> jax.Array:
    """The key of one parameter leaf within one step: ``fold_in(key, leaf_index)``."""
    return jax.random.fold_in(key, leaf_index)


class ParamReset(NamedTuple):
    """Parameter values an algorithm sets where its masks changed, and whether the optimizer restarts.

    Attributes:
      values: a tree like the params; at each leaf, the values to move the parameter to, of its
        shape or a scalar (``None``: leave the leaf alone).
      where: a tree like the params of ``bool`` arrays of the parameters' shapes, where to set them.
      restart_optimizer: a ``bool`` scalar; where true, the inner optimizer's whole state (moments
        and step counters) restarts from its ``init``, as GaP's code restarts Adam each round.
        ``None``: only the slots where masks changed are reset.
      optimizer_step: where the optimizer restarts, the value its integer leaves (step counters,
        hence learning-rate schedules and bias corrections) restart at; ``None``: 0. Rewinding to
        step ``k`` of training (IMP's late rewinding) restarts the schedule at ``k``.
    """

    values: Params
    where: Masks
    restart_optimizer: jax.Array | None = None
    optimizer_step: jax.typing.ArrayLike | None = None


def newly_active(old: Masks, new: Masks) -> Masks:
    """``new & ~old`` at every masked leaf (``None`` elsewhere)."""
    return jax.tree.map(lambda a, b: b & ~a, old, new)


def grown_values(params: Params, masks: Masks, value) -> Params:
    """``value(leaf_index, param)`` at every leaf ``masks`` covers, ``None`` elsewhere (for a :class:`ParamReset`)."""
    leaves = [
        None if m is None else value(index, p)
        for index, (p, m) in enumerate(zip(jax.tree.leaves(params), mask_leaves(params, masks), strict=True))
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


class SparseAlgorithm(abc.ABC):
    """Abstract: a sparse-training algorithm (see the module docstring for the protocol).

    Every concrete algorithm is a frozen, keyword-only dataclass with at least the fields
    ``layout``, ``schedule`` (``None``: masks never change), ``skip_optimizer_on_update`` and
    ``regularizer``, and a ``name``. It is final: subclassing a concrete algorithm raises.
    """

    name: str
    layout: SparsityLayout
    schedule: UpdateSchedule | None
    skip_optimizer_on_update: bool
    regularizer: Regularizer | None

    stores_dense: ClassVar[bool] = False
    """Parameters are stored densely and keep their values off the trainable mask (Top-KAST); otherwise
    they are exactly zero there."""
    fixed_counts: ClassVar[bool] = True
    """Every mask keeps its layout's exact count from step 0 (``False`` for pruning ramps)."""
    replicas: ClassVar[int] = 1
    """How many copies of the model train together (P-GaP: one per partition), each with its own
    masks, exchanging weights over the vmapped axis ``replica_axis``."""
    replica_axis: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if issubclass(base, SparseAlgorithm) and not inspect.isabstract(base):
                raise TypeError(
                    f"{base.__name__} is a final algorithm and cannot be subclassed: derive {cls.__name__} from "
                    "jaxsparse.algorithms.SparseAlgorithm and compose the rules you need (scores, schedules) instead."
                )

    # ----- the layout ---------------------------------------------------------------------------

    def plan(self, params: Params) -> list[LayerPlan | None]:
        """The static per-leaf plan (``None`` for dense leaves) for these params."""
        return self.layout.plan(params)

    # ----- masks ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """The masks at step 0, with exact per-layer counts."""

    @abc.abstractmethod
    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """The new masks and state, regardless of the schedule."""

    def is_update_step(self, step: jax.typing.ArrayLike) -> jax.Array:
        """Whether the masks change at ``step``."""
        if self.schedule is None:
            return jnp.asarray(False)
        return self.schedule.is_update_step(step)

    def update_with_state(
        self,
        params: Params,
        masks: Masks,
        grads: Params | None,
        step: jax.typing.ArrayLike,
        key: jax.Array,
        state: AlgorithmState,
    ) -> tuple[Masks, AlgorithmState]:
        """One step of the algorithm: ``observe``, then ``update_rule`` on scheduled steps.

        Returns:
          The masks and algorithm state after this step.
        """
        if params is None:
            raise ValueError(f"{self.name}.update needs params: pass the current parameter pytree.")
        self.check_masks(params, masks)
        step = jnp.asarray(step, jnp.int32)
        state = self.observe(params, masks, grads, step, state)
        if self.schedule is None:
            return masks, state
        return lax.cond(
            self.is_update_step(step),
            lambda: self.update_rule(params, masks, grads, step, key, state),
            lambda: (masks, state),
        )

    def update(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.typing.ArrayLike, key: jax.Array
    ) -> Masks:
        """The pure mask update: ``update_rule`` on scheduled steps, else the masks unchanged.

        For an algorithm with state this starts from ``init_state``; carry the state with
        :meth:`update_with_state` instead.

        Args:
          params: current parameters.
          masks: current masks (as returned by ``init_masks`` or a previous ``update``).
          grads: dense gradients ``dL/d(theta * m)`` (needed by gradient-based growth).
          step: the optimizer step, 0 for the first update.
          key: the key of this step; the same ``(key, step)`` always gives the same masks.

        Returns:
          The masks after this step, of the same structure, with exact per-layer counts.
        """
        return self.update_with_state(params, masks, grads, step, key, self.init_state(params, masks))[0]

    def check_masks(self, params: Params, masks: Masks) -> None:
        """Raises a ``ValueError`` naming the leaf unless ``masks`` fits this algorithm's layout of ``params``."""
        plans = self.plan(params)
        check_masks(params, self.forward_masks(masks), plans)
        check_masks(params, self.trainable_masks(masks), plans)

    # ----- algorithm state ------------------------------------------------------------------------

    def init_state(self, params: Params, masks: Masks) -> AlgorithmState:
        """The algorithm's own state at step 0 (default: none, ``()``)."""
        del params, masks
        return ()

    def observe(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, state: AlgorithmState
    ) -> AlgorithmState:
        """The state after seeing this step's gradients, on every step (default: unchanged)."""
        del params, masks, grads, step
        return state

    # ----- how the masks are used -----------------------------------------------------------------

    def forward_masks(self, masks: Masks) -> Masks:
        """The masks the forward pass uses (default: the masks)."""
        return masks

    def trainable_masks(self, masks: Masks) -> Masks:
        """The masks of the weights the optimizer updates (default: the masks)."""
        return masks

    def gradient_masks(self, masks: Masks) -> Masks | None:
        """Where the forward pass lets the gradient through; ``None`` passes it straight through, dense."""
        del masks
        return None

    def forward_params(self, params: Params, masks: Masks) -> Params:
        """``masked(theta, forward mask, gradient mask)`` at every sparsified leaf (structure expanded)."""
        self.check_masks(params, masks)
        plans = self.plan(params)
        forward = mask_leaves(params, expand_masks(params, self.forward_masks(masks), plans))
        through = self.gradient_masks(masks)
        gradient = (
            [None] * len(forward) if through is None else mask_leaves(params, expand_masks(params, through, plans))
        )
        leaves = [
            p if f is None else masked(p, f, g)
            for p, f, g in zip(jax.tree.leaves(params), forward, gradient, strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), leaves)

    # ----- parameter actions ----------------------------------------------------------------------

    def on_mask_change(
        self,
        params: Params,
        old: Masks,
        new: Masks,
        state: AlgorithmState,
        key: jax.Array,
        is_update: jax.Array,
    ) -> ParamReset | None:
        """Parameter values to set where the trainable mask changed (default: grown weights restart at 0).

        ``old`` and ``new`` are the trainable masks before and after this step, expanded to the
        parameters' shapes. Restarting grown weights from zero (the RigL reference's and GaP's
        choice) holds even if the parameters were never projected onto the initial masks.
        """
        del state, key, is_update
        return ParamReset(grown_values(params, old, lambda index, p: jnp.zeros((), p.dtype)), newly_active(old, new))

    # ----- the run's length -----------------------------------------------------------------------

    def total_steps(self, steps: int) -> int:
        """How many steps a run takes whose learning-rate schedule spans ``steps`` (default: ``steps``).

        Iterative pruning trains its schedule once per round (:class:`~jaxsparse.algorithms.IterativeMagnitude`).
        """
        return steps

    def round_of(self, step: int) -> int | None:
        """The pruning round step ``step`` belongs to; ``None``: the algorithm has no rounds (default)."""
        del step
        return None

    # ----- cost model -----------------------------------------------------------------------------

    @abc.abstractmethod
    def training_flops(
        self,
        flops: np.ndarray,
        forward_density: np.ndarray,
        trainable_density: np.ndarray,
        total_steps: int,
        names: Sequence[str],
        plans: Sequence[LayerPlan | None],
    ) -> float:
        """Training FLOPs relative to dense training of ``total_steps`` steps (see :mod:`jaxsparse.inspection`).

        An algorithm whose run trains the schedule several times (:meth:`total_steps`) counts all of
        its steps, so its ratio is to one dense training.

        Args:
          flops: dense forward FLOPs of each layer of one step.
          forward_density: each layer's density of the forward mask at the end (1 for dense layers).
          trainable_density: each layer's density of the trainable mask at the end.
          total_steps: the schedule's steps ``0 .. total_steps - 1``.
          names: each layer's leaf name, in the order of ``flops``.
          plans: the layout's plan of the whole params tree (``None`` at dense leaves), for
            algorithms whose cost depends on which layer is which (GaP's dense partition).
        """

    def inference_flops(self, flops: np.ndarray, forward_density: np.ndarray) -> float:
        """``f_S / f_D = sum_l d_l f_l / sum_l f_l`` of the forward masks (Evci et al. 2020)."""
        return float(forward_density @ flops / flops.sum())


def masked_backward_cost(flops: np.ndarray, forward_density: np.ndarray, trainable_density: np.ndarray) -> float:
    """``(2 f_A + f_B) / 3 f_D``: forward, input gradient on the forward mask; weight gradient on the trainable."""
    return float((2.0 * (forward_density @ flops) + trainable_density @ flops) / (3.0 * flops.sum()))


def sparse_forward_cost(flops: np.ndarray, density: np.ndarray) -> float:
    """``3 f_S / 3 f_D``: a training step whose three passes all run at ``density``."""
    return float(3.0 * (density @ flops) / (3.0 * flops.sum()))
