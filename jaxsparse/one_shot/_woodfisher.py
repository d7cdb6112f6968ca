"""Optimal Brain Surgeon with a block-diagonal inverse empirical Fisher (WoodFisher).

OBS (Hassibi & Stork 1993) models the loss near trained weights ``theta`` by a quadratic,
``dL = 1/2 delta^T F delta``, and removes a set ``Q`` of weights by the cheapest compensating
change of the others:

.. math::

    \\delta^* = \\arg\\min_{\\delta} \\tfrac12 \\delta^\\top F \\delta
    \\ \\text{s.t.}\\ \\theta_Q + \\delta_Q = 0
    \\ =\\ -F^{-1}_{:,Q} \\left(F^{-1}_{QQ}\\right)^{-1} \\theta_Q,
    \\qquad dL^* = \\tfrac12 \\theta_Q^\\top \\left(F^{-1}_{QQ}\\right)^{-1} \\theta_Q,

which for one weight ``q`` is the classic ``delta = -theta_q F^{-1} e_q / [F^{-1}]_{qq}`` with
saliency ``theta_q^2 / (2 [F^{-1}]_{qq})``. WoodFisher (Singh & Alistarh 2020) takes for ``F`` the
dampened empirical Fisher of ``N`` per-example gradients,

.. math::

    F = \\lambda I + \\frac1N \\sum_{n=1}^{N} g_n g_n^\\top,

and builds its inverse without ever inverting, by ``N`` rank-one Woodbury updates from
``F_0^{-1} = I / lambda``:

.. math::

    F_n^{-1} = F_{n-1}^{-1}
      - \\frac{F_{n-1}^{-1} g_n \\, (F_{n-1}^{-1} g_n)^\\top}{N + g_n^\\top F_{n-1}^{-1} g_n}.

**Blocks.** ``F`` is kept block-diagonal: a parameter leaf is flattened row-major and cut into
contiguous blocks of ``min(block_size, size)`` entries, each with its own inverse, so memory is
``size x block_size`` and OBS couples weights only within a block. The last block is padded with
dummy coordinates that have zero weight and zero gradient: their part of the Fisher stays
``lambda I``, uncoupled from the real coordinates, so the real part of every block is exactly the
inverse of the real Fisher block. Dummies are never pruned, and every output drops them.

**Defaults** (not set here; the caller chooses): the WoodFisher code (IST-DASLab/WoodFisher,
``options.py``) defaults to ``--fisher-damp 1e-3``, and its ImageNet scripts (ResNet-50,
MobileNetV1) use ``1e-5``. The block size is its ``--fittable-params`` (with
``--fisher-split-grads``; without it a whole layer is one block): 2,000 in its ResNet-50 scripts
(1,000 at 98% sparsity), 10,000 in the MobileNetV1 ones, and its README suggests 1,000-2,000 for
ResNet-50 and 5,000-20,000 for MobileNetV1. Its Woodbury denominator is ``N + g^T F^{-1} g``
with ``N`` the ``--fisher-subsample-size``, as here.

All products run at ``Precision.HIGHEST``, in the inverse's floating dtype (at least float32).

References:
  Hassibi, Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
  NeurIPS 1993.
  Singh, Alistarh, "WoodFisher: Efficient Second-Order Approximation for Neural Network
  Compression", NeurIPS 2020.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["fisher_inverse_init", "obs_saliency", "obs_update", "woodbury_update"]

_HIGHEST = lax.Precision.HIGHEST


def _check_inverse(inverse: jax.Array) -> None:
    if inverse.ndim != 3 or inverse.shape[1] != inverse.shape[2] or not jnp.issubdtype(inverse.dtype, jnp.floating):
        raise ValueError(
            "inverse must be a floating (blocks, block_size, block_size) stack of inverse Fisher blocks, "
            f"as fisher_inverse_init returns, got shape {inverse.shape} and dtype {inverse.dtype}."
        )


def _blocked(flat: jax.Array, inverse: jax.Array) -> jax.Array:
    """``(..., size)`` as ``(..., blocks, block_size)``, the last block padded with zeros (``False``)."""
    blocks, width, _ = inverse.shape
    size = flat.shape[-1]
    if not (blocks - 1) * width < size <= blocks * width:
        raise ValueError(
            f"an inverse of {blocks} blocks of {width} covers {(blocks - 1) * width + 1} to {blocks * width} "
            f"weights, got {size}; build it with fisher_inverse_init({size}, block_size, damping)."
        )
    padding = [(0, 0)] * (flat.ndim - 1) + [(0, blocks * width - size)]
    return jnp.pad(flat, padding).reshape(flat.shape[:-1] + (blocks, width))


def _compute_dtype(*arrays: jax.Array) -> jnp.dtype:
    return jnp.result_type(jnp.float32, *(a.dtype for a in arrays))


def fisher_inverse_init(size: int, block_size: int, damping: float, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """The inverse of the dampened Fisher before any gradient: ``F_0^{-1} = I / lambda`` per block.

    Args:
      size: number of weights in the leaf.
      block_size: weights per block; blocks have ``min(block_size, size)`` entries.
      damping: ``lambda > 0``.
      dtype: floating dtype of the inverse.

    Returns:
      ``(ceil(size / b), b, b)`` with ``b = min(block_size, size)``, each block ``I / lambda``.

    Example:
      >>> fisher_inverse_init(5, 2, 0.5).shape
      (3, 2, 2)
      >>> fisher_inverse_init(5, 2, 0.5)[0].tolist()
      [[2.0, 0.0], [0.0, 2.0]]
    """
    for name, value in (("size", size), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not isinstance(damping, numbers.Real) or not damping > 0:
        raise ValueError(f"damping must be a positive number (lambda of lambda I + F), got {damping!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be floating, got {dtype!r}.")
    width = min(block_size, size)
    blocks = -(-size // width)
    return jnp.broadcast_to(jnp.eye(width, dtype=dtype) / damping, (blocks, width, width))


def _rank_one_update(inverse: jax.Array, grad: jax.Array, num_examples: jax.typing.ArrayLike) -> jax.Array:
    """One block's ``F^{-1} - u u^T`` with ``u = F^{-1} g / sqrt(N + g^T F^{-1} g)``."""
    product = jnp.matmul(inverse, grad, precision=_HIGHEST)
    scaled = product / jnp.sqrt(num_examples + jnp.dot(grad, product, precision=_HIGHEST))
    return inverse - jnp.outer(scaled, scaled)


