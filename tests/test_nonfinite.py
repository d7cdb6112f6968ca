"""Non-finite steps: what ``sparsify`` guarantees, and the ``optax.apply_if_finite`` recipe.

``sparsify`` lands parameters on the mask by adding ``u = -theta`` off it. That makes them exactly
``+0`` for every finite ``theta``, whatever the optimizer produced there. No additive update can
zero a weight that is already NaN or inf (``NaN + x`` is NaN). A diverged step that makes active
weights NaN therefore shows up off the mask as soon as those weights are dropped. Wrapping the
whole transformation in ``optax.apply_if_finite`` discards such a step (masks, moments and step
counter included), so nothing non-finite ever reaches the params. Its state counts the skipped
steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsparse as jsp


def _rigl():
    return jsp.rigl(0.5, distribution="uniform", end_step=10, update_every=2)


def _grads(t):
    """Step 1's gradient is NaN except in row 0 (the issue's repro)."""
    if t == 1:
        return {"w": jnp.full((8, 8), jnp.nan).at[0].set(1.0)}
    return {"w": jnp.full((8, 8), 1.0)}


def test_apply_if_finite_skips_a_nan_step_and_keeps_params_exactly_zero_off_the_mask():
    tx = optax.apply_if_finite(jsp.sparsify(optax.sgd(0.1), _rigl(), key=jax.random.key(0)), max_consecutive_errors=3)
    params = {"w": jax.random.normal(jax.random.key(1), (8, 8))}
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = jax.jit(tx.update)
    for t in range(5):
        before = params
        updates, state = step(_grads(t), state, params)
        params = optax.apply_updates(params, updates)
        w, mask = np.asarray(params["w"]), np.asarray(jsp.masks_of(state)["w"])
        assert np.all(np.isfinite(w))
        assert int(mask.sum()) == 32
        np.testing.assert_array_equal(w[~mask], 0.0)
        assert not np.any(np.signbit(w[~mask])), "off-mask values must be +0"
        if t == 1:  # the NaN step changed nothing, and is counted
            np.testing.assert_array_equal(w, np.asarray(before["w"]))
            assert int(state.notfinite_count) == 1
    assert int(state.total_notfinite) == 1
    # The skipped step did not advance sparsify's step: the mask schedule follows applied steps.
    assert int(jsp.transform.find_sparsify_state(state).step) == 4
    assert "sparsified" in jsp.summary(params, state)
    assert step._cache_size() == 1


def test_nan_gradients_off_the_mask_never_reach_the_params():
    """Off-mask NaN gradients (a diverged *inactive* weight) are masked out and never grown."""
    tx = jsp.sparsify(optax.adam(0.1), _rigl(), key=jax.random.key(0))
    params = {"w": jax.random.normal(jax.random.key(1), (8, 8))}
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = jax.jit(tx.update)
    for _ in range(6):
        mask = jsp.masks_of(state)["w"]
        grads = {"w": jnp.where(mask, 1.0, jnp.nan)}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        w, new_mask = np.asarray(params["w"]), np.asarray(jsp.masks_of(state)["w"])
        assert np.all(np.isfinite(w))
        np.testing.assert_array_equal(w[~new_mask], 0.0)
        assert int(new_mask.sum()) == 32
