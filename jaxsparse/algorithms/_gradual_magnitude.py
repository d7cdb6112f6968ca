"""Gradual magnitude pruning (Zhu & Gupta 2017).

Training starts dense (or at ``initial_sparsity``) and, at each step of the update grid, prunes
the smallest-magnitude weights until the scheduled sparsity ``s_t`` is reached; pruned weights stay
pruned. With a per-layer distribution, layer ``l`` with final sparsity ``S_l`` follows the global
ramp proportionally, ``s_{l,t} = S_l * s_t / S``, so with ``initial_sparsity = 0`` every layer
follows the polynomial ramp towards its own target and lands exactly on ``floor(S_l N_l)`` zeros
at ``end_step``. With ``scope="global"`` one magnitude threshold is shared by all layers and only
the total count is fixed.

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression", 2017.
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm
from jaxsparse.algorithms._factory_options import check_pooled_scope, make_layout
from jaxsparse.algorithms._magnitude_pruning import SCOPES, prune_by_magnitude, ramp_training_flops
from jaxsparse.algorithms._registry import Method, Settings, register
from jaxsparse.masks import Masks, Params, SparsityLayout
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import Schedule, UpdateSchedule, polynomial_sparsity

__all__ = ["GradualMagnitude", "gradual_magnitude"]


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class GradualMagnitude(SparseAlgorithm):
    """Prune by ``|theta|`` on a sparsity ramp ``s_t``.

    Attributes:
      layout: the final layout (sparsity ``S`` per layer).
      schedule: the pruning grid.
      sparsity_schedule: ``s_t``, the global sparsity at step ``t`` (ends at ``layout.sparsity``).
      initial_sparsity: ``s_{t_0}``; the masks at step 0 keep the largest weights at this level.
      scope: ``"layer"`` (each layer follows its own target) or ``"global"`` (one threshold).
      skip_optimizer_on_update: apply no optimizer step on pruning steps.
      regularizer: an optional penalty.
    """

    name: str = "gradual_magnitude"
    layout: SparsityLayout
    schedule: UpdateSchedule
    sparsity_schedule: Schedule
    initial_sparsity: float = 0.0
    scope: str = "layer"
    skip_optimizer_on_update: bool = False
    regularizer: Regularizer | None = None

    fixed_counts: typing.ClassVar[bool] = False

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose 'layer' or 'global'.")
        check_pooled_scope(self.scope, self.layout, "scope")

    def _prune(self, params: Params, masks: Masks | None, sparsity, at_end, key: jax.Array) -> Masks:
        """Keep the largest ``|theta|`` (among ``masks``) at global sparsity ``sparsity`` (exact at the end)."""
        return prune_by_magnitude(self.layout, params, masks, sparsity, at_end, key, self.scope)

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """The largest-magnitude weights at ``initial_sparsity`` (all weights when it is 0)."""
        return self._prune(params, None, self.initial_sparsity, False, key)

    def update_rule(
        self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array, state: AlgorithmState
    ) -> tuple[Masks, AlgorithmState]:
        """Keep the largest ``|theta|`` among active weights, at sparsity ``s_t``."""
        del grads
        at_end = jnp.asarray(step) >= self.schedule.end_step
        return self._prune(params, masks, self.sparsity_schedule(step), at_end, key), state

    def _sparsity_in_effect(self, total_steps: int) -> np.ndarray:
        """The global sparsity of the masks the forward pass of each step ``0 .. total_steps-1`` sees.

        The masks start at ``initial_sparsity``; an update at step ``u`` (computed after step ``u``'s
        gradients) sets them to the ramp's ``s_u``, which steps ``u + 1, ...`` then use.
        """
        steps = np.arange(total_steps)
        updates = np.asarray(self.is_update_step(steps))
        ramp = np.asarray(self.sparsity_schedule(steps), dtype=np.float64)
        last = np.maximum.accumulate(np.where(updates, steps, -1))
        after = np.where(last >= 0, ramp[np.maximum(last, 0)], self.initial_sparsity)
        return np.concatenate([[self.initial_sparsity], after[:-1]])

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``3 f_S(t)`` averaged over the steps, at the sparsity the ramp set at the last update before ``t``.

        Each layer ``l`` is taken at sparsity ``S_l s_t / S``, with ``S_l`` its final sparsity in the
        given masks (exact for ``scope="layer"``, the proportional estimate for ``scope="global"``;
        Zhu & Gupta 2017).
        """
        del trainable_density, names, plans
        return ramp_training_flops(flops, forward_density, self.layout.sparsity, self._sparsity_in_effect(total_steps))


def gradual_magnitude(
    sparsity: float,
    *,
    distribution: str = "erk",
    begin_step: int = 0,
    end_step: int,
    update_every: int = 100,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
    scope: str = "layer",
    skip_optimizer_on_update: bool = False,
    regularizer: Regularizer | None = None,
    **layout_options,
) -> GradualMagnitude:
    """Gradual magnitude pruning on Zhu & Gupta's polynomial ramp.

    Every ``update_every`` steps from ``begin_step`` to ``end_step`` the smallest-magnitude active
    weights are pruned to the scheduled sparsity
    ``s_t = S + (s_i - S)(1 - (t - t_0)/(t_end - t_0))^power``.

    Args:
      sparsity: final global sparsity ``S`` in ``[0, 1)``.
      distribution: how ``S`` is split over layers (ignored by ``scope="global"``).
      begin_step: ``t_0``, the first pruning step.
      end_step: ``t_end``, the step at which ``S`` is reached.
      update_every: ``Delta t`` between pruning steps.
      initial_sparsity: ``s_i``; training starts from the top weights at this sparsity.
      power: exponent of the ramp (3 in the paper).
      scope: ``"layer"`` (each layer reaches its own target) or ``"global"`` (one threshold).
      skip_optimizer_on_update: apply no optimizer step on pruning steps.
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Returns:
      The algorithm.

    Example:
      >>> algo = gradual_magnitude(0.9, begin_step=0, end_step=1000)
      >>> round(float(algo.sparsity_schedule(500)), 4)
      0.7875

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017.
    """
    layout = make_layout(sparsity, distribution, layout_options)
    sparsity = layout.sparsity  # None under N:M: the structure's
    if not 0.0 <= initial_sparsity <= sparsity:
        raise ValueError(f"initial_sparsity={initial_sparsity!r} must be in [0, sparsity={sparsity}].")
    return GradualMagnitude(
        layout=layout,
        schedule=UpdateSchedule(begin_step, end_step, update_every),
        sparsity_schedule=polynomial_sparsity(sparsity, begin_step, end_step, initial_sparsity, power),
        initial_sparsity=initial_sparsity,
        scope=scope,
        skip_optimizer_on_update=skip_optimizer_on_update,
        regularizer=regularizer,
    )


def _build(settings: Settings) -> GradualMagnitude:
    return gradual_magnitude(settings.sparsity, **settings.factory_keywords())


register(Method("gradual_magnitude", _build, "prune the smallest |w| on the cubic ramp (Zhu & Gupta 2017)"))
