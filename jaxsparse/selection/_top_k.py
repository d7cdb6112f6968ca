"""Exact top-k selection by radix select over integer order keys.

The ``k``-th largest key ``t`` is found digit by digit, most significant first: a histogram of the
high 16 bits of every key locates the bucket that holds the ``k``-th largest, and a histogram of
the low 16 bits of the keys in that bucket locates the key (8-bit digits, four passes, for inputs
under 65,536 elements, where a 65,536-counter histogram would dominate). That is a few passes
over the data (across devices, a sum of the histograms) instead of a sort or ``lax.top_k``, and it
is exact because keys are compared as integers. It replaced a 32-pass bisection over key bits,
which finds the same thresholds 1.2-2.6x slower on CPU at 1M-25M elements (but 0.9x at 4M), measured
before that baseline left the selection benchmark (``benchmarks/speed/selection.py``, which now
compares argsort, ``lax.top_k`` and ``approx_max_k``: 12-83x slower than this at 1M-128M).

Every key ``> t`` is selected. Keys ``== t`` (ties) are chosen by a second radix select over a
per-position priority, a keyed bijective hash of the flat position, so that the choice is
deterministic for a given ``tie_seed``, unbiased across positions, and collision-free: exactly
``k`` entries are selected, never more or fewer (when at least ``k`` candidates exist).

The same machinery serves a single tensor (per-layer selection) and a list of tensors sharing one
budget (global selection across layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse._explicit import replicated_sharding
from jaxsparse._positions import flat_positions, mix32
from jaxsparse.selection._order_keys import order_keys

__all__ = ["top_k_mask", "global_top_k_masks"]

_LARGE = 1 << 16
_SPARE_BINS = 8


def _digit_bits(total_size: int) -> int:
    """Radix digit width: 16-bit digits (2 passes) from 65,536 elements up, 8-bit (4 passes) below.

    A pass costs a histogram of ``2**bits`` counters, so small tensors favour small histograms.
    """
    return 16 if total_size >= _LARGE else 8


class _Threshold(NamedTuple):
    """The k-th largest key and the counts around it, read off the radix histograms."""

    key: jax.Array  # 0 when fewer than k keys are positive
    n_above: jax.Array  # keys > key (every positive key when key == 0)
    n_ties: jax.Array  # keys == key (0 when key == 0)


def _kth_largest(keys: Sequence[jax.Array], k: jax.Array) -> _Threshold:
    """The largest ``t >= 1`` with ``#{keys >= t} >= k``, keys pooled over all arrays.

    A most-significant-digit radix select: for each digit, a histogram of that digit over the keys
    whose higher digits equal the prefix found so far locates the digit of the k-th largest key.
    Keys equal to ``0`` are not counted at all. For ``k <= 0`` the threshold is ``2**32 - 1``.
    """
    bits = _digit_bits(sum(key.size for key in keys))
    buckets = 1 << bits
    prefix = jnp.uint32(0)
    above_prefix = jnp.int32(0)  # keys whose higher digits exceed the prefix
    for level, shift in enumerate(range(32 - bits, -1, -bits)):
        bins = jnp.zeros((buckets + _SPARE_BINS,), jnp.int32)
        for key in keys:
            digit = ((key >> shift) & (buckets - 1)).astype(jnp.int32)
            if level == 0:
                # Uncounted keys (0) go to spare bins in rotation: a single hot bin would make the
                # scatter's increments wait on one another, and dropping them (an out-of-range
                # index) branches unpredictably on a random mask.
                spare = buckets + (flat_positions(key, jnp.int32) & (_SPARE_BINS - 1))
                digit = jnp.where(key != 0, digit, spare)
            else:  # only keys sharing the higher digits found so far; nearly all others, dropped
                same_prefix = (key != 0) & ((key >> (shift + bits)) == (prefix >> (shift + bits)))
                digit = jnp.where(same_prefix, digit, buckets + _SPARE_BINS)
            # Indexed by the digit array in its own shape (no ravel): each shard of a sharded key
            # array histograms its own elements and the histograms are summed (an all-reduce).
            bins = bins.at[digit].add(1, mode="drop", out_sharding=replicated_sharding(key))
        at_least = jnp.cumsum(bins[buckets - 1 :: -1])[::-1] + above_prefix  # at_least[d] = #{keys >= prefix | d}
        if level == 0:
            positive = at_least[0]
        chosen = jnp.maximum(jnp.sum(at_least >= k, dtype=jnp.int32) - 1, 0)
        at_or_above = at_least[chosen]
        above_prefix = jnp.where(chosen + 1 < buckets, at_least[jnp.minimum(chosen + 1, buckets - 1)], above_prefix)
        prefix = prefix | (chosen.astype(jnp.uint32) << shift)
    found = positive >= k
    return _Threshold(
        key=jnp.where(found, prefix, jnp.uint32(0)),
        n_above=jnp.where(found, above_prefix, positive),
        n_ties=jnp.where(found, at_or_above - above_prefix, 0),
    )


def _select(
    keys: Sequence[jax.Array],
    candidates: Sequence[jax.Array | None],
    k: jax.Array,
    tie_seed: jax.Array,
) -> list[jax.Array]:
    """Exactly ``min(k, #candidates)`` positions with the largest keys, pooled over arrays."""
    k = jnp.asarray(k, jnp.int32)
    # Key 0 marks "not a candidate"; real keys are lifted to >= 1 (NaN's 0 joins key 1, both below
    # -inf), so one integer array carries both the ranking and the candidate set.
    counted = [
        jnp.maximum(key, jnp.uint32(1)) if valid is None else jnp.where(valid, jnp.maximum(key, jnp.uint32(1)), 0)
        for key, valid in zip(keys, candidates, strict=True)
    ]
    threshold = _kth_largest(counted, k)
    needed = k - threshold.n_above

    def tied():
        # threshold.key == 0 means fewer than k candidates: every one of them is already above it.
        return [(key == threshold.key) & (threshold.key != 0) for key in counted]

    def take_some_ties():
        offsets = [0]
        for key in keys[:-1]:
            offsets.append(offsets[-1] + key.size)
        seed = jnp.asarray(tie_seed).astype(jnp.uint32)
        ties = tied()
        priorities = [
            mix32((flat_positions(key, jnp.uint32) + jnp.uint32(offset)) ^ seed)
            for key, offset in zip(keys, offsets, strict=True)
        ]
        # Priorities are distinct, so the needed-th largest among ties splits them exactly. A tied
        # position whose priority is 0 is never counted, and is never needed: it ranks last.
        tie_priorities = [jnp.where(t, p, jnp.uint32(0)) for t, p in zip(ties, priorities, strict=True)]
        cut = _kth_largest(tie_priorities, needed).key
        return [t & (p >= cut) & (needed > 0) for t, p in zip(ties, priorities, strict=True)]

    chosen_ties = lax.cond(threshold.n_ties <= needed, tied, take_some_ties)
    return [(key > threshold.key) | t for key, t in zip(counted, chosen_ties, strict=True)]


def top_k_mask(
    scores: jax.Array,
    k: jax.typing.ArrayLike,
    *,
    candidates: jax.Array | None = None,
    tie_seed: jax.typing.ArrayLike = 0,
) -> jax.Array:
    """Boolean mask of the ``k`` largest scores, exactly ``k`` of them.

    .. math::

        \\operatorname{top\\_k}(s, k) = \\{ i : \\operatorname{rank}(s_i) < k \\}

    where ranks are taken over candidate positions in descending score order, NaN lowest, and ties
    ordered by a hash of the position keyed by ``tie_seed``.

    Args:
      scores: a floating array (any shape) or ``uint32`` keys (e.g. random bits).
      k: how many to select; a Python int or a traced integer scalar.
      candidates: optional boolean array of the same shape; only these positions may be chosen.
      tie_seed: integer seed that orders tied scores; same seed, same choice.

    Returns:
      A ``bool`` array shaped like ``scores`` with exactly ``min(k, #candidates)`` ``True``.

    Example:
      >>> import jax.numpy as jnp
      >>> top_k_mask(jnp.array([0.1, 0.9, 0.5, 0.9]), 2).tolist()
      [False, True, False, True]
    """
    scores = jnp.asarray(scores)
    if candidates is not None and candidates.shape != scores.shape:
        raise ValueError(
            f"candidates has shape {candidates.shape} but scores has shape {scores.shape}; "
            "pass a boolean mask shaped like the scores."
        )
    return _select([order_keys(scores)], [candidates], k, tie_seed)[0]


def global_top_k_masks(
    scores: Sequence[jax.Array],
    k: jax.typing.ArrayLike,
    *,
    candidates: Sequence[jax.Array | None] | None = None,
    tie_seed: jax.typing.ArrayLike = 0,
) -> list[jax.Array]:
    """The ``k`` largest scores pooled across several arrays (global, cross-layer selection).

    The threshold is shared: one radix select whose histograms sum over every array, so no array is
    concatenated or copied. Exactly ``min(k, #candidates)`` positions are selected in total.

    Args:
      scores: arrays of any shapes (e.g. one per layer).
      k: the total number to select.
      candidates: optional per-array boolean masks (``None`` entries mean "all").
      tie_seed: integer seed ordering tied scores.

    Returns:
      A list of ``bool`` arrays, one per input array.

    Example:
      >>> import jax.numpy as jnp
      >>> a, b = global_top_k_masks([jnp.array([3.0, 1.0]), jnp.array([2.0, 0.0, 4.0])], 3)
      >>> a.tolist(), b.tolist()
      ([True, False], [True, False, True])
    """
    scores = [jnp.asarray(s) for s in scores]
    if candidates is None:
        candidates = [None] * len(scores)
    if len(candidates) != len(scores):
        raise ValueError(f"got {len(candidates)} candidate masks for {len(scores)} score arrays.")
    return _select([order_keys(s) for s in scores], list(candidates), k, tie_seed)
