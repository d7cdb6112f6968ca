"""Wanda: prune by weight magnitude times input norm, compared within each output (Sun et al., ICLR 2024).

Weight ``W_ij`` from input ``j`` to output ``i`` scores ``S_ij = |W_ij| * ||X_j||_2``, where ``X_j`` is
input feature ``j`` over all calibration rows (tokens, or a convolution's patch positions). The
paper compares scores within each output (its "per-output" comparison group) and keeps the same
number of weights in every output; the remaining weights are not updated.

Per-output counts: a layer keeping ``K`` of its ``d_in x d_out`` weights keeps ``k = K // d_out`` in
every output, and the ``r = K mod d_out`` outputs whose ``(k+1)``-th best score is largest keep one
more, so the layer's count is exactly ``K``. Under N:M (``n`` of every ``m`` consecutive inputs of an
output) or constant fan-in the structure's own per-row selection is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.masks import FanIn
from jaxsparse.one_shot._capture import KernelProduct
from jaxsparse.selection import order_keys, top_k_mask

__all__ = ["per_output_mask", "wanda_scores"]


def wanda_scores(product: KernelProduct, kernel: jax.Array, squares: jax.Array) -> jax.Array:
    """``|W| * ||X_j||_2`` in the kernel leaf's layout, from the inputs' column sums of squares."""
    norms = jnp.sqrt(squares).astype(jnp.float32)
    return product.from_matrix(jnp.abs(product.to_matrix(kernel)).astype(jnp.float32) * norms[:, None])


def per_output_mask(scores: jax.Array, kept: int, tie_seed) -> jax.Array:
    """The mask of a ``(d_in, d_out)`` score matrix keeping ``kept`` in total, as evenly as possible per output.

    Each output (column) keeps its ``kept // d_out`` best; the ``kept mod d_out`` columns whose next
    best score is largest keep one more. Exact, with ties ordered by ``tie_seed``.
    """
    d_in, d_out = scores.shape
    base, extra = divmod(kept, d_out)
    mask = FanIn().select(scores, base, tie_seed=tie_seed) if base else jnp.zeros(scores.shape, bool)
    if extra:
        nxt = FanIn().select(scores, 1, candidates=~mask, tie_seed=tie_seed)
        best_next = jnp.max(jnp.where(nxt, order_keys(scores), jnp.zeros((), order_keys(scores).dtype)), axis=0)
        columns = top_k_mask(best_next, extra, tie_seed=tie_seed)
        mask = mask | (nxt & columns[None, :])
    return mask
