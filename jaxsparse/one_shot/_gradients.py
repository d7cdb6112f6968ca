"""Gradient statistics of a trained model on calibration batches: first-order Taylor and the empirical Fisher.

``loss_fn(params, batch)`` is the mean loss of a batch whose array leaves share a leading example
axis. The per-example gradient ``g_n`` is the gradient of ``loss_fn`` on example ``n`` alone (a
batch of one), computed with ``jax.vmap`` over the batch; the empirical Fisher is
``F = (1/N) sum_n g_n g_n^T`` over all ``N`` calibration examples. Run ``loss_fn`` in inference mode
(no dropout, BatchNorm on its running statistics): a batch of one must give that example's loss.

Memory: one batch's per-example gradients, ``batch x P`` floats for ``P`` parameters; pick the batch
size to fit. Everything else is one parameter-sized accumulator (the Fisher diagonal, the Taylor
scores) or, for WoodFisher, its blocks (``P x block_size`` floats).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxsparse.algorithms._magnitude_pruning import first_order
from jaxsparse.masks import LayerPlan, Params
from jaxsparse.one_shot import _woodfisher

__all__ = [
    "diagonal_fisher",
    "example_count",
    "fisher_groups",
    "per_example_gradients",
    "taylor_scores",
    "woodfisher_inverses",
]

Loss = Callable[[Params, object], jax.Array]


def example_count(batch) -> int:
    """The leading size of a batch's array leaves (they must agree)."""
    sizes = {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(batch) if jnp.ndim(leaf)}
    if len(sizes) != 1:
        raise ValueError(
            f"a calibration batch's array leaves must share one leading example axis, got leading sizes "
            f"{sorted(sizes)}: pass batches such as (x[i:j], y[i:j])."
        )
    return sizes.pop()


@functools.partial(jax.jit, static_argnums=0)
def per_example_gradients(loss_fn: Loss, params: Params, batch) -> Params:
    """``g_n = d loss_fn(params, batch[n:n+1]) / d params`` for every example, stacked on a leading axis."""

    def one(example):
        return jax.grad(loss_fn)(params, jax.tree.map(lambda a: a[None], example))

    return jax.vmap(one)(batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _taylor_batch(loss_fn: Loss, plans: tuple[LayerPlan | None, ...], params: Params, batch) -> list:
    grads = jax.tree.leaves(jax.grad(loss_fn)(params, batch))
    return [
        None if plan is None else jnp.square(first_order(plan, leaf, g))
        for plan, g, leaf in zip(plans, grads, jax.tree.leaves(params), strict=True)
    ]


def taylor_scores(loss_fn: Loss, params: Params, batches: Sequence, plans: Sequence[LayerPlan | None]) -> list:
    """Molchanov et al.'s first-order Taylor importance, one per group, averaged over the batches.

    Removing group ``G`` changes the loss by ``-sum_{q in G} g_q theta_q`` to first order; its
    importance on a batch is the square ``(sum_{q in G} g_q theta_q)^2`` (per weight
    ``(g_q theta_q)^2``), with ``g`` that batch's gradient, and the score is its mean over the
    batches. Squaring before averaging keeps groups whose effect is large but varies in sign.
    """
    total = None
    for batch in batches:
        scores = _taylor_batch(loss_fn, tuple(plans), params, batch)
        total = scores if total is None else [None if t is None else t + s for t, s in zip(total, scores, strict=True)]
    return [None if t is None else t / len(batches) for t in total]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _add_squares(loss_fn: Loss, chosen: tuple[bool, ...], params: Params, batch, total: list) -> list:
    grads = jax.tree.leaves(per_example_gradients(loss_fn, params, batch))
    return [t if not c else t + jnp.sum(jnp.square(g), axis=0) for c, g, t in zip(chosen, grads, total, strict=True)]


def diagonal_fisher(loss_fn: Loss, params: Params, batches: Sequence, chosen: Sequence[bool]) -> list:
    """``F_qq = (1/N) sum_n g_{n,q}^2`` at the ``chosen`` leaves (``None`` elsewhere)."""
    leaves = jax.tree.leaves(params)
    total = [jnp.zeros(jnp.shape(leaf), jnp.float32) if c else None for c, leaf in zip(chosen, leaves, strict=True)]
    count = 0
    for batch in batches:
        total = _add_squares(loss_fn, tuple(chosen), params, batch, total)
        count += example_count(batch)
    return [None if t is None else t / count for t in total]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _woodbury_batch(loss_fn: Loss, group: tuple[int, ...], count: int, params: Params, batch, inverses: list):
    """One batch's Woodbury updates of the inverses of the leaves in ``group`` (only their gradients are formed)."""
    leaves, treedef = jax.tree.flatten(params)

    def loss_of(chosen, example):
        full = list(leaves)
        for index, leaf in zip(group, chosen, strict=True):
            full[index] = leaf
        return loss_fn(jax.tree.unflatten(treedef, full), jax.tree.map(lambda a: a[None], example))

    grads = jax.vmap(jax.grad(loss_of), in_axes=(None, 0))([leaves[i] for i in group], batch)
    return [
        _woodfisher.woodbury_update(inverse, g.reshape(g.shape[0], -1), count)
        for g, inverse in zip(grads, inverses, strict=True)
    ]


def woodfisher_inverses(
    loss_fn: Loss, params: Params, batches: Sequence, group: Sequence[int], *, block_size: int, damping: float
) -> list:
    """The block-diagonal ``(damping I + F)^{-1}`` of each leaf in ``group``, by Woodbury updates over the examples.

    One pass over ``batches``; the per-example gradients formed are those of ``group``'s leaves only.
    """
    count = sum(example_count(batch) for batch in batches)
    leaves = jax.tree.leaves(params)
    inverses = [_woodfisher.fisher_inverse_init(leaves[i].size, block_size, damping) for i in group]
    for batch in batches:
        inverses = _woodbury_batch(loss_fn, tuple(group), count, params, batch, inverses)
    return inverses


def fisher_groups(sizes: Sequence[int], indices: Sequence[int], block_size: int, budget: int) -> list[list[int]]:
    """``indices`` cut, in order, into groups whose Fisher blocks fit ``budget`` bytes.

    A leaf of ``size`` weights has ``4 size min(block_size, size)`` bytes of float32 blocks.

    A leaf larger than the budget alone is a group of its own.
    """
    groups: list[list[int]] = [[]]
    used = 0
    for index in indices:
        need = 4 * sizes[index] * min(block_size, sizes[index])
        if groups[-1] and used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += need
    return groups