def woodbury_update(inverse: jax.Array, grads: jax.Array, num_examples: int) -> jax.Array:
    """Folds per-example gradients into the inverse Fisher by sequential Woodbury updates.

    .. math::

        F_k^{-1} = F_{k-1}^{-1}
          - \\frac{F_{k-1}^{-1} g_k \\, (F_{k-1}^{-1} g_k)^\\top}{N + g_k^\\top F_{k-1}^{-1} g_k}

    per block, so that after all ``N`` examples (in one call or in chunks) each block is
    ``(lambda I + (1/N) sum_n g_n g_n^T)^{-1}`` (Singh & Alistarh 2020).

    Args:
      inverse: ``(blocks, b, b)`` current inverse (from :func:`fisher_inverse_init` or a previous
        call).
      grads: ``(k, size)`` per-example gradients of the leaf, flattened row-major (a chunk).
      num_examples: ``N``, the total number of examples over all chunks.

    Returns:
      The updated inverse, shaped and typed like ``inverse``.

    Example:
      >>> import jax.numpy as jnp
      >>> inverse = woodbury_update(fisher_inverse_init(2, 2, 1.0), jnp.array([[1.0, 0.0]]), 1)
      >>> jnp.round(inverse[0], 4).tolist()  # inv(I + g g^T)
      [[0.5, 0.0], [0.0, 1.0]]
    """
    inverse = jnp.asarray(inverse)
    grads = jnp.asarray(grads)
    _check_inverse(inverse)
    if grads.ndim != 2:
        raise ValueError(f"grads must be (examples, size) per-example gradients, got shape {grads.shape}.")
    if isinstance(num_examples, numbers.Real) and not num_examples > 0:
        raise ValueError(f"num_examples must be positive (N of the Fisher's 1/N), got {num_examples!r}.")
    dtype = _compute_dtype(inverse, grads)
    blocked = _blocked(grads.astype(dtype), inverse)  # (k, blocks, b)
    update = jax.vmap(_rank_one_update, in_axes=(0, 0, None))

    def step(current, grad):
        return update(current, grad, num_examples), None

    updated, _ = lax.scan(step, inverse.astype(dtype), blocked)
    return updated.astype(inverse.dtype)


