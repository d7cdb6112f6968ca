"""The algorithm value: static hyperparameters plus pure mask-update functions.

An algorithm is a frozen dataclass. Its behaviour is four pure functions of arrays:

* ``init_masks(params, key) -> masks``: the masks at step 0;
* ``is_update_step(step) -> bool``: whether ``step`` is on the mask-update grid;
* ``update_rule(params, masks, grads, step, key) -> masks``: the new masks, unconditionally;
* ``update(params, masks, grads, step, key) -> masks``: ``update_rule`` on update steps, the old
  masks otherwise (a ``lax.cond``, so one compiled function serves every step).

Everything else (which leaves, how sparse, when) is resolved from shapes in Python, so it costs
nothing at run time and cannot differ between devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse.masks import (
    LayerPlan,
    MaskPair,
    Masks,
    Params,
    SparsityLayout,
    check_masks,
    forward_masks,
    random_masks,
)
from jaxsparse.schedules import UpdateSchedule

__all__ = ["SparseAlgorithm", "layer_key"]


def layer_key(key: jax.Array, leaf_index: int) -> jax.Array:
    """The key of one parameter leaf within one step: ``fold_in(key, leaf_index)``."""
    return jax.random.fold_in(key, leaf_index)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseAlgorithm:
    """Base of all algorithms: a layout, an update schedule and the optimizer interplay.

    Attributes:
      name: the algorithm's name (``"static"`` for this base, which never changes masks).
      layout: which leaves are sparsified and at what sparsity.
      schedule: the mask-update grid; ``None`` means the masks never change.
      skip_optimizer_on_update: on a mask-update step, apply no optimizer step (the RigL
        reference's behaviour) and only move weights onto the new masks.
      grow_init: ``jax.nn.initializers``-style ``init(key, shape, dtype)`` for newly grown weights.
    """

    name: str = "static"
    layout: SparsityLayout
    schedule: UpdateSchedule | None = None
    skip_optimizer_on_update: bool = True
    grow_init: jax.nn.initializers.Initializer = jax.nn.initializers.zeros

    def plan(self, params: Params) -> list[LayerPlan | None]:
        """The static per-leaf plan (``None`` for dense leaves) for these params."""
        return self.layout.plan(params)

    def init_masks(self, params: Params, key: jax.Array) -> Masks | MaskPair:
        """Uniformly random masks with exactly ``floor(S_l * N_l)`` zeros per layer."""
        return random_masks(key, params, self.plan(params))

    def is_update_step(self, step: jax.typing.ArrayLike) -> jax.Array:
        """Whether the masks change at ``step``."""
        if self.schedule is None:
            return jnp.asarray(False)
        return self.schedule.is_update_step(step)

    def update_rule(
        self, params: Params, masks: Masks | MaskPair, grads: Params | None, step: jax.Array, key: jax.Array
    ) -> Masks | MaskPair:
        """The new masks, regardless of the schedule. Static masks never change."""
        del params, grads, step, key
        return masks

    def update(
        self,
        params: Params,
        masks: Masks | MaskPair,
        grads: Params | None,
        step: jax.typing.ArrayLike,
        key: jax.Array,
    ) -> Masks | MaskPair:
        """The pure mask update: ``update_rule`` on scheduled steps, else the masks unchanged.

        Args:
          params: current parameters.
          masks: current masks (as returned by ``init_masks`` or a previous ``update``).
          grads: dense gradients ``dL/d(theta * m)`` (needed by gradient-based growth).
          step: the optimizer step, 0 for the first update.
          key: the key of this step; the same ``(key, step)`` always gives the same masks.

        Returns:
          The masks after this step, of the same structure, with exact per-layer counts.
        """
        if params is None:
            raise ValueError(f"{self.name}.update needs params: pass the current parameter pytree.")
        check_masks(params, forward_masks(masks))
        if self.schedule is None:
            return masks
        step = jnp.asarray(step, jnp.int32)
        return lax.cond(
            self.is_update_step(step),
            lambda: self.update_rule(params, masks, grads, step, key),
            lambda: masks,
        )

    def regularizer_gradient(self, params: Params, masks: Masks | MaskPair) -> Params | None:
        """Gradient of an algorithm-specific penalty added to the loss gradient (default: none)."""
        del params, masks
        return None
