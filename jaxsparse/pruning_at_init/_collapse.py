"""Layer collapse: sparsified layers left with no active weight."""

from __future__ import annotations

import jax
import numpy as np

from jaxsparse._variables import unboxed
from jaxsparse.masks import Masks, Params, leaf_name, mask_leaves

__all__ = ["layer_collapse"]


def layer_collapse(params: Params, masks: Masks) -> list[str]:
    """The names of the sparsified leaves whose mask keeps nothing.

    Global pruning at initialisation ranks every layer against every other, and a criterion whose
    scores differ in scale between layers (magnitude on unequal initialisations, SNIP and GraSP at
    high sparsity) can remove a whole layer, which disconnects the network: "layer collapse"
    (Tanaka et al. 2020), which SynFlow's iterative conservation is designed to avoid.

    Runs in Python on concrete masks (it returns names).

    Args:
      params: the parameter pytree.
      masks: a mask tree for ``params`` (``None`` at dense leaves), e.g. from :func:`prune_at_init`.

    Returns:
      Leaf names (``"layer_1/kernel"``) in flattening order; empty when no layer collapsed.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2)), "bias": jnp.ones(2)}
      >>> layer_collapse(params, {"a": jnp.ones((2, 2), bool), "b": jnp.zeros((2, 2), bool), "bias": None})
      ['b']

    References:
      Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
      conserving synaptic flow", NeurIPS 2020.
    """
    names = [leaf_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(unboxed(params))]
    return [
        name
        for name, mask in zip(names, mask_leaves(params, masks), strict=True)
        if mask is not None and not np.any(np.asarray(mask))
    ]
