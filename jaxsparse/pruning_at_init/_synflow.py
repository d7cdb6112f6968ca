"""SynFlow's synaptic saliency, with a float32 overflow guard that leaves the scores' order exact.

**The score.** Every floating leaf of the parameters is replaced by its absolute value and the
sparsified ones are masked, ``a = |theta|`` with ``W = a * m``; the network is evaluated on an
all-ones input and its outputs summed,

.. math::

    R(a) = \\mathbb{1}^\\top f(|\\theta| \\odot m, \\mathbb{1}), \\qquad
    S(\\theta) = \\left| \\frac{\\partial R}{\\partial a} \\odot a \\right|,

so pruned weights score 0. For a chain of linear layers ``R = 1^T |W_1| ... |W_L| 1``.

**Overflow.** ``R`` is a product over depth: 20 layers each multiplying the signal by 100 give
``1e40``, past float32's ``3.4e38``, and the scores become ``inf`` or ``NaN``. With
``jax_enable_x64`` on, everything is computed in float64. In either precision, when the plain
computation is not safely inside the range (``R`` and every score finite, and ``R`` within
``[sqrt(tiny), sqrt(max)]``: ``[1.1e-19, 1.8e19]`` in float32), each nonzero leaf ``j`` is scaled
by an exact power of two ``c_j = 2^{-e_j}``, chosen so that the leaf multiplies the signal by about
one (``e_j`` from the leaf's mean column sum ``sum(a_j) / shape[-1]``).

**When the rescaling is exact.** If ``R`` is positively homogeneous of degree one in every nonzero
leaf separately, ``R(c_1 a_1, ..., c_n a_n) = (prod_j c_j) R(a)``, then
``dR/da_j`` at the scaled point is ``(prod c) / c_j`` times its plain value, and every score,
``|dR/da_j * c_j a_j|``, is the plain score times the same factor ``prod c``. Scaling by a power
of two commutes with float rounding (barring under- or overflow, which is what the scaling
avoids), so the same operations give the plain scores times one common power of two, bit for bit
(checked on CPU for ReLU MLPs of 3 and 20 layers): the same order, the same layer and global
selections. That class is:

* feed-forward chains in which every input-output path crosses each nonzero leaf exactly once:
  dense and convolutional kernels (with zero-padding), pooling (max or average), reshapes;
* with positively homogeneous activations (ReLU, leaky ReLU, identity; on the all-ones input of
  ``|theta|`` every pre-activation is non-negative, so ReLU passes everything through);
* with biases that are zero (the usual initialisation: their absolute value adds nothing) and
  normalisation that is affine with fixed statistics and zero shift (eval-mode BatchNorm at init).

Outside it (nonzero biases, residual connections, LayerNorm or train-mode BatchNorm, softmax,
GELU, shared weights) scaling changes the scores by more than a common factor. That is detected by
Euler's identity, which degree-one homogeneity implies: ``sum(dR/da_j * a_j) = R`` for every leaf
(to 1% relative, which also absorbs float summation error). If the plain computation is finite,
it is used as it is; if it overflows and the identity fails, the result carries an error code, and
the caller raises, pointing to float64.

**R = 0.** When no signal reaches the output (a leaf on every path is zero, or every weight of a
layer is pruned) all scores are 0 and there is nothing to rank; that is reported, too.

References:
  Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020 (its conservation of synaptic saliency is this identity).
  Reference code: ``ganguli-lab/Synaptic-Flow``, ``Pruners/pruners.py`` (``SynFlow.score``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.masks import LayerPlan, Params

__all__ = ["NO_PATH", "OK", "OVERFLOW", "compute_dtype", "synflow_scores"]

OK, NO_PATH, OVERFLOW = 0, 1, 2
"""Status codes: scores usable; ``R = 0``; ``R`` overflows and the network is outside the rescaling's class."""

_EULER_TOLERANCE = 1e-2


def compute_dtype() -> jnp.dtype:
    """float64 when ``jax_enable_x64`` is on, float32 otherwise."""
    return jnp.dtype(jnp.float64) if jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)


