"""``prune_one_shot``: masks (and, for the OBS family, updated weights) for a trained model, in one shot."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.algorithms import SCOPES
from jaxsparse.algorithms._factory_options import check_pooled_scope
from jaxsparse.masks import NM, FanIn, LayerPlan, Masks, Params, SparsityLayout, Unstructured, masks_from_leaves
from jaxsparse.masks._scored import masks_from_scores, tie_key
from jaxsparse.one_shot import _gradients, _sparsegpt, _wanda, _woodfisher
from jaxsparse.one_shot._capture import KernelProduct, find_products, input_statistics

__all__ = ["CRITERIA", "OneShotResult", "prune_one_shot"]

CRITERIA: tuple[str, ...] = ("magnitude", "taylor", "obd", "woodfisher", "sparsegpt", "wanda")
"""The criteria :func:`prune_one_shot` accepts."""

_NEEDS_LOSS = ("taylor", "obd", "woodfisher")
_NEEDS_INPUTS = ("sparsegpt", "wanda")
_STRUCTURES = {"sparsegpt": (Unstructured, NM), "wanda": (Unstructured, NM, FanIn)}
_DEFAULTS = {"woodfisher": {"block_size": 128, "damping": 1e-5}, "sparsegpt": {"block_size": 128, "damping": 0.01}}


class OneShotResult(NamedTuple):
    """What :func:`prune_one_shot` returns.

    Attributes:
      params: the pruned parameters: every sparsified leaf exactly zero off its mask; for
        ``woodfisher`` and ``sparsegpt`` the kept weights carry the OBS compensation. Dense leaves are
        the inputs, unchanged.
      masks: the masks as an algorithm's ``init_masks`` returns them (group level, ``None`` at dense
        leaves): hand them to ``sparsify(inner, algorithm, key=..., masks=result.masks)`` to fine-tune.
    """

    params: Params
    masks: Masks


def _check_batches(criterion: str, batches, needs: str) -> list:
    if batches is None:
        raise ValueError(f"criterion {criterion!r} needs calibration data: pass batches=, an iterable of {needs}.")
    batches = list(batches)
    if not batches:
        raise ValueError(f"batches is empty: criterion {criterion!r} needs at least one calibration batch.")
    return batches


def _check_fits(fn: Callable, what: str, params: Params, batches: list) -> None:
    """Traces ``fn(params, batch)`` for every distinct batch shape, naming the first that does not fit."""
    seen = set()
    for index, batch in enumerate(batches):
        shapes = tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in jax.tree.leaves(batch))
        if shapes in seen:
            continue
        seen.add(shapes)
        try:
            jax.eval_shape(fn, params, batch)
        except Exception as error:  # the model's own error, re-raised with the batch named
            raise ValueError(
                f"calibration batch {index} (leaf shapes {[s for s, _ in shapes]}) does not fit the model: "
                f"{what}(params, batch) raised {type(error).__name__}: {error}"
            ) from error


def _check_finite(name: str, what: str, value: jax.Array, fix: str) -> None:
    if not bool(jnp.all(jnp.isfinite(value))):
        raise FloatingPointError(f"the {what} of layer {name!r} is not finite: {fix}")


def _sparsified(layout: SparsityLayout, params: Params) -> tuple[list[LayerPlan | None], list[int]]:
    plans = layout.plan(params)
    return plans, [i for i, plan in enumerate(plans) if plan is not None]


def _apply_masks(params: Params, plans, masks: Masks) -> Params:
    leaves = jax.tree.leaves(params)
    mask_leaves = jax.tree.structure(params).flatten_up_to(masks)
    out = [
        leaf if plan is None else jnp.where(plan.structure.expand(mask, plan.shape), leaf, jnp.zeros((), leaf.dtype))
        for plan, leaf, mask in zip(plans, leaves, mask_leaves, strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), out)


def _element_scores(criterion, params, plans, chosen, loss_fn, batches):
    """Magnitude's, Taylor's (per group) or OBD's scores, and how a group's scores reduce to one."""
    leaves = jax.tree.leaves(params)
    names = [None if plan is None else plan.name for plan in plans]
    if criterion == "magnitude":
        return [None if plan is None else jnp.abs(leaf) for plan, leaf in zip(plans, leaves, strict=True)], "norm"
    if criterion == "taylor":
        return _gradients.taylor_scores(loss_fn, params, batches, plans), "none"
    fisher = _gradients.diagonal_fisher(loss_fn, params, batches, chosen)  # obd
    for name, f in zip(names, fisher, strict=True):
        if f is not None:
            _check_finite(name, "empirical Fisher diagonal", f, "a gradient overflowed; check the model and loss.")
    return [None if f is None else 0.5 * jnp.square(leaf) * f for f, leaf in zip(fisher, leaves, strict=True)], "sum"


def _woodfisher_group(loss_fn, params, plans, batches, group, block_size, damping) -> list:
    """The inverse Fisher blocks of ``group``'s leaves, checked finite."""
    inverses = _gradients.woodfisher_inverses(loss_fn, params, batches, group, block_size=block_size, damping=damping)
    for index, inverse in zip(group, inverses, strict=True):
        _check_finite(
            plans[index].name,
            "inverse Fisher block",
            inverse,
            f"raise damping (now {damping:g}) or check the gradients.",
        )
    return inverses


