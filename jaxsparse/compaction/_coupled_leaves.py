"""Which 1-D parameters are indexed by each kernel's output channels: the leaves a filter group must include.

A filter of a convolution followed by a norm is removable only when the norm's scale and shift of
that channel are zero too (a zero filter alone leaves the norm's shift). :func:`coupled_leaves`
finds those leaves on the jaxpr, with the coupling analysis of :func:`compact`, so that a group
lasso over ``W[..., n]`` and its coupled ``b[n]`` drives whole channels to zero together (the
``coupled=`` argument of SSL's penalty).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxsparse.compaction._coupling import couple
from jaxsparse.compaction._program import trace
from jaxsparse.masks import Params, leaf_names

__all__ = ["coupled_leaves"]


def coupled_leaves(apply_fn: Callable, params: Params, *args) -> dict[str, tuple[str, ...]]:
    """``{kernel name: names of the 1-D leaves of params in the channel space of its last axis}``.

    Args:
      apply_fn: the model, called as ``apply_fn(params, *args)``.
      params: the parameters the group lasso acts on (for flax, ``variables["params"]``, with the
        other collections bound into ``apply_fn`` or passed in ``args``).
      *args: example inputs.

    Returns:
      For every leaf of rank 2 or more whose last axis is a channel space shared with 1-D leaves
      (a bias, a norm's scale and shift), those leaves' names; kernels with none are left out.
      Channel spaces tied by a residual sum give every kernel writing to it all the stream's 1-D
      leaves.

    Example:
      >>> import jax.numpy as jnp
      >>> def apply_fn(p, x):
      ...     return (x @ p["w"] + p["b"][None]) * p["scale"][None] @ p["head"]
      >>> params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4), "scale": jnp.ones(4), "head": jnp.ones((4, 2))}
      >>> coupled_leaves(apply_fn, params, jnp.ones((1, 3)))
      {'w': ('b', 'scale')}
    """
    leaves = jax.tree.leaves(params)
    names = leaf_names(params)
    program = trace(apply_fn, params, *args)
    coupling = couple(program)
    values = program.inputs[: len(leaves)]
    vectors: dict[int, list[str]] = {}
    for value, name, leaf in zip(values, names, leaves, strict=True):
        classes = coupling.leaves(value)
        if leaf.ndim == 1 and len(classes) == 1:
            vectors.setdefault(classes[0], []).append(name)
    out = {}
    for value, name, leaf in zip(values, names, leaves, strict=True):
        if leaf.ndim >= 2:
            classes = coupling.leaves(value, leaf.ndim - 1)
            if len(classes) == 1 and classes[0] in vectors:
                out[name] = tuple(vectors[classes[0]])
    return out
