"""N:M training with the straight-through estimator, plain (STE) or sparse-refined (SR-STE, Zhou et al. 2021).

Weights ``W`` are stored densely and trained densely. Every forward pass recomputes the N:M mask
``m = nm(|W|)`` (the ``n`` largest magnitudes of every ``m`` consecutive weights along the
reduction axis, :class:`~jaxsparse.masks.NM`) and runs on ``W * m``. The gradient passes straight
through the mask, so the optimizer updates every weight, pruned ones included:

* **STE** (the baseline): ``W <- W - lr * g`` with ``g = dL/d(W * m)``;
* **SR-STE** adds a decay of the pruned weights to that gradient,

  .. math::

      \\tilde g = g + \\lambda_W \\, (1 - m) \\odot W, \\qquad \\lambda_W = 2 \\cdot 10^{-4},

  which is the gradient of ``lambda_W / 2 * ||(1 - m) * W||^2`` with ``m`` held fixed (Zhou et al.
  2021; the reference code, ``devkit/sparse_ops/sparse_ops.py``, adds the term in the masked
  layer's backward pass, before SGD's momentum and weight decay). It is this algorithm's
  :class:`SparseRefinedDecay` regulariser, so it enters the inner optimizer like any penalty
  gradient.

Inference runs on ``W * nm(|W|)``: :meth:`NMSte.forward_params` computes the mask of the params it
is given. The stored mask (``masks_of(state)``) is the one of the last training forward pass, i.e.
of the params before the latest optimizer step. Any structure can be trained this way; the
factories default to 2:4.

References:
  Zhou, Ma, Zhu, Liu, Zhang, Yuan, Sun, Li, "Learning N:M Fine-grained Structured Sparse Neural
  Networks From Scratch", ICLR 2021 (code: github.com/aojunzz/NM-sparsity).
  Bengio, Leonard, Courville, "Estimating or Propagating Gradients Through Stochastic Neurons for
  Conditional Computation", 2013 (the straight-through estimator).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._base import AlgorithmState, SparseAlgorithm, masked_backward_cost
from jaxsparse.algorithms._factory_options import make_layout
from jaxsparse.algorithms._registry import Method, Option, Settings, register
from jaxsparse.masks import (
    NM,
    LayerPlan,
    Masks,
    Params,
    SparsityLayout,
    Structure,
    masked,
    masks_from_leaves,
)
from jaxsparse.regularizers import Regularizer, as_schedule
from jaxsparse.schedules import Schedule, UpdateSchedule

__all__ = ["NMSte", "SparseRefinedDecay", "magnitude_masks", "nm_sr_ste", "nm_ste"]

TWO_FOUR = NM(2, 4)
"""The default structure: 2:4 along the reduction axis, what sparse tensor cores run."""

SR_STE_DECAY = 2e-4
"""``lambda_W``, the paper's default (Zhou et al. 2021; ``aojunzz/NM-sparsity``, ``sparse_ops.py``)."""


def magnitude_masks(params: Params, plans: Sequence[LayerPlan | None]) -> list[jax.Array | None]:
    """Per leaf, the plan's count of largest ``|theta|`` entries per row (ties by position, seed 0)."""
    return [
        None if plan is None else plan.structure.select(plan.structure.group_scores(jnp.abs(p)), plan.row_active)
        for plan, p in zip(plans, jax.tree.leaves(params), strict=True)
    ]


@typing.final
@dataclasses.dataclass(frozen=True)
class SparseRefinedDecay(Regularizer):
    """SR-STE's ``R = lambda_W / 2 * sum ((1 - m) * W)^2`` with ``m = nm(|W|)`` held fixed.

    The mask is recomputed from the params, as the forward pass does, so the decay hits exactly the
    weights this step's forward pass pruned.

    Attributes:
      strength: ``lambda_W``, a float or a schedule.
    """

    strength: float | Schedule

    def __post_init__(self):
        object.__setattr__(self, "strength", as_schedule(self.strength, "sr_ste_decay"))

    def _pruned(self, params: Params, plans) -> list[jax.Array | None]:
        """``1 - m`` at every sparsified leaf, in the params' dtype, expanded to the parameter's shape."""
        return [
            None if m is None else (~plan.structure.expand(m, plan.shape)).astype(p.dtype)
            for p, plan, m in zip(jax.tree.leaves(params), plans, magnitude_masks(params, plans), strict=True)
        ]

    def value(self, params: Params, masks: Masks, plans, step) -> jax.Array:
        del masks
        terms = [
            jnp.sum(jnp.square(w * p)).astype(jnp.float32)
            for p, w in zip(jax.tree.leaves(params), self._pruned(params, plans), strict=True)
            if w is not None
        ]
        return 0.5 * jnp.asarray(self.strength(step), jnp.float32) * sum(terms)

    def gradient(self, params: Params, masks: Masks, plans, step) -> Params:
        """``lambda_W * (1 - m) * W`` at sparsified leaves, zero at dense ones."""
        del masks
        strength = self.strength(step)
        leaves = [
            jnp.zeros_like(p) if w is None else jnp.asarray(strength, p.dtype) * w * p
            for p, w in zip(jax.tree.leaves(params), self._pruned(params, plans), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), leaves)