def _woodfisher_prune(layout, scope, key, params, plans, chosen_indices, loss_fn, batches, block_size, damping, budget):
    """WoodFisher: saliencies, one selection, then the OBS step, holding at most ``budget`` bytes of Fisher blocks.

    When every sparsified leaf's blocks fit the budget, one pass over the calibration data scores and
    compensates. Otherwise the leaves are taken in groups that fit, twice: once to score (the
    selection needs every score at global scope), once to compensate.
    """
    leaves = list(jax.tree.leaves(params))
    groups = _gradients.fisher_groups([leaf.size for leaf in leaves], chosen_indices, block_size, budget)
    scores = [None] * len(leaves)
    kept_inverses = {}
    for group in groups:
        inverses = _woodfisher_group(loss_fn, params, plans, batches, group, block_size, damping)
        for index, inverse in zip(group, inverses, strict=True):
            scores[index] = _woodfisher.obs_saliency(leaves[index], inverse)
            if len(groups) == 1:
                kept_inverses[index] = inverse
    masks = masks_from_scores(layout, params, masks_from_leaves(params, scores), key=key, scope=scope, reduction="sum")
    mask_leaves = jax.tree.structure(params).flatten_up_to(masks)
    for group in groups:
        inverses = [kept_inverses[i] for i in group] if kept_inverses else None
        if inverses is None:
            inverses = _woodfisher_group(loss_fn, params, plans, batches, group, block_size, damping)
        for index, inverse in zip(group, inverses, strict=True):
            pruned = ~plans[index].structure.expand(mask_leaves[index], plans[index].shape)
            leaves[index] = _woodfisher.obs_update(leaves[index], inverse, pruned)
    return jax.tree.unflatten(jax.tree.structure(params), leaves), masks


@functools.partial(jax.jit, static_argnames=("product", "nm", "kept", "block_size", "damping"))
def _sparsegpt_leaf(product: KernelProduct, nm, kept, block_size, damping, kernel, hessian, seed):
    weight, mask = _sparsegpt.sparsegpt_prune(
        product.to_matrix(kernel),
        hessian,
        kept=kept,
        nm=nm,
        block_size=block_size,
        mask_block=block_size,
        damping=damping,
        tie_seed=seed,
    )
    return product.from_matrix(weight), product.from_matrix(mask)


@functools.partial(jax.jit, static_argnames=("plan", "product"))
def _wanda_leaf(plan: LayerPlan, product: KernelProduct, kernel, squares, seed):
    scores = _wanda.wanda_scores(product, kernel, squares)
    if isinstance(plan.structure, Unstructured):
        mask = product.from_matrix(_wanda.per_output_mask(product.to_matrix(scores), plan.active, seed))
    else:
        mask = plan.structure.select(scores, plan.row_active, tie_seed=seed)
    return jnp.where(mask, kernel, jnp.zeros((), kernel.dtype)), mask


