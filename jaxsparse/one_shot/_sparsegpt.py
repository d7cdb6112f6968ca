"""SparseGPT: one-shot pruning of a linear layer by sequential OBS updates over its inputs.

A layer ``y = x @ W`` with ``W`` of shape ``(d_in, d_out)`` (flax's orientation) is pruned to a mask
``M`` so that the layer's output on calibration inputs changes little,

.. math::

    \\min_{M, \\hat W} \\lVert X W - X (M \\odot \\hat W) \\rVert_F^2
    = \\sum_{o} (w_o - \\hat w_o)^\\top H (w_o - \\hat w_o), \\qquad H = X^\\top X,

one independent quadratic per output ``o`` sharing the same Hessian ``H`` (``d_in x d_in``). The
paper's "columns" are our *inputs* (axis 0) and its "rows" our outputs (axis 1).

**Sequential OBS.** With the dampened Hessian ``H_lambda = H + lambda mean(diag H) I`` and the
upper-triangular ``U`` with ``H_lambda^{-1} = U^T U``, the inputs are visited in order
``j = 0, 1, ...``. At input ``j``, with the current (already updated) row ``w_j`` in
``R^{d_out}`` and its mask row ``m_j``,

.. math::

    q_j = m_j \\odot w_j, \\qquad e_j = (w_j - q_j) / U_{jj}, \\qquad
    w_k \\leftarrow w_k - U_{jk}\\, e_j \\quad (k > j).

This is the Optimal Brain Surgeon step for every output at once, restricted to the inputs not yet
visited, ``F = {j, j+1, ...}``: row ``j`` of the Cholesky factor holds the needed row of that
sub-problem's inverse Hessian, ``[H_F^{-1}]_{jk} / [H_F^{-1}]_{jj} = U_{jk} / U_{jj}`` and
``[H_F^{-1}]_{jj} = U_{jj}^2`` (the Cholesky form of GPTQ, used by SparseGPT), so no inverse is ever
recomputed. Visited inputs are final.

**Lazy blocks.** Updates are batched over ``block_size`` inputs: inside a block, the current value
of an input is its stored value minus the block's pending errors, ``w_k - U_{B,k}^T E_B``, and after
the block every later input receives ``-U_{B,:}^T E_B`` at once (a matrix product instead of
``block_size`` outer products). The arithmetic is that of the column-by-column algorithm, so the
result does not depend on ``block_size`` beyond float rounding.

**Adaptive mask selection.** Masks are chosen as the algorithm runs, on the current weights, by the
OBS saliency ``w_{jo}^2 / [H_F^{-1}]_{jj} = (w_{jo} / U_{jj})^2`` (the error of pruning one weight,
up to the factor ``1/2``):

* unstructured: at the start of every slab of ``mask_block`` inputs, the slab's lowest-saliency
  weights (over all its outputs) are pruned. The paper prunes a fixed fraction of every slab; here
  slab ``b`` covering inputs ``[s_b, e_b)`` prunes ``floor(P e_b / d_in) - floor(P s_b / d_in)``
  weights, ``P = d_in d_out - kept``, so the layer keeps exactly ``kept`` (the slab counts sum to
  ``P`` by telescoping);
* ``n:m``: at every ``m`` inputs, each output keeps its ``n`` highest-saliency weights among those
  ``m`` inputs (groups along the input axis, as :class:`~jaxsparse.masks.NM` by default).

Selection is exact (:func:`~jaxsparse.selection.top_k_mask`, :meth:`~jaxsparse.masks.NM.select`);
tied scores are ordered by the library's keyed hash of the position within the slab, with seed
``tie_seed ^ s_b``, so slabs do not share one tie pattern.

**Dead inputs** (``H_jj = 0``: an input that is zero on every calibration row) get ``H_jj = 1`` and
their weights are zeroed, as in the reference implementation; they are decoupled from every other
input, so this changes nothing else. **Padding**: when ``d_in`` is not a multiple of ``block_size``
or of ``mask_block``, the layer is padded with dummy inputs whose weights are zero and whose block of
``U`` is the identity. They never receive or pass on an error, are never selection candidates, and
are dropped from the result.

**Defaults** follow the reference implementation (IST-DASLab/sparsegpt, ``SparseGPT.fasterprune``):
``blocksize=128`` (its masks are chosen per lazy block, so both block sizes are 128 there) and
``percdamp=.01``, the dampening as a fraction of ``mean(diag H)``. That code's ``prunen`` counts the
weights *pruned* per group of ``prunem``; our ``nm=(n, m)`` counts those *kept*, as
:class:`~jaxsparse.masks.NM` does (the same for 2:4).

**Cost.** Memory: ``H`` and its factors, a few ``d_in^2`` arrays, plus the ``d_in x d_out`` weights
and a ``block_size x d_in`` slice of ``U``. Time: ``O(d_in^3)`` for the Cholesky factorisations and
``O(d_in^2 d_out)`` for the updates. With fixed shapes the lazy update of a block multiplies by the
full ``block_size x d_in`` slice of ``U`` (its lower part is zero), about twice the reference's
triangular work. All matrix products run at ``Precision.HIGHEST`` (the reference disables TF32).

References:
  Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
  ICML 2023, Algorithm 1.
  Hassibi, Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
  NeurIPS 1993.
  Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
  Pre-trained Transformers", ICLR 2023 (the Cholesky form and lazy batching).
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsparse.masks import NM
from jaxsparse.selection import top_k_mask

__all__ = ["sparsegpt_prune"]

_HIGHEST = lax.Precision.HIGHEST


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _slab_keep_counts(kept: int, d_in: int, d_out: int, slab: int) -> np.ndarray:
    """Weights kept in each slab of ``slab`` inputs, so that exactly ``kept`` are kept in all.

    Slab ``[s, e)`` prunes ``floor(P e / d_in) - floor(P s / d_in)`` of its ``(e - s) d_out``
    weights, ``P = d_in d_out - kept`` (Python integers: no overflow).
    """
    pruned = d_in * d_out - kept
    counts = []
    for start in range(0, d_in, slab):
        end = min(start + slab, d_in)
        counts.append((end - start) * d_out - (pruned * end // d_in - pruned * start // d_in))
    return np.asarray(counts, np.int32)


def _inverse_hessian_factor(hessian: jax.Array, damping: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Upper ``U`` with ``U^T U = (H + lambda mean(diag H) I)^{-1}``, after setting dead ``H_jj`` to 1.

    As the reference: ``cholesky(H)``, the inverse from that factor, then the inverse's upper
    Cholesky factor. Returns ``(U, dead)``.
    """
    size = hessian.shape[0]
    identity = jnp.eye(size, dtype=hessian.dtype)
    dead = jnp.diagonal(hessian) == 0
    hessian = hessian + jnp.diag(dead.astype(hessian.dtype))
    hessian = hessian + damping * jnp.mean(jnp.diagonal(hessian)) * identity
    inverse = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(hessian), True), identity)
    # triu: entries below the diagonal must be exact zeros, so that the lazy update of a block,
    # a product with whole rows of U, leaves every input before the block untouched.
    return jnp.triu(jnp.linalg.cholesky(inverse).T), dead


