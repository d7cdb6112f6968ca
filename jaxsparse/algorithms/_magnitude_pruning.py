"""Magnitude pruning to a sparsity on a ramp, and its training cost: shared by gradual and iterative pruning.

Both prune the smallest ``|theta|`` among the active weights towards a global sparsity ``s`` that
grows over training (Zhu & Gupta's polynomial ramp; IMP's geometric rounds), and land exactly on
the layout's counts at the end:

* ``scope="layer"``: layer ``l`` with final sparsity ``S_l`` is pruned to ``S_l s / S`` (its row
  count clipped to the plan's), so every layer follows the ramp proportionally towards its own
  ``floor(S_l N_l)`` zeros;
* ``scope="global"``: one threshold over all sparsified layers keeps ``N - floor(s N)`` weights
  of the ``N`` in all of them, and exactly the layout's total at the end.

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression", 2017.
  Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms._base import layer_key
from jaxsparse.distributions import zeros_count
from jaxsparse.masks import Masks, Params, SparsityLayout, mask_leaves, masks_from_leaves
from jaxsparse.selection import global_top_k_masks

__all__ = ["SCOPES", "prune_by_magnitude", "ramp_training_flops"]

SCOPES = ("layer", "global")
"""Where one magnitude threshold applies: within each layer, or over all sparsified layers."""


def prune_by_magnitude(
    layout: SparsityLayout,
    params: Params,
    masks: Masks | None,
    sparsity: jax.typing.ArrayLike,
    at_end: jax.typing.ArrayLike,
    key: jax.Array,
    scope: str,
) -> Masks:
    """The largest ``|theta|`` among ``masks`` (all weights when ``None``) at global sparsity ``sparsity``.

    Args:
      layout: the final layout (sparsity ``S``, each layer's ``S_l`` and structure).
      params: the parameters whose magnitudes rank the weights (groups: the L2 norm).
      masks: the active weights, candidates to keep (``None``: every weight).
      sparsity: the global sparsity ``s`` to prune to (traced or static).
      at_end: where true, the layout's exact final counts instead of the ramp's (so float rounding
        of ``s`` can never leave the final masks off ``floor(S_l N_l)`` zeros).
      key: the step's key; only tie seeds are drawn from it.
      scope: ``"layer"`` or ``"global"`` (see the module docstring).

    Returns:
      Masks at group level, exactly at the counts described in the module docstring.
    """
    plans = layout.plan(params)
    indices = [i for i, plan in enumerate(plans) if plan is not None]
    param_leaves = jax.tree.leaves(params)
    current = None if masks is None else mask_leaves(params, masks)
    scores = [plans[i].structure.group_scores(jnp.abs(param_leaves[i])) for i in indices]
    candidates = [None if current is None else current[i] for i in indices]
    seeds = [jax.random.bits(layer_key(key, i), (), jnp.uint32) for i in indices]
    sparsity = jnp.asarray(sparsity, jnp.float32)
    if scope == "global":
        total = sum(plans[i].size for i in indices)
        ramp = total - jnp.floor(sparsity * total).astype(jnp.int32)
        target = jnp.where(at_end, total - zeros_count(layout.sparsity, total), ramp)
        kept = global_top_k_masks(scores, target, candidates=candidates, tie_seed=seeds[0])
    else:
        ratio = sparsity / max(layout.sparsity, 1e-12)
        kept = []
        for i, score, candidate, seed in zip(indices, scores, candidates, seeds, strict=True):
            plan = plans[i]
            if plan.zeros == 0:  # a layer the distribution saturated to dense stays dense
                kept.append(jnp.ones(plan.mask_shape, bool))
                continue
            row = plan.row_size
            ramp = row - jnp.floor(ratio * plan.sparsity * row).astype(jnp.int32)
            count = jnp.where(at_end, plan.row_active, jnp.clip(ramp, plan.row_active, row))
            kept.append(plan.structure.select(score, count, candidates=candidate, tie_seed=seed))
    new_leaves = [None] * len(plans)
    for i, mask in zip(indices, kept, strict=True):
        new_leaves[i] = mask
    return masks_from_leaves(params, new_leaves)


def ramp_training_flops(
    flops: np.ndarray, forward_density: np.ndarray, final_sparsity: float, in_effect: np.ndarray
) -> float:
    """``sum_t 3 f_S(t) / (3 f_D len(in_effect))``: the mean cost of steps run at the global sparsities ``in_effect``.

    Each layer ``l`` is taken at sparsity ``S_l s_t / S``, with ``S_l = 1 - forward_density_l`` its
    final sparsity (exact for ``scope="layer"``, the proportional estimate for ``scope="global"``;
    Zhu & Gupta 2017).
    """
    if final_sparsity == 0:
        return 1.0
    layer_sparsity = (1.0 - forward_density)[None, :] * (np.asarray(in_effect) / final_sparsity)[:, None]
    return float(((1.0 - layer_sparsity) @ flops).mean() / flops.sum())
