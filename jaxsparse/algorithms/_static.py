"""Static sparse training: uniformly random masks at init that never change.

The baseline every dynamic method is measured against (Evci et al. 2020, "Static"; the random
pruning at initialisation of Liu et al. 2022).

References:
  Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners", ICML 2020.
  Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022.
"""

from __future__ import annotations

import dataclasses
import typing

import jax

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm, sparse_forward_cost
from jaxsparse.algorithms._factory_options import make_layout
from jaxsparse.algorithms._registry import Method, Settings, register
from jaxsparse.masks import Masks, Params, SparsityLayout, random_masks
from jaxsparse.regularizers import Regularizer
from jaxsparse.schedules import UpdateSchedule

__all__ = ["Static", "static"]


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class Static(SparseAlgorithm):
    """Random masks with exactly ``floor(S_l N_l)`` zeros per layer, fixed for the whole run.

    Attributes:
      layout: which leaves are sparsified and at what sparsity.
      regularizer: an optional penalty (e.g. :class:`~jaxsparse.regularizers.GroupLasso`).
    """

    name: str = "static"
    layout: SparsityLayout
    regularizer: Regularizer | None = None
    schedule: UpdateSchedule | None = dataclasses.field(default=None, init=False)
    skip_optimizer_on_update: bool = dataclasses.field(default=False, init=False)

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """Uniformly random masks with exactly ``floor(S_l * N_l)`` zeros per layer."""
        return random_masks(key, params, self.plan(params))

    def update_rule(self, params, masks, grads, step, key, state: AlgorithmState) -> tuple[Masks, AlgorithmState]:
        """Static masks never change."""
        del params, grads, step, key
        return masks, state

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``3 f_S / 3 f_D``: every pass runs on the fixed masks."""
        del trainable_density, total_steps, names, plans
        return sparse_forward_cost(flops, forward_density)


def static(
    sparsity: float, *, distribution: str = "erk", regularizer: Regularizer | None = None, **layout_options
) -> Static:
    """Static sparse training: random masks at init that never change.

    Args:
      sparsity: global sparsity in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      regularizer: an optional penalty added to training.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields (``structure=``, ...).

    Returns:
      The algorithm.

    Example:
      >>> algo = static(0.9)
      >>> algo.layout.distribution
      'erk'
    """
    return Static(layout=make_layout(sparsity, distribution, layout_options), regularizer=regularizer)


def _build(settings: Settings) -> Static:
    return static(settings.sparsity, **settings.layout_keywords())


register(Method("static", _build, "random masks at init, never changed", updates_masks=False, accepts_init=True))
