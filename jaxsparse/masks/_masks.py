"""Masks: boolean pytrees with the parameters' structure.

A mask tree has the parameters' structure with a ``bool`` array at every sparsified leaf and
``None`` at every dense leaf (dense leaves carry no mask array). ``True`` means "active". A mask
has its layer's group-level shape (``LayerPlan.mask_shape``); for the default unstructured layout
that is the parameter's own shape. Algorithms with two masks (Top-KAST) use a :class:`MaskPair`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsparse import scores
from jaxsparse._variables import unboxed
from jaxsparse.masks._layout import LayerPlan, leaf_name

__all__ = [
    "MaskPair",
    "Masks",
    "Params",
    "apply_masks",
    "check_masks",
    "expand_masks",
    "mask_leaves",
    "masks_from_leaves",
    "random_masks",
]

Params = Any
"""A pytree of parameter arrays."""
Masks = Any
"""A pytree shaped like the parameters: ``bool`` arrays at sparsified leaves, ``None`` elsewhere."""

# Tie seeds of random masks come from their own stream of the init key, apart from the per-leaf
# score keys ``fold_in(key, leaf_index)``: one key, one use.
_TIE_STREAM = 0x7FFFFFFF


class MaskPair(NamedTuple):
    """Two nested masks (Top-KAST): ``forward`` (set A) inside ``backward`` (set B)."""

    forward: Masks
    backward: Masks


def mask_leaves(params: Params, masks: Masks) -> list[jax.Array | None]:
    """One entry of ``masks`` per leaf of ``params`` (``None`` at dense leaves), in flattening order.

    The mask tree is flattened *up to* the params' structure, so ``None`` subtrees of the params (as
    ``eqx.filter`` leaves them) and tuples of any length inside them are handled like any node.
    Both trees are compared without flax nnx's ``Variable`` boxes, so ``nnx.state(model, nnx.Param)``
    lines up with the masks an ``nnx.Optimizer`` keeps in ``OptVariable``s, boxed or pure.

    Raises:
      ValueError: the mask tree does not have the params' structure.
    """
    if params is None:
        raise ValueError("params is None: pass the parameter pytree the masks belong to.")
    try:
        return jax.tree.structure(unboxed(params)).flatten_up_to(unboxed(masks))
    except (ValueError, TypeError) as error:
        raise ValueError(
            "the mask tree does not match the params tree: masks must have the params' structure "
            "with a bool array at each sparsified leaf and None elsewhere. Take them from the optimizer "
            "state with jaxsparse.masks_of(state) (for an nnx.Optimizer: optimizer.opt_state), of a "
            f"state initialised on these params. Details: {error}"
        ) from None


def check_masks(params: Params, masks: Masks, plans: Sequence[LayerPlan | None] | None = None) -> None:
    """Raises a clear error unless ``masks`` fits ``params`` (structure, shapes, ``bool``).

    With ``plans`` (a layout's plan of these params) each mask must have its plan's group-level
    shape and sit exactly at the planned leaves; without, each mask must have its parameter's shape.
    Runs in Python on shapes only, so it costs nothing under ``jit``.
    """
    entries = mask_leaves(params, masks)
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(unboxed(params))]
    shapes = [tuple(jnp.shape(p)) for p in jax.tree.leaves(params)]
    expected = shapes if plans is None else [None if plan is None else plan.mask_shape for plan in plans]
    for path, shape, want, mask in zip(paths, shapes, expected, entries, strict=True):
        if plans is not None and (mask is None) != (want is None):
            state = "has no mask" if mask is None else "has a mask"
            raise ValueError(
                f"leaf {leaf_name(path)!r} {state}, but the layout {'sparsifies' if mask is None else 'keeps dense'} "
                "it: build the masks for this algorithm's layout (e.g. algo.init_masks(params, key))."
            )
        if mask is None:
            continue
        if tuple(jnp.shape(mask)) != want or jnp.result_type(mask) != jnp.bool_:
            raise ValueError(
                f"mask at {leaf_name(path)!r} has shape {tuple(jnp.shape(mask))} and dtype {jnp.result_type(mask)}, "
                f"expected a bool mask of shape {want} (the parameter has shape {shape}): masks must be bool "
                "arrays of their layer's mask shape; rebuild them from these params."
            )


def expand_masks(params: Params, masks: Masks, plans: Sequence[LayerPlan | None]) -> Masks:
    """Group-level masks broadcast to their parameters' shapes (the identity when unstructured)."""
    leaves = [
        None if mask is None else plan.structure.expand(mask, plan.shape)
        for plan, mask in zip(plans, mask_leaves(params, masks), strict=True)
    ]
    return masks_from_leaves(params, leaves)


def apply_masks(params: Params, masks: Masks) -> Params:
    """Projects parameters onto their masks: ``theta * m`` at sparsified leaves.

    Values outside the mask become exactly ``0`` and the dtype is preserved; dense leaves pass
    through unchanged.

    Args:
      params: the parameter pytree.
      masks: a mask tree for ``params`` shaped like the params (e.g. ``masks_of(state)``).

    Returns:
      The projected parameters.

    Example:
      >>> import jax.numpy as jnp
      >>> apply_masks({"w": jnp.ones(3)}, {"w": jnp.array([True, False, True])})["w"].tolist()
      [1.0, 0.0, 1.0]
    """
    check_masks(params, masks)
    leaves = [
        p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype))
        for p, m in zip(jax.tree.leaves(params), mask_leaves(params, masks), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def masks_from_leaves(params: Params, leaves: Sequence[jax.Array | None]) -> Masks:
    """Assembles a mask tree from one entry per parameter leaf (``None`` for dense leaves)."""
    return jax.tree.unflatten(jax.tree.structure(params), list(leaves))


def random_masks(key: jax.Array, params: Params, plans: Sequence[LayerPlan | None]) -> Masks:
    """Uniformly random masks with exactly ``plan.row_active`` ``True`` entries per row of each sparsified leaf.

    Each leaf draws ``uint32`` random scores from ``fold_in(key, leaf_index)``, reduced to one per
    group by the plan's structure, and keeps the ``plan.row_active`` largest of each row (an exact
    top-k), so every subset of that size is equally likely. Ties are broken with a seed from a separate stream of
    ``key``.
    """
    tie_root = jax.random.fold_in(key, _TIE_STREAM)
    leaves = []
    for index, (plan, param) in enumerate(zip(plans, jax.tree.leaves(params), strict=True)):
        if plan is None:
            leaves.append(None)
            continue
        bits = plan.structure.group_scores(scores.random(param, None, jax.random.fold_in(key, index)))
        tie_seed = jax.random.bits(jax.random.fold_in(tie_root, index), (), jnp.uint32)
        leaves.append(plan.structure.select(bits, plan.row_active, tie_seed=tie_seed))
    return masks_from_leaves(params, leaves)
