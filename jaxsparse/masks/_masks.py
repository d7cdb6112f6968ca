"""Masks: boolean pytrees shaped like the parameters.

A mask tree has the parameters' structure with a ``bool`` array of the parameter's shape at every
sparsified leaf and ``None`` at every dense leaf (dense leaves carry no mask array). ``True`` means
"active". Algorithms with two masks (Top-KAST) use a :class:`MaskPair`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsparse import scores
from jaxsparse.masks._layout import LayerPlan, leaf_name
from jaxsparse.selection import top_k_mask

__all__ = [
    "MaskPair",
    "Masks",
    "Params",
    "apply_masks",
    "check_masks",
    "forward_masks",
    "masks_from_leaves",
    "random_masks",
    "trainable_masks",
]

Params = Any
"""A pytree of parameter arrays."""
Masks = Any
"""A pytree shaped like the parameters: ``bool`` arrays at sparsified leaves, ``None`` elsewhere."""


class MaskPair(NamedTuple):
    """Two nested masks (Top-KAST): ``forward`` (set A) inside ``backward`` (set B)."""

    forward: Masks
    backward: Masks


def forward_masks(masks: Masks | MaskPair) -> Masks:
    """The masks the forward pass uses (``A`` of a :class:`MaskPair`, else the masks)."""
    return masks.forward if isinstance(masks, MaskPair) else masks


def trainable_masks(masks: Masks | MaskPair) -> Masks:
    """The masks of the weights the optimizer updates (``B`` of a :class:`MaskPair`)."""
    return masks.backward if isinstance(masks, MaskPair) else masks


def check_masks(params: Params, masks: Masks) -> None:
    """Raises a clear error unless ``masks`` fits ``params`` (structure, shapes, ``bool``).

    Runs in Python on shapes only, so it costs nothing under ``jit``.
    """
    if params is None:
        raise ValueError("params is None: pass the parameter pytree the masks belong to.")
    try:
        pairs = jax.tree_util.tree_map_with_path(lambda path, p, m: (path, p, m), params, masks)
    except ValueError as error:
        raise ValueError(
            "the mask tree does not match the params tree: masks must have the params' structure "
            "with a bool array at each sparsified leaf and None elsewhere; rebuild them from these "
            f"params (e.g. tx.init(params)). Details: {error}"
        ) from None
    for path, p, m in jax.tree.leaves(pairs, is_leaf=lambda x: isinstance(x, tuple) and len(x) == 3):
        if m is None:
            continue
        if jnp.shape(m) != jnp.shape(p) or jnp.result_type(m) != jnp.bool_:
            raise ValueError(
                f"mask at {leaf_name(path)!r} has shape {jnp.shape(m)} and dtype {jnp.result_type(m)}, "
                f"but the parameter has shape {jnp.shape(p)}: masks must be bool arrays shaped like "
                "their parameters."
            )


def apply_masks(params: Params, masks: Masks) -> Params:
    """Projects parameters onto their masks: ``theta * m`` at sparsified leaves.

    Values outside the mask become exactly ``0`` and the dtype is preserved; dense leaves pass
    through unchanged.

    Args:
      params: the parameter pytree.
      masks: a mask tree for ``params`` (e.g. ``masks_of(state)``).

    Returns:
      The projected parameters.

    Example:
      >>> import jax.numpy as jnp
      >>> apply_masks({"w": jnp.ones(3)}, {"w": jnp.array([True, False, True])})["w"].tolist()
      [1.0, 0.0, 1.0]
    """
    check_masks(params, masks)
    return jax.tree.map(lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)), params, masks)


def masks_from_leaves(params: Params, leaves: Sequence[jax.Array | None]) -> Masks:
    """Assembles a mask tree from one entry per parameter leaf (``None`` for dense leaves)."""
    return jax.tree.unflatten(jax.tree.structure(params), list(leaves))


def random_masks(key: jax.Array, params: Params, plans: Sequence[LayerPlan | None]) -> Masks:
    """Uniformly random masks with exactly ``plan.active`` ``True`` entries per sparsified leaf.

    Each leaf draws ``uint32`` random keys from ``fold_in(key, leaf_index)`` and keeps the
    ``plan.active`` largest (an exact top-k), so every subset of that size is equally likely.
    """
    leaves = []
    for index, (plan, param) in enumerate(zip(plans, jax.tree.leaves(params), strict=True)):
        if plan is None:
            leaves.append(None)
            continue
        leaf_key = jax.random.fold_in(key, index)
        bits = scores.random(param, None, leaf_key)
        leaves.append(top_k_mask(bits, plan.active, tie_seed=jax.random.bits(leaf_key, (), jnp.uint32)))
    return masks_from_leaves(params, leaves)
