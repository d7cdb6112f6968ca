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
and its gradient is well defined for every weight. Parameters outside ``B`` are not penalised.

References:
  Jayakumar, Pascanu, Rae, Osindero, Elsen, "Top-KAST: Top-K Always Sparse Training",
  NeurIPS 2020, Sections 2.1-2.3.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._base import SparseAlgorithm, layer_key
from jaxsparse.masks import MaskPair, Params, SparsityLayout, masks_from_leaves
from jaxsparse.selection import top_k_mask

__all__ = ["TopKast"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKast(SparseAlgorithm):
    """Top-KAST with forward layout ``layout`` (set A) and ``backward_layout`` (set B).

    Attributes:
      backward_layout: the layout of ``B``; its sparsity is at most the forward sparsity.
      penalty: the exploration-penalty coefficient ``lambda`` (0 disables it).
    """

    name: str = "top_kast"
    backward_layout: SparsityLayout
    penalty: float = 1e-4

    def __post_init__(self):
        if self.backward_layout.sparsity > self.layout.sparsity:
            raise ValueError(
                f"backward_sparsity={self.backward_layout.sparsity} exceeds forward_sparsity="
                f"{self.layout.sparsity}: the backward set B must contain the forward set A, so use "
                "backward_sparsity <= forward_sparsity (e.g. 0.8 with 0.9)."
            )
        if not self.penalty >= 0:
            raise ValueError(f"penalty must be >= 0, got {self.penalty!r}.")

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
                forward.append(jnp.ones(a_plan.shape, bool))
                backward.append(jnp.ones(a_plan.shape, bool))
                continue
            scores = jnp.abs(param)
            seed = jax.random.bits(layer_key(key, index), (), jnp.uint32)
            # One score array and one tie seed give one total order, so A (a shorter prefix of
            # it) is always inside B, even among tied magnitudes.
            forward.append(top_k_mask(scores, a_plan.active, tie_seed=seed))
            backward.append(top_k_mask(scores, max(a_plan.active, b_plan.active), tie_seed=seed))
        return MaskPair(masks_from_leaves(params, forward), masks_from_leaves(params, backward))

    def init_masks(self, params: Params, key: jax.Array) -> MaskPair:
        """``A`` and ``B`` from the initial magnitudes."""
        return self._select(params, key)

    def update_rule(
        self, params: Params, masks: MaskPair, grads: Params | None, step: jax.Array, key: jax.Array
    ) -> MaskPair:
        """Recompute ``A`` and ``B`` from the current ``|theta|`` (gradients are not used)."""
        del masks, grads, step
        return self._select(params, key)

    def regularizer_gradient(self, params: Params, masks: MaskPair) -> Params | None:
        """``lambda * theta * (1_A + 1_{B \\ A} / D_l)``; zero outside ``B`` and at dense leaves."""
        if self.penalty == 0:
            return None
        plans = self.layout.plan(params)
        leaves = []
        for param, plan, a, b in zip(
            jax.tree.leaves(params),
            plans,
            jax.tree.leaves(masks.forward, is_leaf=lambda x: x is None),
            jax.tree.leaves(masks.backward, is_leaf=lambda x: x is None),
            strict=True,
        ):
            if plan is None:
                leaves.append(jnp.zeros_like(param))
                continue
            density = plan.active / plan.size
            weight = jnp.where(a, 1.0, jnp.where(b, 1.0 / density, 0.0)).astype(param.dtype)
            leaves.append(jnp.asarray(self.penalty, param.dtype) * weight * param)
        return jax.tree.unflatten(jax.tree.structure(params), leaves)
