"""Exactness of top-k selection: counts, ties, NaN ranking, candidates, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse.selection import global_top_k_masks, order_keys, top_k_mask

jit_top_k = jax.jit(lambda s, k, c, seed: top_k_mask(s, k, candidates=c, tie_seed=seed))


def _check_is_top_k(scores: np.ndarray, chosen: np.ndarray, k: int, candidates: np.ndarray) -> None:
    """Chosen = exactly min(k, #candidates) candidates, none outranked by an unchosen candidate."""
    assert chosen.sum() == min(k, candidates.sum())
    assert not (chosen & ~candidates).any()
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    if chosen.any() and (candidates & ~chosen).any():
        # NaN ranks below -inf, so compare with NaNs pushed strictly below every real value.
        lowest_chosen = ranked[chosen].min()
        highest_left = ranked[candidates & ~chosen].max()
        assert lowest_chosen >= highest_left
        if np.isnan(scores[chosen]).any():
            assert np.isnan(scores[candidates & ~chosen]).all()


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([-2.0, -0.0, 0.0, 0.5, 1.0, 1.0, 3.0, np.inf, -np.inf, np.nan]), min_size=1, max_size=64
    ),
    k_fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
    use_candidates=st.booleans(),
)
def test_top_k_exact_with_ties_and_non_finite(values, k_fraction, seed, use_candidates):
    scores = np.asarray(values, np.float32)
    k = int(round(k_fraction * len(values)))
    rng = np.random.default_rng(seed)
    candidates = rng.random(len(values)) < 0.7 if use_candidates else np.ones(len(values), bool)
    chosen = np.asarray(jit_top_k(jnp.asarray(scores), k, jnp.asarray(candidates), jnp.uint32(seed)))
    _check_is_top_k(scores, chosen, k, candidates)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_top_k_matches_sorting_without_ties(dtype):
    scores = jax.random.permutation(jax.random.key(0), 1000).astype(jnp.float32) - 500
    scores = scores.astype(dtype)
    chosen = top_k_mask(scores, 137)
    expected = np.zeros(1000, bool)
    expected[np.argsort(-np.asarray(scores, np.float32), kind="stable")[:137]] = True
    np.testing.assert_array_equal(np.asarray(chosen), expected)


def test_all_ties_choice_is_deterministic_and_seed_dependent():
    scores = jnp.zeros((64, 64))
    a = top_k_mask(scores, 100, tie_seed=3)
    b = top_k_mask(scores, 100, tie_seed=3)
    c = top_k_mask(scores, 100, tie_seed=4)
    assert int(a.sum()) == int(c.sum()) == 100
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_tie_breaking_is_spread_over_positions():
    # A position-biased rule (lowest index first) would choose only the first row.
    chosen = np.asarray(top_k_mask(jnp.zeros((100, 100)), 1000, tie_seed=7))
    per_row = chosen.sum(axis=1)
    assert per_row.max() < 30 and (per_row > 0).sum() > 90


def test_k_zero_and_k_all_and_k_beyond_candidates():
    scores = jax.random.bits(jax.random.key(0), (50,), jnp.uint32)
    assert int(top_k_mask(scores, 0).sum()) == 0
    assert int(top_k_mask(scores, 50).sum()) == 50
    candidates = jnp.arange(50) < 10
    assert int(top_k_mask(scores, 30, candidates=candidates).sum()) == 10


def test_uint32_keys_with_maximal_value_and_k_zero():
    scores = jnp.full((8,), 0xFFFFFFFF, jnp.uint32)
    assert int(top_k_mask(scores, 0).sum()) == 0
    assert int(top_k_mask(scores, 5).sum()) == 5


def test_order_keys_preserve_float_order():
    values = jnp.array([-jnp.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, jnp.inf])
    keys = np.asarray(order_keys(values)).astype(np.int64)
    assert (np.diff(keys) >= 0).all()
    assert int(order_keys(jnp.array([jnp.nan]))[0]) == 0


def test_order_keys_rejects_integers():
    with pytest.raises(TypeError, match="cast integer scores"):
        order_keys(jnp.arange(3))


def test_candidates_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shaped like the scores"):
        top_k_mask(jnp.zeros(4), 1, candidates=jnp.ones(3, bool))


def test_traced_k_does_not_retrace():
    f = jax.jit(lambda s, k: top_k_mask(s, k))
    scores = jax.random.normal(jax.random.key(0), (300,))
    counts = [int(f(scores, k).sum()) for k in (0, 1, 150, 300)]
    assert counts == [0, 1, 150, 300]
    assert f._cache_size() == 1


@settings(max_examples=10, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4), k_fraction=st.floats(0, 1), seed=st.integers(0, 1000)
)
def test_global_top_k_pools_arrays(sizes, k_fraction, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 5, size).astype(np.float32) for size in sizes]  # many ties across arrays
    k = int(round(k_fraction * sum(sizes)))
    chosen = global_top_k_masks([jnp.asarray(a) for a in arrays], k, tie_seed=seed)
    _check_is_top_k(
        np.concatenate(arrays), np.concatenate([np.asarray(c) for c in chosen]), k, np.ones(sum(sizes), bool)
    )


@pytest.mark.parametrize("k", [0, 1, 123_457, 1_100_000])
def test_large_inputs_use_wide_digits_and_stay_exact(k):
    # From 2**16 elements on, the radix select uses 16-bit digits: check it on heavy ties.
    rng = np.random.default_rng(k)
    scores = rng.integers(-50, 50, 1_100_000).astype(np.float32) / 7
    scores[rng.integers(0, scores.size, 1000)] = np.nan
    candidates = rng.random(scores.size) < 0.9
    chosen = np.asarray(jit_top_k(jnp.asarray(scores), k, jnp.asarray(candidates), jnp.uint32(k)))
    _check_is_top_k(scores, chosen, k, candidates)
    pooled = global_top_k_masks([jnp.asarray(scores[:600_000]), jnp.asarray(scores[600_000:])], k, tie_seed=1)
    _check_is_top_k(scores, np.concatenate([np.asarray(p) for p in pooled]), k, np.ones(scores.size, bool))
