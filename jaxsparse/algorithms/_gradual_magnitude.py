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

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._base import SparseAlgorithm, layer_key
from jaxsparse.distributions import zeros_count
from jaxsparse.masks import Masks, Params, masks_from_leaves
from jaxsparse.schedules import Schedule
from jaxsparse.selection import global_top_k_masks, top_k_mask

__all__ = ["GradualMagnitude"]

SCOPES = ("layer", "global")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradualMagnitude(SparseAlgorithm):
    """Prune by ``|theta|`` on a sparsity ramp ``s_t``.

    Attributes:
      sparsity_schedule: ``s_t``, the global sparsity at step ``t`` (ends at ``layout.sparsity``).
      initial_sparsity: ``s_{t_0}``; the masks at step 0 keep the largest weights at this level.
      scope: ``"layer"`` (each layer follows its own target) or ``"global"`` (one threshold).
    """

    name: str = "gradual_magnitude"
    sparsity_schedule: Schedule
    initial_sparsity: float = 0.0
    scope: str = "layer"

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose 'layer' or 'global'.")

    def _prune(self, params: Params, masks: Masks | None, sparsity, at_end, key: jax.Array) -> Masks:
        """Keep the largest ``|theta|`` (among ``masks``) at global sparsity ``sparsity``.

        ``at_end`` selects the plan's exact counts, so float rounding of the ramp can never leave
        the final masks off ``floor(S_l * N_l)`` zeros.
        """
        plans = self.plan(params)
        indices = [i for i, plan in enumerate(plans) if plan is not None]
        param_leaves = jax.tree.leaves(params)
        mask_leaves = None if masks is None else jax.tree.leaves(masks, is_leaf=lambda x: x is None)
        scores = [jnp.abs(param_leaves[i]) for i in indices]
        candidates = [None if mask_leaves is None else mask_leaves[i] for i in indices]
        seeds = [jax.random.bits(layer_key(key, i), (), jnp.uint32) for i in indices]
        sparsity = jnp.asarray(sparsity, jnp.float32)
        if self.scope == "global":
            total = sum(plans[i].size for i in indices)
            ramp = total - jnp.floor(sparsity * total).astype(jnp.int32)
            target = jnp.where(at_end, total - zeros_count(self.layout.sparsity, total), ramp)
            kept = global_top_k_masks(scores, target, candidates=candidates, tie_seed=seeds[0])
        else:
            ratio = sparsity / max(self.layout.sparsity, 1e-12)
            kept = []
            for i, score, candidate, seed in zip(indices, scores, candidates, seeds, strict=True):
                plan = plans[i]
                if plan.zeros == 0:  # a layer the distribution saturated to dense stays dense
                    kept.append(jnp.ones(plan.shape, bool))
                    continue
                ramp = plan.size - jnp.floor(ratio * plan.sparsity * plan.size).astype(jnp.int32)
                count = jnp.where(at_end, plan.active, jnp.clip(ramp, plan.active, plan.size))
                kept.append(top_k_mask(score, count, candidates=candidate, tie_seed=seed))
        new_leaves = [None] * len(plans)
        for i, mask in zip(indices, kept, strict=True):
            new_leaves[i] = mask
        return masks_from_leaves(params, new_leaves)

    def init_masks(self, params: Params, key: jax.Array) -> Masks:
        """The largest-magnitude weights at ``initial_sparsity`` (all weights when it is 0)."""
        return self._prune(params, None, self.initial_sparsity, False, key)

    def update_rule(self, params: Params, masks: Masks, grads: Params | None, step: jax.Array, key: jax.Array) -> Masks:
        """Keep the largest ``|theta|`` among active weights, at sparsity ``s_t``."""
        del grads
        at_end = jnp.asarray(step) >= self.schedule.end_step
        return self._prune(params, masks, self.sparsity_schedule(step), at_end, key)
