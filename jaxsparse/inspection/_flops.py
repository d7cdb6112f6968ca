"""Theoretical FLOPs of sparse inference and sparse training, relative to the dense model.

We follow the FLOPs accounting of the RigL paper (Evci et al. 2020). Only the
multiply-adds of layers with weights count; element-wise operations, normalisation and the loss
are ignored, as is the cost of choosing masks. A multiply-add counts as **2 FLOPs** (the ratios do
not depend on this convention). With ``f_{D,l}`` the dense FLOPs of layer ``l`` on one batch and
``d_l`` its density (``1`` for a dense leaf):

* inference: ``f_S = sum_l d_l f_{D,l}``;
* one training step costs the forward pass plus a backward pass that is twice as expensive: the
  gradient with respect to the layer's input and the gradient with respect to its weights each cost
  one forward pass at the density they use. So a sparse step costs ``3 f_S`` and a dense one
  ``3 f_D``.

These are the FLOPs that sparse kernels would execute; the JAX step itself runs dense kernels on
masked weights.

References:
  Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
  (its FLOPs accounting of inference and training).
  Jayakumar, Pascanu, Rae, Osindero, Elsen, "Top-KAST: Top-K Always Sparse Training", NeurIPS 2020.
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
  compression", 2017.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxsparse.algorithms import SparseAlgorithm
from jaxsparse.masks import LayerPlan, Masks, Params, leaf_name
from jaxsparse.transform import find_sparsify_state

__all__ = ["inference_flops_ratio", "layer_flops", "training_flops_ratio"]

# Primitives that only move, cast or replicate a parameter's values: an operand computed from a
# parameter by these alone is still that parameter, so its FLOPs are attributed to it.
_SHAPE_ONLY = frozenset(
    {
        "broadcast_in_dim",
        "convert_element_type",
        "copy",
        "reduce_precision",
        "reshape",
        "rev",
        "squeeze",
        "transpose",
    }
)
_ARRAY_TYPES = (jax.Array, np.ndarray, jax.ShapeDtypeStruct)


def _product_flops(eqn: jex_core.JaxprEqn) -> int:
    """2 x multiply-adds of one ``dot_general`` or ``conv_general_dilated``."""
    out = math.prod(eqn.outvars[0].aval.shape)
    if eqn.primitive.name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2 * out * math.prod(lhs[d] for d in contracting)
    # Each output element sums over the kernel's window and its input features (per group).
    kernel = eqn.invars[1].aval.shape
    _, in_features, *window = eqn.params["dimension_numbers"].rhs_spec
    return 2 * out * math.prod(kernel[d] for d in window) * kernel[in_features]


def _count(
    jaxpr: jex_core.Jaxpr, sources: Sequence[int | None], counts: list[int], multiplier: int
) -> list[int | None]:
    """Adds each parameter's FLOPs in ``jaxpr`` to ``counts``; returns the outputs' sources.

    ``sources[i]`` is the parameter leaf that ``jaxpr.invars[i]`` is (up to shape-only ops), or
    ``None``. Nested jaxprs (``pjit``, ``closed_call``, ``remat``, ``custom_jvp_call``,
    ``custom_vjp_call``, ...) are followed with their operands' sources; ``scan`` multiplies its
    body by its length, ``cond`` counts its most expensive branch, and a ``while_loop`` whose body
    multiplies by a parameter is refused (its trip count is unknown).
    """
    env = {var: source for var, source in zip(jaxpr.invars, sources, strict=True) if source is not None}

    def source_of(var) -> int | None:
        return None if isinstance(var, jex_core.Literal) else env.get(var)

    for eqn in jaxpr.eqns:
        operands = [source_of(var) for var in eqn.invars]
        if not any(source is not None for source in operands):
            continue  # nothing computed from a parameter flows in
        name = eqn.primitive.name
        if name in _SHAPE_ONLY:
            env[eqn.outvars[0]] = operands[0]
        elif name in ("dot_general", "conv_general_dilated"):
            # A product of two parameters (a factorised weight) is attributed to its left operand.
            leaf = operands[0] if operands[0] is not None else operands[1]
            if leaf is not None:
                counts[leaf] += multiplier * _product_flops(eqn)
        elif name == "scan":
            _count(eqn.params["jaxpr"].jaxpr, operands, counts, multiplier * eqn.params["length"])
        elif name == "cond":
            branches = []
            for branch in eqn.params["branches"]:
                branch_counts = [0] * len(counts)
                _count(branch.jaxpr, operands[1:], branch_counts, multiplier)
                branches.append(branch_counts)
            for leaf, most in enumerate(np.max(branches, axis=0).tolist()):
                counts[leaf] += most
        elif name == "while":
            # The body's operands are its constants and the carry, after the condition's constants.
            body = [0] * len(counts)
            _count(eqn.params["body_jaxpr"].jaxpr, operands[eqn.params["cond_nconsts"] :], body, multiplier)
            if any(body):
                raise ValueError(
                    "layer_flops cannot count a parameter's products inside a while_loop: its trip count "
                    "is not static. Use lax.scan, or lax.fori_loop with static bounds."
                )
        else:
            subs = list(jex_core.jaxprs_in_params(eqn.params))
            # Call-like primitives pass their operands straight to one body, in order.
            if len(subs) == 1 and len(subs[0].invars) == len(eqn.invars):
                outputs = _count(subs[0], operands, counts, multiplier)
                if len(outputs) == len(eqn.outvars):
                    for var, source in zip(eqn.outvars, outputs, strict=True):
                        if source is not None:
                            env[var] = source
    return [source_of(var) for var in jaxpr.outvars]


def layer_flops(apply_fn: Callable[..., object], params: Params, *args, **kwargs) -> dict[str, int]:
    """Dense FLOPs of one call ``apply_fn(params, *args, **kwargs)``, per parameter leaf.

    The call is traced with :func:`jax.make_jaxpr` (nothing is computed). Every ``dot_general``
    and ``conv_general_dilated`` one of whose operands is a parameter leaf (possibly reshaped,
    transposed, cast or broadcast) adds to that leaf, with a multiply-add counted as 2 FLOPs:

    .. math::

        \\text{dot}: 2 \\prod(\\text{out shape}) \\prod(\\text{contracting dims}), \\qquad
        \\text{conv}: 2 \\prod(\\text{out shape}) \\prod(\\text{kernel window})
        \\cdot \\text{in features per group}.

    Nested jaxprs are followed (``jit``, ``remat``, custom derivatives, ``scan`` times its length;
    ``cond`` counts its most expensive branch). Element-wise uses (biases, position embeddings) and
    lookups cost nothing here, and neither do products of two activations (attention's ``q k^T``
    and its weighted sum of values), which involve no weight: this module's ratios are over the FLOPs
    of layers with weights, as in the RigL paper. Pass the plain model: parameters masked first
    (``forward_params``) are no longer parameters to this count.

    Args:
      apply_fn: the model, called as ``apply_fn(params, *args, **kwargs)``.
      params: the parameter pytree whose leaves the FLOPs are attributed to: the tree the masks
        are made for (for flax, ``variables["params"]``; pass the other collections in ``args``).
        Leaves may be :class:`jax.ShapeDtypeStruct`, e.g. from :func:`jax.eval_shape`.
      *args: further arguments of ``apply_fn``, e.g. a batch (FLOPs scale with its size). Array
        leaves may be :class:`jax.ShapeDtypeStruct`; other leaves are passed as Python values.
      **kwargs: keyword arguments of ``apply_fn``, treated like ``args`` (e.g. ``train=False``).

    Returns:
      ``{leaf name: FLOPs}`` in flattening order, for the leaves that take part in a product
      (names as :func:`jaxsparse.masks.leaf_name` gives them, e.g. ``"Dense_0/kernel"``).

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
      >>> layer_flops(lambda p, x: x @ p["w"] + p["b"][None, :], params, jnp.ones((2, 3)))
      {'w': 48}
    """
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    # Array arguments are traced too, so they may be abstract; everything else (flags such as
    # ``train=False``) stays a Python value the model can branch on.
    leaves, treedef = jax.tree.flatten((args, kwargs))
    traced = [isinstance(leaf, _ARRAY_TYPES) for leaf in leaves]

    def call(p, arrays):
        arrays = iter(arrays)
        full = [next(arrays) if is_traced else leaf for leaf, is_traced in zip(leaves, traced, strict=True)]
        call_args, call_kwargs = jax.tree.unflatten(treedef, full)
        return apply_fn(p, *call_args, **call_kwargs)

    arrays = [leaf for leaf, is_traced in zip(leaves, traced, strict=True) if is_traced]
    closed = jax.make_jaxpr(call)(params, arrays)
    counts = [0] * len(paths)
    _count(closed.jaxpr, [*range(len(paths)), *[None] * len(arrays)], counts, 1)
    return {leaf_name(path): count for path, count in zip(paths, counts, strict=True) if count}


def _densities(dense_flops: Mapping[str, int], masks: Masks) -> np.ndarray:
    """The density of each layer of ``dense_flops``, in its order (1 for dense leaves)."""
    density = {}
    for path, mask in jax.tree_util.tree_leaves_with_path(masks, is_leaf=lambda x: x is None):
        mask = None if mask is None else np.asarray(mask)
        density[leaf_name(path)] = 1.0 if mask is None else np.count_nonzero(mask) / max(mask.size, 1)
    unknown = [name for name in dense_flops if name not in density]
    if unknown:
        raise ValueError(
            f"layers {unknown[:3]} of dense_flops are not leaves of the mask tree (whose leaves are "
            f"{list(density)[:3]}, ...): compute layer_flops on the same params pytree the masks "
            "were made for (for flax, variables['params'])."
        )
    return np.array([density[name] for name in dense_flops], dtype=np.float64)


def _flops(dense_flops: Mapping[str, int]) -> np.ndarray:
    flops = np.array(list(dense_flops.values()), dtype=np.float64)
    if not flops.sum() > 0:
        raise ValueError("dense_flops has no FLOPs: pass the output of layer_flops for the model.")
    return flops


def _views(state_or_masks: Any, algorithm: SparseAlgorithm | None) -> tuple[Masks, Masks, SparseAlgorithm | None]:
    """The forward and trainable masks, and the algorithm (from the state when it holds one)."""
    found = find_sparsify_state(state_or_masks)
    if found is not None:
        algorithm, masks = found.algorithm, found.masks
    else:
        masks = state_or_masks
    if algorithm is None:
        return masks, masks, None
    try:
        return algorithm.forward_masks(masks), algorithm.trainable_masks(masks), algorithm
    except AttributeError:
        raise ValueError(
            f"these masks are not {algorithm.name}'s: pass its sparsify state, or its masks as "
            f"algo.init_masks returns them (Top-KAST: a MaskPair of both sets)."
        ) from None


def inference_flops_ratio(dense_flops: Mapping[str, int], state_or_masks: Any) -> float:
    """``f_S / f_D``: the FLOPs of a sparse forward pass relative to the dense one.

    .. math::

        \\frac{f_S}{f_D} = \\frac{\\sum_l d_l\\, f_{D,l}}{\\sum_l f_{D,l}}

    with ``d_l`` the density of layer ``l``'s forward mask (Top-KAST: the set ``A``); dense leaves
    count at density 1 (Evci et al. 2020). With a state, the algorithm's own model is used.

    Args:
      dense_flops: per-layer dense FLOPs, from :func:`layer_flops`.
      state_or_masks: a :func:`~jaxsparse.sparsify` state (or any state holding one), or a mask
        tree for the params ``dense_flops`` was computed on.

    Returns:
      The ratio, in ``(0, 1]``.

    Example:
      >>> import jax.numpy as jnp
      >>> masks = {"a": jnp.array([[True, False], [False, False]]), "b": None}
      >>> inference_flops_ratio({"a": 100, "b": 100}, masks)
      0.625
    """
    flops = _flops(dense_flops)
    forward, _, algorithm = _views(state_or_masks, None)
    densities = _densities(dense_flops, forward)
    if algorithm is None:
        return float(densities @ flops / flops.sum())
    return algorithm.inference_flops(flops, densities)


def training_flops_ratio(
    algorithm: SparseAlgorithm,
    dense_flops: Mapping[str, int],
    state_or_masks: Any,
    *,
    total_steps: int,
) -> float:
    """Training FLOPs of ``total_steps`` steps of ``algorithm`` relative to dense training.

    Dense training costs ``3 f_D`` per step. The sparse cost is the algorithm's own model
    (``SparseAlgorithm.training_flops``), from each layer's density of its forward and trainable
    masks. For the built-in algorithms, with ``f_S`` the sparse forward FLOPs (Evci et al. 2020):

    * **static** and **SET**: ``3 f_S`` (choosing masks needs no gradient);
    * **RigL**: ``3 f_S`` on normal steps and ``2 f_S + f_D`` on mask-update steps, whose weight
      gradient is dense, with the update steps counted exactly from the schedule over
      ``total_steps``: for updates throughout training ``(3 f_S (ΔT - 1) + 2 f_S + f_D) / ΔT``;
    * **Top-KAST**: ``2 f_A + f_B``: the forward pass and the input gradient use the weights in
      ``A``, and the weight gradient is computed on ``B`` only (Jayakumar et al. 2020, Section 2);
    * **gradual magnitude pruning**: ``3 f_S(t)`` averaged over the steps, at the sparsity that the
      pruning ramp set at the last update before ``t`` (Zhu & Gupta 2017).

    Args:
      algorithm: the algorithm that produced the masks.
      dense_flops: per-layer dense FLOPs of one step's forward pass, from :func:`layer_flops`.
      state_or_masks: the state (or any state holding it) or the algorithm's masks at the end of
        training (for Top-KAST, a :class:`~jaxsparse.masks.MaskPair` of both sets). Only each
        layer's density is used.
      total_steps: the number of training steps (steps ``0 .. total_steps - 1``).

    Returns:
      The ratio to dense training, ``sum_t cost_t / (3 f_D total_steps)``.

    Example:
      >>> import jax.numpy as jnp, jaxsparse as jsp
      >>> masks = {"w": jnp.arange(10) < 1}  # density 0.1
      >>> algo = jsp.rigl(0.9, update_every=10, drop_fraction_decay="constant")
      >>> round(training_flops_ratio(algo, {"w": 10}, masks, total_steps=100), 6)  # (3*.1*9 + .2 + 1)/30
      0.13
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}.")
    flops = _flops(dense_flops)
    forward, trainable, _ = _views(state_or_masks, algorithm)
    return algorithm.training_flops(
        flops,
        _densities(dense_flops, forward),
        _densities(dense_flops, trainable),
        total_steps,
        list(dense_flops),
        _plans(state_or_masks, algorithm),
    )


def _plans(state_or_masks: Any, algorithm: SparseAlgorithm) -> Sequence[LayerPlan | None]:
    """The layout's plan of the params the masks belong to.

    From the state when given one. A mask tree implies a plan of its own: each mask's leaf at the
    mask's shape and its measured sparsity (one weight per entry; for a structured layout, pass
    the state).
    """
    found = find_sparsify_state(state_or_masks)
    if found is not None:
        return found.plans
    entries = jax.tree_util.tree_leaves_with_path(algorithm.forward_masks(state_or_masks), is_leaf=lambda x: x is None)
    return [
        None
        if mask is None
        else LayerPlan(leaf_name(path), tuple(np.shape(mask)), 1.0 - np.count_nonzero(mask) / max(np.size(mask), 1))
        for path, mask in entries
    ]