def _pow2(exponent: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """Exactly ``2**exponent`` (an integer in the normal range of ``dtype``), built from its bits."""
    info = jnp.finfo(dtype)
    ints = jnp.int64 if dtype == jnp.float64 else jnp.int32
    exponent = jnp.clip(exponent, info.minexp, info.maxexp - 1).astype(ints)
    return lax.bitcast_convert_type((exponent + (info.maxexp - 1)) << info.nmant, dtype)


def _scale(x: jax.Array, exponent: jax.Array) -> jax.Array:
    """``x * 2**-exponent``, exactly, in two halves so that neither factor leaves the normal range."""
    half = exponent // 2
    return x * _pow2(-half, x.dtype) * _pow2(half - exponent, x.dtype)


def _floor_log2(x: jax.Array) -> jax.Array:
    """``floor(log2(x))`` of a positive normal float, read off its exponent bits."""
    info = jnp.finfo(x.dtype)
    ints = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    bits = lax.bitcast_convert_type(x, ints)
    return ((bits >> info.nmant) & (2 * info.maxexp - 1)) - (info.maxexp - 1)


def _exponents(values: jax.Array, segments: np.ndarray, columns: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Per leaf, ``e`` with ``2^-e * a`` multiplying the signal by about one, and whether it is scaled (nonzero).

    ``values`` holds every leaf's non-negative entries end to end, ``segments`` each entry's leaf.
    The gain of a non-negative kernel on a constant signal is its mean column sum, ``sum(a) /
    shape[-1]`` (dense ``(in, out)`` and HWIO conv kernels alike; ``columns`` holds ``shape[-1]``,
    or a vector's size: its mean). It is computed relative to the leaf's maximum, so the sum cannot
    overflow, and rounded to the nearest power of two; only ``2^-e`` itself needs to be exact.
    """
    count = len(columns)
    top = jax.ops.segment_max(values, segments, count, indices_are_sorted=True)
    valid = (top > 0) & jnp.isfinite(top)
    top = jnp.where(valid, top, 1)
    gain = jax.ops.segment_sum(values / top[segments], segments, count, indices_are_sorted=True)
    gain = gain / jnp.asarray(columns, values.dtype)
    tiny = jnp.finfo(values.dtype).tiny
    exponent = _floor_log2(top) + _floor_log2(jnp.maximum(gain * np.sqrt(2.0), tiny))
    return jnp.where(valid, exponent, 0), valid


def synflow_scores(
    apply_fn: Callable,
    params: Params,
    masks: Sequence[jax.Array | None],
    inputs,
    plans: Sequence[LayerPlan | None],
) -> tuple[list[jax.Array | None], jax.Array]:
    """SynFlow scores of the sparsified leaves at element level, and a status code (``OK``, ``NO_PATH``, ``OVERFLOW``).

    The floating leaves are handled end to end as one vector, so that scaling, checks and the
    per-leaf reductions are a few operations whatever the number of leaves (compilation time).

    Args:
      apply_fn: ``apply_fn(params, inputs) -> outputs`` (any pytree of arrays; ``R`` sums them all).
      params: the parameters.
      masks: per leaf, the element-level mask (``None`` at dense leaves).
      inputs: example inputs; only their shapes (and integer dtypes) are used, as all-ones.
      plans: the layout's plan of ``params``.

    Returns:
      The scores (``None`` at dense leaves; common to all leaves up to one power of two) and the status.
    """
    dtype = compute_dtype()
    leaves, treedef = jax.tree.flatten(params)
    floating = [i for i, x in enumerate(leaves) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    shapes = [jnp.shape(leaves[i]) for i in floating]
    sizes = [int(np.prod(shape)) for shape in shapes]
    segments = np.repeat(np.arange(len(floating)), sizes)
    columns = np.array(
        [shape[-1] if len(shape) >= 2 else max(size, 1) for shape, size in zip(shapes, sizes, strict=True)], float
    )
    magnitudes = jnp.concatenate([jnp.abs(leaves[i]).astype(dtype).ravel() for i in floating])
    kept = jnp.concatenate(
        [
            jnp.ones(size, bool) if masks[i] is None else masks[i].ravel()
            for i, size in zip(floating, sizes, strict=True)
        ]
    )
    ones = jax.tree.map(
        lambda x: jnp.ones(jnp.shape(x), dtype if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x.dtype),
        inputs,
    )
    offsets = np.cumsum(sizes)[:-1]

    def flow(values: jax.Array) -> jax.Array:
        pieces = jnp.split(jnp.where(kept, values, jnp.zeros((), dtype)), offsets)
        rebuilt = list(leaves)
        for i, piece, shape in zip(floating, pieces, shapes, strict=True):
            rebuilt[i] = piece.reshape(shape)
        outputs = apply_fn(jax.tree.unflatten(treedef, rebuilt), ones)
        return sum(jnp.sum(out.astype(dtype)) for out in jax.tree.leaves(outputs))

    def scored(values: jax.Array) -> tuple[jax.Array, jax.Array]:
        flow_value, grads = jax.value_and_grad(flow)(values)
        return flow_value, grads * values

    info = jnp.finfo(dtype)
    flow_value, products = scored(magnitudes)
    finite = jnp.isfinite(flow_value) & jnp.all(jnp.isfinite(products))
    plain_usable = finite & (flow_value > 0)
    in_range = plain_usable & (flow_value >= np.sqrt(info.tiny)) & (flow_value <= np.sqrt(info.max))

    def plain() -> tuple[jax.Array, jax.Array]:
        return products, jnp.int32(OK)

    def rescaled() -> tuple[jax.Array, jax.Array]:
        exponents, scaled = _exponents(jnp.where(kept, magnitudes, jnp.zeros((), dtype)), segments, columns)
        scaled_flow, scaled_products = scored(_scale(magnitudes, exponents[segments]))
        euler = jax.ops.segment_sum(scaled_products, segments, len(floating), indices_are_sorted=True)
        homogeneous = jnp.all(~scaled | (jnp.abs(euler - scaled_flow) <= _EULER_TOLERANCE * scaled_flow))
        certified = jnp.isfinite(scaled_flow) & (scaled_flow > 0) & homogeneous & jnp.all(jnp.isfinite(scaled_products))
        no_path = finite & (flow_value == 0) & (scaled_flow == 0)
        status = jnp.where(certified | plain_usable, OK, jnp.where(no_path, NO_PATH, OVERFLOW))
        return jnp.where(certified, scaled_products, products), status.astype(jnp.int32)

    chosen, status = lax.cond(in_range, plain, rescaled)
    chosen = jnp.abs(chosen)
    if dtype == jnp.float64:
        # Selection ranks float32 keys: bring the largest score near 1 (a power of two, exact)
        # so that float64 scores past float32's range keep their order.
        top = jnp.max(chosen)
        chosen = _scale(chosen, _floor_log2(jnp.where(jnp.isfinite(top) & (top > 0), top, 1)))
    element = [None] * len(leaves)
    for i, piece, shape in zip(floating, jnp.split(chosen, offsets), shapes, strict=True):
        element[i] = piece.reshape(shape)
    return [None if plan is None else element[i] for i, plan in enumerate(plans)], status