@functools.partial(jax.jit, static_argnames=("block_size", "slab", "nm_kept"))
def _sparsegpt(
    weight: jax.Array,
    hessian: jax.Array,
    keep_counts: jax.Array | None,
    damping: jax.typing.ArrayLike,
    tie_seed: jax.typing.ArrayLike,
    *,
    block_size: int,
    slab: int,
    nm_kept: int | None,
) -> tuple[jax.Array, jax.Array]:
    """Algorithm 1 on checked inputs; ``nm_kept`` is ``n`` for ``n:m`` (``slab == m``), else ``None``."""
    d_in, d_out = weight.shape
    dtype = jnp.promote_types(weight.dtype, jnp.float32)
    factor, dead = _inverse_hessian_factor(hessian.astype(dtype), damping)
    padded = max(_round_up(d_in, block_size), _round_up(d_in, slab))
    factor = jnp.eye(padded, dtype=dtype).at[:d_in, :d_in].set(factor)
    inverse_diagonal = 1 / jnp.diagonal(factor)
    weights = jnp.zeros((padded, d_out), dtype).at[:d_in].set(jnp.where(dead[:, None], 0, weight.astype(dtype)))
    seed = jnp.asarray(tie_seed).astype(jnp.uint32)
    slab_inputs = jnp.arange(slab)

    def select(scores: jax.Array, start: jax.Array) -> jax.Array:
        slab_seed = seed ^ start.astype(jnp.uint32)
        if nm_kept is not None:
            return NM(nm_kept, slab).select(scores, nm_kept, tie_seed=slab_seed)
        real = jnp.broadcast_to((start + slab_inputs < d_in)[:, None], scores.shape)
        return top_k_mask(scores, keep_counts[start // slab], candidates=real, tie_seed=slab_seed)

    def block(index, carry):
        weights, mask = carry
        first = index * block_size
        factor_rows = lax.dynamic_slice_in_dim(factor, first, block_size, axis=0)  # U[block, :]

        def column(offset, carry):
            errors, final, mask = carry
            j = first + offset

            def choose(mask):
                # The slab's current weights: stored values less this block's pending errors.
                rows = lax.dynamic_slice_in_dim(factor_rows, j, slab, axis=1)
                pending = jnp.matmul(rows.T, errors, precision=_HIGHEST)
                current = lax.dynamic_slice_in_dim(weights, j, slab, axis=0) - pending
                scale = lax.dynamic_slice_in_dim(inverse_diagonal, j, slab)[:, None]
                return lax.dynamic_update_slice_in_dim(mask, select(jnp.square(current * scale), j), j, axis=0)

            mask = lax.cond((j % slab == 0) & (j < d_in), choose, lambda mask: mask, mask)
            current = weights[j] - jnp.matmul(factor_rows[:, j], errors, precision=_HIGHEST)
            kept = jnp.where(mask[j], current, 0)
            errors = errors.at[offset].set((current - kept) * inverse_diagonal[j])
            return errors, final.at[offset].set(kept), mask

        zeros = jnp.zeros((block_size, d_out), dtype)
        errors, final, mask = lax.fori_loop(0, block_size, column, (zeros, zeros, mask))
        weights = weights - jnp.matmul(factor_rows.T, errors, precision=_HIGHEST)
        return lax.dynamic_update_slice_in_dim(weights, final, first, axis=0), mask

    blocks = _round_up(d_in, block_size) // block_size
    mask = jnp.zeros((padded, d_out), bool)
    weights, mask = lax.fori_loop(0, blocks, block, (weights, mask))
    return weights[:d_in].astype(weight.dtype), mask[:d_in]


def sparsegpt_prune(
    weight: jax.typing.ArrayLike,
    hessian: jax.typing.ArrayLike,
    *,
    kept: int | None = None,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    mask_block: int = 128,
    damping: jax.typing.ArrayLike = 0.01,
    tie_seed: jax.typing.ArrayLike = 0,
) -> tuple[jax.Array, jax.Array]:
    """Prunes a linear layer in one shot with SparseGPT, reconstructing the kept weights.

    .. math::

        \\hat W, M \\approx \\arg\\min \\lVert X W - X (M \\odot \\hat W) \\rVert_F^2,
        \\qquad e_j = \\frac{w_j - m_j \\odot w_j}{U_{jj}},
        \\quad w_k \\leftarrow w_k - U_{jk} e_j \\ (k > j),

    with ``U^T U = (H + damping mean(diag H) I)^{-1}``, inputs visited in order and masks chosen
    every ``mask_block`` (or ``m``) inputs by the saliency ``(w / U_{jj})^2`` (module docstring).
    Exactly one of ``kept`` and ``nm`` is given. The scale of ``hessian`` does not matter
    (``X^T X`` and ``2 X^T X / N`` give the same result), except through ``damping``, which is
    relative to ``mean(diag H)``.

    Args:
      weight: ``(d_in, d_out)`` kernel of ``y = x @ weight``.
      hessian: ``(d_in, d_in)`` ``sum_n x_n x_n^T`` over calibration inputs (any positive scale).
      kept: Python int, the exact number of weights to keep in the layer (unstructured).
      nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs for each output
        (``d_in % m == 0``).
      block_size: inputs per lazy update (reference: 128); the result does not depend on it beyond
        float rounding.
      mask_block: inputs per unstructured mask-selection slab (reference: 128; unused with ``nm``).
      damping: ``lambda``, the dampening as a fraction of ``mean(diag H)`` (reference: 0.01); any
        ``lambda > 0`` makes a positive semi-definite ``H`` factorisable (``0`` needs ``H`` definite).
      tie_seed: integer seed ordering tied scores.

    Returns:
      ``(new_weight, mask)``: ``new_weight`` in ``weight``'s dtype, exactly 0 where the ``bool``
      ``mask`` is ``False``. Computation is in ``weight``'s floating dtype, at least float32.

    Raises:
      ValueError: for a non-2-D weight, a Hessian of the wrong shape, both or neither of ``kept``
        and ``nm``, ``kept`` outside ``[0, d_in d_out]``, a bad ``nm`` or ``d_in % m != 0``, or
        non-positive block sizes.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (64, 8))
      >>> w = jax.random.normal(jax.random.key(1), (8, 4))
      >>> new_w, mask = sparsegpt_prune(w, x.T @ x, kept=12)
      >>> int(mask.sum()), bool((new_w[~mask] == 0).all())
      (12, True)
      >>> _, mask = sparsegpt_prune(w, x.T @ x, nm=(2, 4))
      >>> mask.reshape(2, 4, 4).sum(axis=1).tolist()
      [[2, 2, 2, 2], [2, 2, 2, 2]]

    References:
      Frantar, Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
      ICML 2023, Algorithm 1.
    """
    weight = jnp.asarray(weight)
    hessian = jnp.asarray(hessian)
    if weight.ndim != 2 or not jnp.issubdtype(weight.dtype, jnp.floating):
        raise ValueError(
            f"sparsegpt_prune needs a floating (d_in, d_out) kernel, got shape {weight.shape} and dtype "
            f"{weight.dtype}; reshape a conv kernel to (inputs, outputs) first."
        )
    d_in, d_out = weight.shape
    if hessian.shape != (d_in, d_in) or not jnp.issubdtype(hessian.dtype, jnp.floating):
        raise ValueError(
            f"sparsegpt_prune needs a floating ({d_in}, {d_in}) Hessian sum x x^T for a kernel of shape "
            f"{weight.shape}, got shape {hessian.shape} and dtype {hessian.dtype}."
        )
    if (kept is None) == (nm is None):
        raise ValueError(
            "sparsegpt_prune takes exactly one of kept= (unstructured: the number of weights to keep) "
            f"and nm=(n, m) (keep n of every m inputs), got kept={kept!r} and nm={nm!r}."
        )
    block_size = min(_positive_int("block_size", block_size), d_in)
    mask_block = _positive_int("mask_block", mask_block)
    if nm is not None:
        try:
            n, m = nm
        except (TypeError, ValueError):
            raise ValueError(f"nm must be a pair (n, m), e.g. (2, 4), got {nm!r}.") from None
        structure = NM(n, m)
        if d_in % m:
            raise ValueError(
                f"{n}:{m} sparsity groups the {d_in} inputs of a kernel of shape {weight.shape} in groups of "
                f"{m}, but {d_in} is not a multiple of {m}."
            )
        return _sparsegpt(weight, hessian, None, damping, tie_seed, block_size=block_size, slab=m, nm_kept=structure.n)
    if isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or not 0 <= kept <= d_in * d_out:
        raise ValueError(
            f"kept must be a Python int in [0, {d_in * d_out}] for a kernel of shape {weight.shape}, got {kept!r}."
        )
    slab = min(mask_block, d_in)  # a slab covering every input is the whole layer, whatever its size
    counts = jnp.asarray(_slab_keep_counts(int(kept), d_in, d_out, slab))
    return _sparsegpt(weight, hessian, counts, damping, tie_seed, block_size=block_size, slab=slab, nm_kept=None)
