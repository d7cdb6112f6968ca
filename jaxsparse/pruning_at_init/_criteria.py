"""Element scores of the one-shot criteria: random, magnitude, SNIP and GraSP.

Each returns one score per weight of every sparsified leaf (``None`` at dense leaves), larger
meaning "keep". They are pure functions of the parameters (and the key or the batches), traced
under ``jit``; the batch loops of SNIP and GraSP run in Python over compiled per-batch gradients,
so any iterable of batches of any shapes works.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxsparse import scores as library_scores
from jaxsparse.masks import LayerPlan, Params

__all__ = ["grasp_scores", "magnitude_scores", "random_scores", "snip_scores"]

Loss = Callable[[Params, object], jax.Array]


def random_scores(key: jax.Array, params: Params, plans: Sequence[LayerPlan | None]) -> list[jax.Array | None]:
    """Uniform ``uint32`` draws from ``fold_in(key, leaf_index)``, as :func:`~jaxsparse.masks.random_masks` draws."""
    return [
        None if plan is None else library_scores.random(leaf, None, jax.random.fold_in(key, index))
        for index, (plan, leaf) in enumerate(zip(plans, jax.tree.leaves(params), strict=True))
    ]


def magnitude_scores(params: Params, plans: Sequence[LayerPlan | None]) -> list[jax.Array | None]:
    """``|theta|`` at initialisation."""
    return [None if plan is None else jnp.abs(leaf) for plan, leaf in zip(plans, jax.tree.leaves(params), strict=True)]


@functools.partial(jax.jit, static_argnums=0)
def _add_gradient(loss_fn: Loss, params: Params, batch, total: Params) -> Params:
    """``total + dL/dtheta`` on one batch, compiled once per loss and shapes."""
    return jax.tree.map(jnp.add, total, jax.grad(loss_fn)(params, batch))


@functools.partial(jax.jit, static_argnums=0)
def _add_hessian_product(loss_fn: Loss, params: Params, batch, tangent: Params, total: Params) -> Params:
    """``total + H v`` on one batch: forward-over-reverse, ``jvp`` of ``grad`` (no Hessian is formed)."""
    _, product = jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (tangent,))
    return jax.tree.map(jnp.add, total, product)


def _gradient_sum(loss_fn: Loss, params: Params, batches: Sequence) -> Params:
    total = jax.tree.map(jnp.zeros_like, params)
    for batch in batches:
        total = _add_gradient(loss_fn, params, batch, total)
    return total


def snip_scores(
    loss_fn: Loss, params: Params, batches: Sequence, plans: Sequence[LayerPlan | None]
) -> list[jax.Array | None]:
    """SNIP's connection sensitivity ``|g * theta|``, ``g = sum_b dL_b/dtheta`` over the batches."""
    grads = jax.tree.leaves(_gradient_sum(loss_fn, params, batches))
    return [
        None if plan is None else jnp.abs(g * leaf)
        for plan, g, leaf in zip(plans, grads, jax.tree.leaves(params), strict=True)
    ]


def grasp_scores(
    loss_fn: Loss, params: Params, batches: Sequence, plans: Sequence[LayerPlan | None]
) -> list[jax.Array | None]:
    """GraSP's keep score ``theta * (H g) = -S``: the largest are kept, i.e. the largest ``S`` removed.

    ``g`` and ``H g`` are summed over the batches, and both are restricted to the sparsified leaves
    (the reference differentiates only its prunable weights): the tangent is zero at dense leaves.
    """
    leaves = jax.tree.leaves(params)
    grads = jax.tree.leaves(_gradient_sum(loss_fn, params, batches))
    tangent = jax.tree.unflatten(
        jax.tree.structure(params),
        [jnp.zeros_like(g) if plan is None else g for plan, g in zip(plans, grads, strict=True)],
    )
    total = jax.tree.map(jnp.zeros_like, params)
    for batch in batches:
        total = _add_hessian_product(loss_fn, params, batch, tangent, total)
    return [
        None if plan is None else leaf * hg
        for plan, leaf, hg in zip(plans, leaves, jax.tree.leaves(total), strict=True)
    ]
