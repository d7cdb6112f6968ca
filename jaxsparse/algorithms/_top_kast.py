"""Top-KAST: Top-K Always Sparse Training (Jayakumar et al. 2020).

Parameters ``theta`` are stored densely. In each layer:

* the **forward set** ``A`` holds the top ``D`` fraction of weights by ``|theta|``; the forward pass
  sees ``alpha = theta * A``;
* the **backward set** ``B`` holds the top ``D + M`` fraction (so ``A`` is a subset of ``B``: both are
  prefixes of one total order); the gradient ``dL/d alpha`` is applied to ``theta`` on ``B`` only,
  and parameters outside ``B`` keep their values.

Both sets are recomputed from ``|theta|`` every ``update_every`` steps (the paper recomputes every
step and reports no loss at every 100).

**Exploration penalty.** Weights in ``B \\ A`` must earn their way into ``A``, so they are
penalised more than active weights. We implement the squared-L2 form

.. math::

    R(\\theta) = \\frac{\\lambda}{2} \\Big( \\sum_{i \\in A} \\theta_i^2
                 + \\frac{1}{D} \\sum_{i \\in B \\setminus A} \\theta_i^2 \\Big),
    \\qquad \\nabla R = \\lambda\\, \\theta \\odot \\big(\\mathbb{1}_A + \\tfrac{1}{D}\\mathbb{1}_{B\\setminus A}\\big)

with ``D`` the layer's forward density. The paper states an L2 penalty on ``B`` whose ``B \\ A``
part is scaled by ``1/D``, without settling the squared form; we use the squared norm because it
is smooth at 0 (no sign flip-flop of sparse weights), reduces to ordinary weight decay on ``A``,
and its gradient is well defined for every weight. Parameters outside ``B`` are not penalised. The
penalty is the algorithm's :class:`ExplorationPenalty` regulariser.

References:
  Jayakumar, Pascanu, Rae, Osindero, Elsen, "Top-KAST: Top-K Always Sparse Training",
  NeurIPS 2020, Sections 2.1-2.3.
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm, layer_key, masked_backward_cost
from jaxsparse.algorithms._factory_options import make_layout
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import MaskPair, Masks, Params, SparsityLayout, mask_leaves, masks_from_leaves
from jaxsparse.regularizers import Regularizer, as_schedule
from jaxsparse.schedules import Schedule, UpdateSchedule

__all__ = ["ExplorationPenalty", "TopKast", "top_kast"]


@typing.final
@dataclasses.dataclass(frozen=True)
class ExplorationPenalty(Regularizer):
    """Top-KAST's ``R = lambda/2 (sum_A theta^2 + 1/D sum_{B \\ A} theta^2)`` on a :class:`MaskPair`.

    Attributes:
      strength: ``lambda``, a float or a schedule.
    """

    strength: float | Schedule

    def __post_init__(self):
        object.__setattr__(self, "strength", as_schedule(self.strength, "penalty"))

    def _weights(self, params: Params, masks: MaskPair, plans) -> list[jax.Array | None]:
        """``1_A + 1_{B \\ A} / D_l`` per sparsified leaf, expanded to the parameter's shape."""
        weights = []
        for param, plan, a, b in zip(
            jax.tree.leaves(params),
            plans,
            mask_leaves(params, masks.forward),
            mask_leaves(params, masks.backward),
            strict=True,
        ):
            if plan is None:
                weights.append(None)
                continue
            a, b = plan.structure.expand(a, plan.shape), plan.structure.expand(b, plan.shape)
            density = plan.active / plan.size
            weights.append(jnp.where(a, 1.0, jnp.where(b, 1.0 / density, 0.0)).astype(param.dtype))
        return weights

    def value(self, params: Params, masks: MaskPair, plans, step) -> jax.Array:
        terms = [
            jnp.sum(w * jnp.square(p)).astype(jnp.float32)
            for p, w in zip(jax.tree.leaves(params), self._weights(params, masks, plans), strict=True)
            if w is not None
        ]
        return 0.5 * jnp.asarray(self.strength(step), jnp.float32) * sum(terms)

    def gradient(self, params: Params, masks: MaskPair, plans, step) -> Params:
        """``lambda * theta * (1_A + 1_{B \\ A} / D_l)``; zero outside ``B`` and at dense leaves."""
        strength = self.strength(step)
        leaves = [
            jnp.zeros_like(p) if w is None else jnp.asarray(strength, p.dtype) * w * p
            for p, w in zip(jax.tree.leaves(params), self._weights(params, masks, plans), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), leaves)


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKast(SparseAlgorithm):
    """Top-KAST with forward layout ``layout`` (set A) and ``backward_layout`` (set B).

    Its masks are a :class:`~jaxsparse.masks.MaskPair`: the forward pass sees ``theta * A`` with the
    gradient restricted to ``B``, the optimizer trains ``B``, and weights are stored densely.

    Attributes:
      layout: the layout of ``A``.
      backward_layout: the layout of ``B``; its sparsity is at most the forward sparsity.
      schedule: the recomputation grid of ``A`` and ``B``.
      regularizer: the exploration penalty (``None`` disables it).
      skip_optimizer_on_update: apply no optimizer step when the sets are recomputed.
    """

    name: str = "top_kast"
    layout: SparsityLayout
    backward_layout: SparsityLayout
    schedule: UpdateSchedule
    regularizer: Regularizer | None = None
    skip_optimizer_on_update: bool = False

    stores_dense: typing.ClassVar[bool] = True

    def __post_init__(self):
        if self.backward_layout.sparsity > self.layout.sparsity:
            raise ValueError(
                f"backward_sparsity={self.backward_layout.sparsity} exceeds forward_sparsity="
                f"{self.layout.sparsity}: the backward set B must contain the forward set A, so use "
                "backward_sparsity <= forward_sparsity (e.g. 0.8 with 0.9)."
            )

    def _select(self, params: Params, key: jax.Array) -> MaskPair:
        forward_plans = self.layout.plan(params)
        backward_plans = self.backward_layout.plan(params)
        forward, backward = [], []
        for index, (param, a_plan, b_plan) in enumerate(
            zip(jax.tree.leaves(params), forward_plans, backward_plans, strict=True)
        ):
            if a_plan is None:
                forward.append(None)
                backward.append(None)
                continue
            if a_plan.zeros == 0:  # a layer saturated to dense: A = B = everything
                forward.append(jnp.ones(a_plan.mask_shape, bool))
                backward.append(jnp.ones(a_plan.mask_shape, bool))
                continue
            scores = a_plan.structure.group_scores(jnp.abs(param))
            seed = jax.random.bits(layer_key(key, index), (), jnp.uint32)
            # One score array and one tie seed give one total order, so A (a shorter prefix of
            # it) is always inside B, even among tied magnitudes.
            forward.append(a_plan.structure.select(scores, a_plan.row_active, tie_seed=seed))
            backward.append(a_plan.structure.select(scores, max(a_plan.row_active, b_plan.row_active), tie_seed=seed))
        return MaskPair(masks_from_leaves(params, forward), masks_from_leaves(params, backward))

    def init_masks(self, params: Params, key: jax.Array) -> MaskPair:
        """``A`` and ``B`` from the initial magnitudes."""
        return self._select(params, key)

    def update_rule(
        self, params: Params, masks: MaskPair, grads, step, key: jax.Array, state: AlgorithmState
    ) -> tuple[MaskPair, AlgorithmState]:
        """Recompute ``A`` and ``B`` from the current ``|theta|`` (gradients are not used)."""
        del masks, grads, step
        return self._select(params, key), state

    def forward_masks(self, masks: MaskPair) -> Masks:
        """The forward set ``A``."""
        return masks.forward

    def trainable_masks(self, masks: MaskPair) -> Masks:
        """The backward set ``B``: the weights the optimizer trains."""
        return masks.backward

    def gradient_masks(self, masks: MaskPair) -> Masks:
        """``B``: the gradient of ``theta * A`` flows to ``theta`` on ``B`` only (eq. 3)."""
        return masks.backward

    def on_mask_change(self, params, old, new, state, key, is_update) -> None:
        """Nothing: weights are stored densely, so a weight entering ``B`` resumes from its stored value."""
        del params, old, new, state, key, is_update

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``(2 f_A + f_B) / 3 f_D``: the forward pass and the input gradient on ``A``, the weight gradient on ``B``."""
        del total_steps, names, plans
        return masked_backward_cost(flops, forward_density, trainable_density)


def top_kast(
    forward_sparsity: float,
    backward_sparsity: float,
    *,
    distribution: str = "erk",
    update_every: int = 1,
    begin_step: int = 0,
    end_step: int | None = None,
    penalty: float | Schedule = 1e-4,
    skip_optimizer_on_update: bool = False,
    **layout_options,
) -> TopKast:
    """Top-KAST: forward on the top ``D`` weights, train the top ``D + M``.

    Args:
      forward_sparsity: sparsity of the forward set ``A`` (``1 - D``).
      backward_sparsity: sparsity of the backward set ``B`` (``1 - D - M``), at most
        ``forward_sparsity``.
      distribution: how both sparsities are laid out over layers.
      update_every: steps between recomputations of ``A`` and ``B`` (the paper: every step).
      begin_step: first recomputation step.
      end_step: last recomputation step (``None``: to the end of training).
      penalty: exploration-penalty coefficient ``lambda`` or its schedule (0 disables it; see
        :class:`ExplorationPenalty`).
      skip_optimizer_on_update: apply no optimizer step when the sets are recomputed.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields. With a structure,
        ``B`` has the same one at its own sparsity (under 2:4 and a backward sparsity of 25%, ``B``
        is 3:4).

    Returns:
      The algorithm.

    Example:
      >>> algo = top_kast(0.9, 0.8)
      >>> algo.layout.sparsity, algo.backward_layout.sparsity
      (0.9, 0.8)

    References:
      Jayakumar et al., "Top-KAST: Top-K Always Sparse Training", NeurIPS 2020.
    """
    layout = make_layout(forward_sparsity, distribution, layout_options)
    return TopKast(
        layout=layout,
        backward_layout=layout.at_sparsity(backward_sparsity),
        schedule=UpdateSchedule(begin_step, end_step, update_every),
        regularizer=ExplorationPenalty(penalty) if callable(penalty) or penalty != 0 else None,
        skip_optimizer_on_update=skip_optimizer_on_update,
    )


def _backward_sparsity(settings: Settings) -> float:
    """The option, or by default a backward set twice as dense as the forward set: ``1 - 2(1 - S)``.

    Jayakumar et al. 2020 train e.g. 80% sparse backward for 90% sparse forward.
    """
    chosen = settings.options["backward_sparsity"]
    return max(0.0, 2.0 * settings.sparsity - 1.0) if chosen is None else chosen


def _build(settings: Settings) -> TopKast:
    return top_kast(settings.sparsity, _backward_sparsity(settings), **settings.factory_keywords())


BACKWARD_SPARSITY = Option(
    "backward_sparsity",
    float,
    None,
    "top_kast: sparsity of the backward set, <= --sparsity (default: 2*sparsity-1, at least 0)",
    valid=lambda value, settings: value is None or 0.0 <= value <= settings.sparsity,
    rule="must be in [0, sparsity] (Top-KAST trains a superset of the forward weights)",
)
register(
    Method(
        "top_kast", _build, "forward on the top-D |w|, train the top D+M (Jayakumar et al. 2020)", (BACKWARD_SPARSITY,)
    )
)
