"""Pruning to a sparsity on a ramp by a score, and its training cost: shared by gradual, iterative and movement pruning.

Each of them keeps the entries with the largest score towards a global sparsity ``s`` that grows
over training (Zhu & Gupta's polynomial ramp; IMP's geometric rounds) and lands exactly on the
layout's counts at the end:

* ``scope="layer"``: layer ``l`` with final sparsity ``S_l`` is pruned to ``S_l s / S`` (its row
  count clipped to the plan's), so every layer follows the ramp proportionally towards its own
  ``floor(S_l N_l)`` zeros;
* ``scope="global"``: one threshold over all sparsified layers keeps ``N - floor(s N)`` entries
  of the ``N`` in all of them, and exactly the layout's total at the end.

The score is ``|theta|`` for magnitude pruning (:func:`prune_by_magnitude`; a group's score is the
L2 norm of its weights) or any group-level score (:func:`prune_by_scores`): the movement
``-sum_t g theta`` of movement pruning, the Taylor or OBD importance of gradual pruning. Those are
sums over a group's weights, and the first-order term they share is :func:`first_order`,
``sum_{q in g} g_q theta_q``: the derivative of the loss with respect to a gate that scales the
whole group (Molchanov et al. 2019; Sanh et al. 2020).

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression", 2017.
  Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019.
  Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network Pruning",
  CVPR 2019.
  Sanh, Wolf, Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms._base import layer_key
from jaxsparse.distributions import zeros_count
from jaxsparse.masks import LayerPlan, Masks, Params, SparsityLayout, mask_leaves, masks_from_leaves
from jaxsparse.masks._scored import group_scores
from jaxsparse.selection import global_top_k_masks

__all__ = [
    "SCOPES",
    "first_order",
    "magnitude_scores",
    "prune_by_magnitude",
    "prune_by_scores",
    "ramp_training_flops",
    "score_dtype",
    "sparsified_map",
    "sparsity_in_effect",
]

SCOPES = ("layer", "global")
"""Where one magnitude threshold applies: within each layer, or over all sparsified layers."""


def score_dtype(param: jax.typing.ArrayLike) -> jnp.dtype:
    """The dtype scores and statistics of ``param`` are kept in: its own, at least float32.

    A bfloat16 model's small per-step terms would be lost in a bfloat16 sum.
    """
    return jnp.promote_types(jnp.result_type(param), jnp.float32)


def sparsified_map(fn: Callable[..., jax.Array], params: Params, plans: Sequence[LayerPlan | None], *columns) -> Params:
    """``fn(plan, param, *entries)`` at every sparsified leaf, ``None`` at dense ones: a tree like ``params``.

    Each of ``columns`` is a list with one entry per parameter leaf, such as
    ``mask_leaves(params, state)`` of a state with ``None`` at dense leaves, or ``grad_leaves(params, grads)``.
    """
    leaves = [
        None if plan is None else fn(plan, param, *entries)
        for plan, param, *entries in zip(plans, jax.tree.leaves(params), *columns, strict=True)
    ]
    return masks_from_leaves(params, leaves)


def first_order(plan: LayerPlan, param: jax.Array, grad: jax.Array) -> jax.Array:
    """``sum_{q in g} g_q theta_q`` per group (in :func:`score_dtype`): dL/d(a gate scaling group ``g``).

    With ``grad`` the dense gradient ``dL/d(theta * m)``, this is the straight-through gradient of
    the group's mask entry (Sanh et al. 2020) and the first-order Taylor term of removing the group
    (Molchanov et al. 2019). A group's terms are summed, not normed: they carry a sign.
    """
    dtype = score_dtype(param)
    return group_scores(plan, grad.astype(dtype) * param.astype(dtype), summed=True).astype(dtype)


def magnitude_scores(plans: Sequence[LayerPlan | None], params: Params) -> Params:
    """``|theta|`` reduced to one score per group (a group's L2 norm), ``None`` at dense leaves."""
    return sparsified_map(lambda plan, param: plan.structure.group_scores(jnp.abs(param)), params, plans)


def prune_by_scores(
    layout: SparsityLayout,
    params: Params,
    scores: Params,
    masks: Masks | None,
    sparsity: jax.typing.ArrayLike,
    at_end: jax.typing.ArrayLike,
    key: jax.Array,
    scope: str,
) -> Masks:
    """The largest ``scores`` among ``masks`` (all entries when ``None``) at global sparsity ``sparsity``.

    Args:
      layout: the final layout (sparsity ``S``, each layer's ``S_l`` and structure).
      params: the parameters (their tree and shapes give the plan).
      scores: a tree like ``params`` with a group-level score array (the mask's shape) at every
        sparsified leaf (``None`` at dense ones); larger is kept first, signed scores included,
        NaN ranks lowest.
      masks: the active entries, candidates to keep (``None``: every entry, so pruned ones may
        come back).
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
    current = None if masks is None else mask_leaves(params, masks)
    score_leaves = mask_leaves(params, scores)
    scores = [score_leaves[i] for i in indices]
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


def prune_by_magnitude(
    layout: SparsityLayout,
    params: Params,
    masks: Masks | None,
    sparsity: jax.typing.ArrayLike,
    at_end: jax.typing.ArrayLike,
    key: jax.Array,
    scope: str,
) -> Masks:
    """:func:`prune_by_scores` with the magnitudes ``|theta|`` (groups: their L2 norm) as scores."""
    scores = magnitude_scores(layout.plan(params), params)
    return prune_by_scores(layout, params, scores, masks, sparsity, at_end, key, scope)


def sparsity_in_effect(updates: np.ndarray, set_to: np.ndarray, initial: float) -> np.ndarray:
    """The global sparsity the forward pass of each step sees, for masks that change on update steps.

    The masks start at ``initial``; an update at step ``u`` (computed after step ``u``'s
    gradients) sets them to ``set_to[u]``, which steps ``u + 1, ...`` then use.

    Args:
      updates: ``(T,)`` bool, whether step ``t`` updates the masks.
      set_to: ``(T,)`` the sparsity an update at step ``t`` sets.
      initial: the sparsity of the masks at step 0.

    Returns:
      ``(T,)`` float64 sparsities of steps ``0 .. T - 1``.
    """
    steps = np.arange(len(updates))
    last = np.maximum.accumulate(np.where(updates, steps, -1))
    after = np.where(last >= 0, set_to[np.maximum(last, 0)], initial)
    return np.concatenate([[initial], after[:-1]])


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
