"""Gradient accumulation with ``optax.MultiSteps``, wrapped either way round.

* ``MultiSteps(sparsify(...), k)``: ``sparsify`` sees one averaged gradient per optimizer step, so
  ``update_every`` counts optimizer steps and masks are chosen from the accumulated gradient.
* ``sparsify(MultiSteps(...), algo)``: ``sparsify`` sees every micro-batch, so ``update_every``
  counts micro-steps. Skipping "the optimizer step" on a mask update would drop that micro-batch
  from the accumulation, so this order requires ``skip_optimizer_on_update=False``.

Both orders must deliver every micro-batch's gradient to the optimizer: with ``sgd(1)`` an applied
update is exactly minus the mean of the window's (masked) micro-gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp

K = 3  # micro-batches per optimizer step
SHAPE = (8, 6)


def _grads(n: int) -> list[dict]:
    keys = jax.random.split(jax.random.key(7), n)
    return [{"w": jax.random.normal(k, SHAPE), "b": jax.random.normal(k, (SHAPE[1],))} for k in keys]


def _params() -> dict:
    return {"w": jax.random.normal(jax.random.key(0), SHAPE), "b": jnp.zeros(SHAPE[1])}


def _rigl(skip: bool):
    return jsp.rigl(0.5, distribution="uniform", update_every=2, end_step=40, skip_optimizer_on_update=skip)


def _run(tx, n_micro):
    """Runs ``n_micro`` micro-steps under jit; returns params and masks after each, and the state."""
    params = _params()
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = jax.jit(tx.update)
    history = [(params, jsp.masks_of(state))]
    for g in _grads(n_micro):
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append((params, jsp.masks_of(state)))
        np.testing.assert_array_equal(np.asarray(params["w"])[~np.asarray(history[-1][1]["w"])], 0.0)
    assert step._cache_size() == 1
    return history, state


def test_outer_multisteps_counts_optimizer_steps_and_applies_every_micro_batch():
    tx = optax.MultiSteps(jsp.sparsify(optax.sgd(1.0), _rigl(skip=True), key=jax.random.key(1)), every_k_schedule=K)
    n_windows = 6
    history, state = _run(tx, K * n_windows)
    grads = _grads(K * n_windows)
    assert int(jsp.transform.find_sparsify_state(state).step) == n_windows
    mask_updates = 0
    for window in range(n_windows):
        start, end = K * window, K * (window + 1)
        (before, old_masks), (after, new_masks) = history[start], history[end]
        for micro in range(start + 1, end):  # nothing moves inside a window
            np.testing.assert_array_equal(history[micro][0]["w"], before["w"])
        mean = jax.tree.map(lambda *g: sum(g) / K, *grads[start:end])
        if window % 2 == 0:  # optimizer steps 0, 2, 4 update the masks (and skip the optimizer step)
            mask_updates += int(np.any(np.asarray(old_masks["w"]) != np.asarray(new_masks["w"])))
            kept = np.asarray(old_masks["w"]) & np.asarray(new_masks["w"])
            np.testing.assert_array_equal(np.asarray(after["w"])[kept], np.asarray(before["w"])[kept])
            continue
        np.testing.assert_array_equal(old_masks["w"], new_masks["w"])
        on = np.asarray(new_masks["w"])
        np.testing.assert_allclose(
            np.asarray(after["w"])[on], np.asarray(before["w"] - mean["w"])[on], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(after["b"], before["b"] - mean["b"], rtol=1e-5, atol=1e-6)
    assert mask_updates == 3


def test_inner_multisteps_without_skip_accumulates_every_micro_batch():
    tx = jsp.sparsify(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=K), _rigl(skip=False), key=jax.random.key(1))
    n_windows = 4
    history, state = _run(tx, K * n_windows)
    grads = _grads(K * n_windows)
    assert int(state.step) == K * n_windows  # update_every counted micro-steps
    changed = 0
    for window in range(n_windows):
        start, end = K * window, K * (window + 1)
        before, after = history[start][0], history[end][0]
        masks = [np.asarray(history[t][1]["w"]) for t in range(start + 1, end + 1)]
        changed += sum(int(np.any(a != b)) for a, b in zip(masks, masks[1:], strict=False))
        # Weights active at every micro-step of the window received every micro-batch's gradient
        # (a weight grown inside the window starts its accumulator at 0 when it grows).
        always = np.logical_and.reduce(masks)
        mean = sum(np.asarray(g["w"]) for g in grads[start:end]) / K
        np.testing.assert_allclose(
            np.asarray(after["w"])[always], (np.asarray(before["w"]) - mean)[always], rtol=1e-5, atol=1e-6
        )
        mean_b = sum(np.asarray(g["b"]) for g in grads[start:end]) / K
        np.testing.assert_allclose(after["b"], before["b"] - mean_b, rtol=1e-5, atol=1e-6)
    assert changed > 0, "no mask changed inside a window: the accumulation check was vacuous"


@pytest.mark.parametrize("wrap", [lambda m: m, lambda m: optax.chain(optax.clip_by_global_norm(1.0), m)])
def test_inner_multisteps_with_skipped_steps_is_refused_with_both_fixes(wrap):
    tx = jsp.sparsify(
        wrap(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=K)), _rigl(skip=True), key=jax.random.key(1)
    )
    with pytest.raises(ValueError, match=r"optax\.MultiSteps\(jaxsparse\.sparsify.*skip_optimizer_on_update=False"):
        tx.init(_params())