def _nm_of(plan: LayerPlan, product: KernelProduct) -> tuple[int, int] | None:
    structure = plan.structure
    if not isinstance(structure, NM):
        return None
    axis = (-2 if structure.axis is None else structure.axis) % len(plan.shape)
    if product.axes_in[-1] != axis:
        raise ValueError(
            f"layer {plan.name!r}: its {structure.n}:{structure.m} groups lie along axis {axis}, but SparseGPT "
            f"needs them along the last of the axes its product contracts, {product.axes_in} (consecutive inputs "
            f"of the layer's matrix): pass NM({structure.n}, {structure.m}, axis={product.axes_in[-1]})."
        )
    return structure.n, structure.m


def _layer_wise(criterion, params, plans, chosen_indices, apply_fn, batches, block_size, damping, sequential, key):
    """SparseGPT and Wanda: layer by layer in forward order, each on its inputs under the layers pruned so far."""
    products = find_products(apply_fn, params, batches[0], chosen_indices)
    order = sorted(chosen_indices, key=lambda i: products[i].path)
    leaves = list(jax.tree.leaves(params))
    treedef = jax.tree.structure(params)
    masks = [None] * len(plans)
    seeds = jax.random.bits(tie_key(key), (len(plans),), jnp.uint32)
    statistics = None if sequential else input_statistics(apply_fn, params, batches, products, hessian=False)
    for i in order:
        plan, product = plans[i], products[i]
        current = jax.tree.unflatten(treedef, leaves)
        if criterion == "sparsegpt":
            stats = input_statistics(apply_fn, current if sequential else params, batches, {i: product}, hessian=True)[
                i
            ]
            _check_finite(plan.name, "input Hessian X^T X", stats["hessian"], "its inputs overflowed; check the model.")
            nm = _nm_of(plan, product)
            kept = None if nm else plan.active
            weight, mask = _sparsegpt_leaf(
                product, nm, kept, block_size, damping, leaves[i], stats["hessian"], seeds[i]
            )
            if not bool(jnp.all(jnp.isfinite(weight))):
                raise FloatingPointError(
                    f"SparseGPT's update of layer {plan.name!r} is not finite: its Hessian X^T X is too "
                    f"ill-conditioned at damping {damping:g} (a fraction of its mean diagonal): raise damping, "
                    f"e.g. to {damping * 10:g}."
                )
        else:
            stats = (
                input_statistics(apply_fn, current, batches, {i: product}, hessian=False) if sequential else statistics
            )[i]
            _check_finite(plan.name, "input norm", stats["squares"], "its inputs overflowed; check the model.")
            weight, mask = _wanda_leaf(plan, product, leaves[i], stats["squares"], seeds[i])
        leaves[i], masks[i] = weight, mask
    return jax.tree.unflatten(treedef, leaves), masks_from_leaves(params, masks)