def obs_saliency(theta: jax.Array, inverse: jax.Array) -> jax.Array:
    """OBS saliency of removing each weight alone: ``theta_q^2 / (2 [F^{-1}]_qq)``.

    Args:
      theta: the leaf (any shape), flattened row-major against the blocks of ``inverse``.
      inverse: ``(blocks, b, b)`` inverse Fisher blocks of the leaf.

    Returns:
      Scores shaped like ``theta`` (larger: costlier to remove), in ``theta``'s and ``inverse``'s
      floating dtype, at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> obs_saliency(jnp.array([[1.0, 2.0], [3.0, 0.0]]), fisher_inverse_init(4, 3, 2.0)).tolist()
      [[1.0, 4.0], [9.0, 0.0]]

    References:
      Hassibi, Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
      NeurIPS 1993 (``L_q``).
    """
    theta = jnp.asarray(theta)
    inverse = jnp.asarray(inverse)
    _check_inverse(inverse)
    dtype = _compute_dtype(theta, inverse)
    flat = _blocked(theta.reshape(-1).astype(dtype), inverse).reshape(-1)
    diagonal = jnp.diagonal(inverse, axis1=1, axis2=2).reshape(-1).astype(dtype)
    return (jnp.square(flat) / (2 * diagonal))[: theta.size].reshape(theta.shape)


def _obs_block(inverse: jax.Array, theta: jax.Array, prune: jax.Array) -> jax.Array:
    """One block's ``theta + delta``: solve ``(P F^{-1} P + I - P) z = P theta``, ``delta = -F^{-1} z``.

    The rows in ``Q`` read ``F^{-1}_{QQ} z_Q = theta_Q`` and the others ``z_j = 0``, so
    ``-F^{-1} z = -F^{-1}_{:,Q} (F^{-1}_{QQ})^{-1} theta_Q`` with fixed shapes for any ``Q``.
    """
    selected = prune.astype(inverse.dtype)
    system = selected[:, None] * inverse * selected[None, :] + jnp.diag(1 - selected)
    dual = jnp.linalg.solve(system, selected * theta)
    return theta - jnp.matmul(inverse, dual, precision=_HIGHEST)


def obs_update(theta: jax.Array, inverse: jax.Array, prune: jax.Array) -> jax.Array:
    """Removes the weights ``Q`` jointly by the exact OBS step of each Fisher block.

    .. math::

        \\delta = -F^{-1}_{:,Q} \\left(F^{-1}_{QQ}\\right)^{-1} \\theta_Q
        = \\arg\\min_{\\delta} \\tfrac12 \\delta^\\top F \\delta
        \\ \\text{s.t.}\\ \\theta_Q + \\delta_Q = 0,

    block by block (``F`` is block-diagonal, so blocks do not interact). For ``|Q| = 1`` this is
    ``delta = -theta_q F^{-1} e_q / [F^{-1}]_qq`` (Hassibi & Stork 1993); for larger ``Q`` the
    joint step that WoodFisher (Singh & Alistarh 2020) uses to prune several weights at once. With fixed
    shapes it solves the masked system ``(P F^{-1} P + (I - P)) z = P theta`` (``P = diag(prune)``),
    ``delta = -F^{-1} z``, at ``O(b^3)`` per block.

    Args:
      theta: the leaf (any shape), flattened row-major against the blocks of ``inverse``.
      inverse: ``(blocks, b, b)`` inverse Fisher blocks of the leaf.
      prune: ``bool``, shaped like ``theta``: the set ``Q`` to remove.

    Returns:
      ``theta + delta``, shaped and typed like ``theta``, exactly 0 at ``Q``.

    Example:
      >>> import jax.numpy as jnp
      >>> inverse = jnp.array([[[2.0, 1.0], [1.0, 2.0]]])
      >>> obs_update(jnp.array([1.0, 1.0]), inverse, jnp.array([True, False])).tolist()
      [0.0, 0.5]
    """
    theta = jnp.asarray(theta)
    inverse = jnp.asarray(inverse)
    prune = jnp.asarray(prune)
    _check_inverse(inverse)
    if prune.shape != theta.shape or prune.dtype != jnp.bool_:
        raise ValueError(
            f"prune must be a bool array shaped like theta {theta.shape}, got {prune.dtype} of shape {prune.shape}."
        )
    dtype = _compute_dtype(theta, inverse)
    blocked_theta = _blocked(theta.reshape(-1).astype(dtype), inverse)
    blocked_prune = _blocked(prune.reshape(-1), inverse)
    updated = jax.vmap(_obs_block)(inverse.astype(dtype), blocked_theta, blocked_prune)
    updated = jnp.where(blocked_prune, 0, updated).reshape(-1)[: theta.size]
    return updated.reshape(theta.shape).astype(theta.dtype)