@typing.final
@dataclasses.dataclass(frozen=True, kw_only=True)
class NMSte(SparseAlgorithm):
    """Dense weights, a magnitude mask recomputed in every forward pass, straight-through gradients.

    Attributes:
      layout: the layout (structure N:M by default) whose magnitude mask the forward pass applies.
      schedule: every step, so the stored mask follows the weights.
      regularizer: :class:`SparseRefinedDecay` for SR-STE, ``None`` for plain STE.
      skip_optimizer_on_update: always ``False`` (the mask changes every step).
      name: ``"nm_ste"`` or ``"nm_sr_ste"``.
    """

    name: str = "nm_ste"
    layout: SparsityLayout
    schedule: UpdateSchedule = UpdateSchedule(0, None, 1)
    regularizer: Regularizer | None = None
    skip_optimizer_on_update: bool = False

    stores_dense: typing.ClassVar[bool] = True

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """The magnitude mask of the initial weights."""
        del key
        return masks_from_leaves(params, magnitude_masks(params, self.plan(params)))

    def update_rule(self, params, masks, grads, step, key, state: AlgorithmState) -> tuple[Masks, AlgorithmState]:
        """The magnitude mask of the current weights (those this step's gradients were taken at)."""
        del masks, grads, step, key
        return masks_from_leaves(params, magnitude_masks(params, self.plan(params))), state

    def trainable_masks(self, masks: Masks) -> Masks:
        """Every weight: the straight-through gradient trains pruned weights too."""
        return jax.tree.map(jnp.ones_like, masks)

    def forward_params(self, params: Params, masks: Masks) -> Params:
        """``masked(W, nm(|W|), None)``: the mask of *these* params, the gradient passed straight through."""
        self.check_masks(params, masks)
        plans = self.plan(params)
        leaves = [
            p if m is None else masked(p, plan.structure.expand(m, plan.shape), None)
            for p, plan, m in zip(jax.tree.leaves(params), plans, magnitude_masks(params, plans), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), leaves)

    def on_mask_change(self, params, old, new, state, key, is_update) -> None:
        """Nothing: weights are dense and keep their values."""
        del params, old, new, state, key, is_update

    def training_flops(self, flops, forward_density, trainable_density, total_steps, names, plans) -> float:
        """``(2 f_S + f_D) / 3 f_D``: forward and input gradient on ``W * m``, the weight gradient dense."""
        del total_steps, names, plans
        return masked_backward_cost(flops, forward_density, trainable_density)


def nm_ste(
    structure: Structure = TWO_FOUR,
    *,
    sparsity: float | None = None,
    sr_ste_decay: float | Schedule = 0.0,
    distribution: str = "uniform",
    update_every: int = 1,
    begin_step: int = 0,
    end_step: int | None = None,
    **layout_options,
) -> NMSte:
    """N:M training with the straight-through estimator (plain STE when ``sr_ste_decay`` is 0).

    Args:
      structure: the mask structure (default 2:4 along the reduction axis).
      sparsity: ``None`` for N:M (it fixes ``1 - N/M``); needed for other structures.
      sr_ste_decay: SR-STE's ``lambda_W`` (0: plain STE).
      distribution: for structures that do not fix the sparsity.
      update_every, begin_step, end_step: accepted for a uniform factory signature; the mask is
        recomputed in every forward pass whatever the grid, and the stored mask every step.
      **layout_options: further :class:`~jaxsparse.masks.SparsityLayout` fields.

    Example:
      >>> algo = nm_ste()
      >>> algo.layout.sparsity, algo.regularizer is None
      (0.5, True)
    """
    del update_every, begin_step, end_step
    regularizer = SparseRefinedDecay(sr_ste_decay) if callable(sr_ste_decay) or sr_ste_decay != 0 else None
    return NMSte(
        name="nm_ste" if regularizer is None else "nm_sr_ste",
        layout=make_layout(sparsity, distribution, {"structure": structure, **layout_options}),
        regularizer=regularizer,
    )


def nm_sr_ste(structure: Structure = TWO_FOUR, *, sr_ste_decay: float | Schedule = SR_STE_DECAY, **options) -> NMSte:
    """SR-STE (Zhou et al. 2021): :func:`nm_ste` with the pruned-weight decay ``lambda_W = 2e-4``.

    Example:
      >>> nm_sr_ste().name
      'nm_sr_ste'
    """
    return nm_ste(structure, sr_ste_decay=sr_ste_decay, **options)


def _builder(sr_ste: bool):
    def build(settings: Settings) -> NMSte:
        keywords = settings.factory_keywords()
        structure = keywords.pop("structure", TWO_FOUR)
        decay = settings.options["sr_ste_decay"] if sr_ste else 0.0
        return nm_ste(structure, sparsity=settings.sparsity, sr_ste_decay=decay, **keywords)

    return build


SR_STE_DECAY_OPTION = Option(
    "sr_ste_decay",
    float,
    SR_STE_DECAY,
    "nm_sr_ste: lambda_W, the decay of the weights the N:M mask prunes (Zhou et al. 2021: 2e-4)",
    valid=lambda value, settings: value >= 0,
    rule="must be >= 0",
)
register(
    Method(
        "nm_ste",
        _builder(False),
        "N:M mask from |W| every forward pass, straight-through gradients",
        default_structure="2:4",
    )
)
register(
    Method(
        "nm_sr_ste",
        _builder(True),
        "N:M with SR-STE: straight-through plus lambda_W (1 - m) W on pruned weights (Zhou et al. 2021)",
        (SR_STE_DECAY_OPTION,),
        default_structure="2:4",
    )
)