def prune_one_shot(
    criterion: str,
    params: Params,
    layout: SparsityLayout,
    *,
    key: jax.Array,
    loss_fn: Callable[[Params, object], jax.Array] | None = None,
    apply_fn: Callable[[Params, object], object] | None = None,
    batches: Iterable | None = None,
    scope: str = "layer",
    block_size: int | None = None,
    damping: float | None = None,
    sequential: bool = True,
    fisher_memory: int = 2**30,
) -> OneShotResult:
    """Prunes a trained model in one shot, with exactly the layout's counts.

    ==============  ==========================================================  ============================
    criterion       removes the smallest                                        reference
    ==============  ==========================================================  ============================
    ``magnitude``   ``|theta_q|`` (group: L2 norm)                              the baseline
    ``taylor``      ``mean_b (sum_{q in G} g_{b,q} theta_q)^2``                 Molchanov et al. 2019
    ``obd``         ``1/2 theta_q^2 F_qq`` (group: sum)                         LeCun et al. 1990
    ``woodfisher``  ``theta_q^2 / (2 [F^-1]_qq)`` (group: sum), then OBS        Hassibi & Stork 1993;
                    compensation of the kept weights                            Singh & Alistarh 2020
    ``sparsegpt``   ``w^2 / [U]_jj^2`` column by column, OBS-compensated,       Frantar & Alistarh 2023
                    ``H = X^T X + lambda I`` of the layer's inputs
    ``wanda``       ``|W_ij| * ||X_j||_2`` within each output                   Sun et al. 2024
    ==============  ==========================================================  ============================

    ``g_b`` is the gradient of ``loss_fn`` on batch ``b``; ``F = (1/N) sum_n g_n g_n^T`` is the
    empirical Fisher over the ``N`` calibration examples' per-example gradients (``obd``: its
    diagonal; ``woodfisher``: its ``block_size`` diagonal blocks of each leaf, flattened row-major,
    inverted by ``N`` Woodbury rank-one updates from ``damping^-1 I``). WoodFisher's compensation is
    the exact minimiser of the quadratic model ``1/2 delta^T F delta`` with the pruned weights
    removed, per block: ``delta = -F^-1[:, Q] (F^-1[Q, Q])^-1 theta_Q``, which for one weight is OBS's
    ``-theta_q F^-1 e_q / [F^-1]_qq``.

    SparseGPT and Wanda prune each kernel by its *inputs* ``X`` (the rows entering its product:
    tokens, or a convolution's patches), found by tracing ``apply_fn``
    (:mod:`jaxsparse.one_shot` explains what cannot be traced). They run layer by layer in forward
    order; with ``sequential`` (the papers' protocol) each layer's inputs are computed with the
    layers before it already pruned. SparseGPT's ``damping`` is ``lambda`` as a fraction of the mean
    of ``diag(H)``; its lazy blocks and its adaptive mask selection span ``block_size`` inputs.

    **Counts and structure.** ``scope="layer"`` keeps each layer's count; ``scope="global"`` (magnitude,
    taylor, obd, woodfisher) one threshold over all layers, with the layout's total. Magnitude,
    taylor, obd and woodfisher accept every structure (group scores as in the table). SparseGPT
    accepts unstructured and N:M, and Wanda also constant fan-in; other structures are refused.

    **Memory** (``P`` parameters, ``B`` examples per batch, ``d_in`` a layer's input size):
    magnitude ``P``; taylor ``2P``; obd ``B P`` per-example gradients plus ``P``; woodfisher
    ``B P_g`` per-example gradients and ``4 P_g block_size`` bytes of Fisher blocks for a group of
    leaves with ``P_g`` weights that fits ``fisher_memory`` (all leaves at once when they fit);
    sparsegpt ``d_in^2`` for one layer at a time plus one batch's activations; wanda ``d_in`` per
    layer. Batches stream: only one is on the device at a time.

    Args:
      criterion: one of :data:`CRITERIA`.
      params: the trained parameters (for flax, ``variables["params"]``).
      layout: which leaves are sparsified, their sparsity and structure.
      key: orders ties (keyword-only); the same key gives the same result.
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of a batch (taylor, obd,
        woodfisher). Per-example gradients take it on batches of one: run it in inference mode.
      apply_fn: ``apply_fn(params, batch) -> outputs`` (sparsegpt, wanda), e.g.
        ``lambda p, b: model.apply({"params": p}, b[0])``.
      batches: the calibration batches, an iterable (taken once into a list); every array leaf of a
        batch has the examples on its leading axis.
      scope: ``"layer"`` or ``"global"``.
      block_size: WoodFisher's Fisher block (default 128) or SparseGPT's lazy block (default 128).
      damping: WoodFisher's ``lambda`` added to ``F`` (default 1e-5), or SparseGPT's relative
        ``lambda`` (default 0.01).
      sequential: SparseGPT and Wanda: capture each layer's inputs after pruning the earlier layers.
      fisher_memory: WoodFisher: the most bytes of Fisher blocks held at once (default 1 GiB). When
        the sparsified leaves' blocks do not all fit, leaves are processed in groups that do, with
        two passes over the calibration data per group (score, then compensate).

    Returns:
      An :class:`OneShotResult` ``(params, masks)``.

    Raises:
      ValueError: an unknown criterion or scope, missing ``loss_fn``/``apply_fn``/``batches``, a batch
        that does not fit the model, a structure the criterion does not support, global scope for
        sparsegpt/wanda or with a row-wise structure, a kernel whose inputs cannot be captured.
      FloatingPointError: a Fisher or Hessian that is not finite, or a SparseGPT update that diverged
        (the layer is named; raise ``damping``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsparse.masks import SparsityLayout
      >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])}
      >>> x = jnp.array([[1.0, 0.0], [1.0, 10.0]])
      >>> result = prune_one_shot("wanda", params, SparsityLayout(0.5, "uniform"), key=jax.random.key(0),
      ...                         apply_fn=lambda p, b: b @ p["w"], batches=[x])
      >>> result.params["w"].tolist()
      [[0.0, 0.0], [0.5, 2.0]]

    References:
      LeCun, Denker, Solla, "Optimal Brain Damage", NeurIPS 1990.
      Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon", NeurIPS 1993.
      Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network Pruning", CVPR 2019.
      Singh & Alistarh, "WoodFisher: Efficient Second-Order Approximation for Neural Network
      Compression", NeurIPS 2020.
      Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
      ICML 2023.
      Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models"
      (Wanda), ICLR 2024.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(map(repr, CRITERIA))}.")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose 'layer' (each layer's count) or 'global' (one threshold).")
    check_pooled_scope(scope, layout, "scope")
    plans, chosen_indices = _sparsified(layout, params)
    defaults = _DEFAULTS.get(criterion, {})
    block_size = defaults.get("block_size") if block_size is None else block_size
    damping = defaults.get("damping") if damping is None else damping
    if criterion in _DEFAULTS and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    if criterion in _DEFAULTS and not (isinstance(damping, (int, float)) and np.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be a positive finite number, got {damping!r}.")
    if isinstance(fisher_memory, bool) or not isinstance(fisher_memory, int) or fisher_memory < 1:
        raise ValueError(f"fisher_memory must be a positive number of bytes, got {fisher_memory!r}.")
    if criterion in _STRUCTURES:
        allowed = _STRUCTURES[criterion]
        for plan in plans:
            if plan is not None and not isinstance(plan.structure, allowed):
                raise ValueError(
                    f"criterion {criterion!r} does not support the {plan.structure.name!r} structure of layer "
                    f"{plan.name!r}; it supports {', '.join(cls.name for cls in allowed)}. Use magnitude, taylor, obd "
                    "or woodfisher for other structures, or a per-layer structure."
                )
        if scope == "global":
            raise ValueError(
                f"criterion {criterion!r} prunes each layer to its own sparsity (as the paper does): use "
                "scope='layer', with the layout's distribution for per-layer sparsities."
            )
        if apply_fn is None:
            raise ValueError(
                f"criterion {criterion!r} prunes by each layer's inputs: pass apply_fn(params, batch) -> outputs, "
                "e.g. lambda p, b: model.apply({'params': p}, b[0])."
            )
        batches = _check_batches(criterion, batches, "batches for apply_fn(params, batch)")
        _check_fits(apply_fn, "apply_fn", params, batches)
        pruned, masks = _layer_wise(
            criterion, params, plans, chosen_indices, apply_fn, batches, block_size, damping, sequential, key
        )
        return OneShotResult(pruned, masks)
    if criterion in _NEEDS_LOSS:
        if loss_fn is None:
            raise ValueError(
                f"criterion {criterion!r} needs gradients: pass loss_fn(params, batch) -> mean loss of the batch."
            )
        batches = _check_batches(criterion, batches, "(inputs, labels) batches for loss_fn")
        _check_fits(loss_fn, "loss_fn", params, batches)
    if criterion == "woodfisher":
        params, masks = _woodfisher_prune(
            layout, scope, key, params, plans, chosen_indices, loss_fn, batches, block_size, damping, fisher_memory
        )
        return OneShotResult(_apply_masks(params, plans, masks), masks)
    chosen = [plan is not None for plan in plans]
    scores, reduction = _element_scores(criterion, params, plans, chosen, loss_fn, batches)
    masks = masks_from_scores(
        layout, params, masks_from_leaves(params, scores), key=key, scope=scope, reduction=reduction
    )
    return OneShotResult(_apply_masks(params, plans, masks), masks)
