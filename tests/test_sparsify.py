"""The optax wrapper: exact sparsity, slot resets, growth, the skip option, retracing, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from tests.helpers import make_batch, make_mlp, make_train_step, mlp_loss


def _kernels(tree):
    return [tree[k]["kernel"] for k in sorted(tree)]


def test_first_update_is_step_zero_and_updates_masks(mlp, batch):
    tx = jsp.sparsify(optax.sgd(0.1), jsp.set_(0.8, update_every=5, end_step=100), key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    before = jsp.masks_of(state)
    params, state = jax.jit(make_train_step(tx))(params, state, batch)
    assert int(state.step) == 1
    assert any(
        bool((a != b).any()) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jsp.masks_of(state)), strict=True)
    )


def test_no_retracing_across_normal_and_mask_update_steps(mlp, batch):
    tx = jsp.sparsify(optax.adam(1e-2), jsp.rigl(0.8, update_every=2, end_step=100), key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    step = jax.jit(chex.assert_max_traces(make_train_step(tx), n=1))
    for _ in range(5):  # steps 0 (update), 1, 2 (update), 3, 4 (update)
        params, state = step(params, state, batch)
    assert step._cache_size() == 1


@pytest.mark.parametrize("skip", [True, False])
def test_skip_optimizer_on_update_option(mlp, batch, skip):
    algo = jsp.rigl(0.8, update_every=3, begin_step=3, end_step=100, skip_optimizer_on_update=skip)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    step = jax.jit(make_train_step(tx))
    for _ in range(3):
        params, state = step(params, state, batch)
    old_masks = jsp.masks_of(state)
    grads = jax.grad(mlp_loss)(jsp.forward_params(params, state), batch)
    new_params, state = step(params, state, batch)  # step 3: a mask update
    for old, new, m_old, m_new, g in zip(
        _kernels(params), _kernels(new_params), _kernels(old_masks), _kernels(jsp.masks_of(state)), _kernels(grads),
        strict=True,
    ):  # fmt: skip
        stayed, grown = m_old & m_new, m_new & ~m_old
        assert bool(grown.any())
        unchanged = bool((old[stayed] == new[stayed]).all())
        assert unchanged == skip
        # Grown weights start at 0; without the skip they take the optimizer's first step, -lr * g.
        np.testing.assert_allclose(new[grown], 0.0 if skip else -0.1 * g[grown], rtol=1e-6)


def test_grown_weights_use_grow_init_and_fresh_moments(mlp, batch):
    algo = jsp.rigl(0.8, update_every=4, begin_step=4, end_step=100, grow_init=jax.nn.initializers.constant(0.25))
    tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), algo, key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    step = jax.jit(make_train_step(tx))
    for _ in range(4):
        params, state = step(params, state, batch)
    old_masks, old_trace = jsp.masks_of(state), state.inner_state[0].trace
    params, state = step(params, state, batch)
    new_masks, trace = jsp.masks_of(state), state.inner_state[0].trace
    for name in mlp:
        grown = new_masks[name]["kernel"] & ~old_masks[name]["kernel"]
        kept = new_masks[name]["kernel"] & old_masks[name]["kernel"]
        assert int(grown.sum()) > 0
        np.testing.assert_array_equal(np.asarray(params[name]["kernel"][grown]), 0.25)
        assert float(jnp.abs(trace[name]["kernel"][grown]).max()) == 0.0
        # Kept weights (including any dropped and regrown now) keep their momentum: skipped step.
        np.testing.assert_array_equal(
            np.asarray(trace[name]["kernel"][kept]), np.asarray(old_trace[name]["kernel"][kept])
        )
        assert float(jnp.abs(params[name]["kernel"][~new_masks[name]["kernel"]]).max()) == 0.0


def test_weight_decay_never_revives_pruned_weights(mlp, batch):
    tx = jsp.sparsify(optax.adamw(1e-2, weight_decay=0.5), jsp.static(0.9), key=jax.random.key(0))
    state = tx.init(mlp)  # params deliberately NOT projected: the first update projects them
    params = mlp
    step = jax.jit(make_train_step(tx))
    for _ in range(3):
        params, state = step(params, state, batch)
        for p, m in zip(_kernels(params), _kernels(jsp.masks_of(state)), strict=True):
            assert float(jnp.abs(p[~m]).max()) == 0.0


def test_top_kast_trains_only_b_and_keeps_storage(mlp, batch):
    algo = jsp.top_kast(0.9, 0.7, distribution="uniform", update_every=1000, begin_step=1000)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    state = tx.init(mlp)
    grads = jax.grad(lambda p: mlp_loss(jsp.forward_params(p, state), batch))(mlp)
    for g, b in zip(_kernels(grads), _kernels(state.masks.backward), strict=True):
        assert float(jnp.abs(g[~b]).max()) == 0.0 and float(jnp.abs(g[b]).max()) > 0.0
    forward = jsp.forward_params(mlp, state)
    for p, a in zip(_kernels(forward), _kernels(state.masks.forward), strict=True):
        assert float(jnp.abs(p[~a]).max()) == 0.0
    params, state = jax.jit(make_train_step(tx))(mlp, state, batch)
    for new, old, b in zip(_kernels(params), _kernels(mlp), _kernels(state.masks.backward), strict=True):
        np.testing.assert_array_equal(np.asarray(new[~b]), np.asarray(old[~b]))
        assert bool((new[b] != old[b]).any())


def test_nan_gradients_keep_exact_counts(mlp, batch):
    algo = jsp.rigl(0.8, update_every=1, end_step=100)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    counts = [int(m.sum()) for m in jax.tree.leaves(jsp.masks_of(state))]
    grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan).at[0].set(1.0), params)
    update = jax.jit(tx.update)
    for _ in range(3):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert [int(m.sum()) for m in jax.tree.leaves(jsp.masks_of(state))] == counts
        for p, m in zip(_kernels(params), _kernels(jsp.masks_of(state)), strict=True):
            assert bool((p[~m] == 0).all())


def test_extra_args_reach_the_inner_optimizer(mlp):
    def scale_by_extra():
        def update(updates, state, params=None, *, scale):
            del params
            return jax.tree.map(lambda u: scale * u, updates), state

        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

    tx = jsp.sparsify(scale_by_extra(), jsp.static(0.5), key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params, scale=3.0)
    masks = jsp.masks_of(state)
    assert bool((updates["layer_0"]["kernel"][masks["layer_0"]["kernel"]] == 3.0).all())


def test_bad_input_errors(mlp, batch):
    tx = jsp.sparsify(optax.sgd(0.1), jsp.rigl(0.8, end_step=10), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"needs params: call tx.init\(params\)"):
        tx.init(None)
    state = tx.init(mlp)
    grads = jax.tree.map(jnp.zeros_like, mlp)
    with pytest.raises(ValueError, match=r"needs params to keep them on the mask"):
        tx.update(grads, state)
    other = make_mlp(jax.random.key(0), (12, 32, 4))
    with pytest.raises(ValueError, match="mask tree does not match the params tree"):
        tx.update(jax.tree.map(jnp.zeros_like, other), state, other)
    with pytest.raises(ValueError, match="grads do not match params"):
        tx.update({"x": grads["layer_0"]}, state, mlp)
    with pytest.raises(TypeError, match="jaxsparse algorithm"):
        jsp.sparsify(optax.sgd(0.1), "rigl", key=jax.random.key(0))
    with pytest.raises(TypeError, match="holds sparsify.s state"):
        jsp.masks_of({"masks": None})


def test_same_key_same_run_and_masks_identical_when_replayed(mlp):
    def run(key):
        tx = jsp.sparsify(optax.adam(1e-2), jsp.set_(0.8, update_every=2, end_step=100), key=key)
        state = tx.init(mlp)
        params = jsp.apply_masks(mlp, jsp.masks_of(state))
        step = jax.jit(make_train_step(tx))
        for i in range(6):
            params, state = step(params, state, make_batch(jax.random.key(i), 16, 12, 4))
        return params, jsp.masks_of(state)

    a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
    chex.assert_trees_all_equal(a, b)
    assert not all(bool((x == y).all()) for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(c[1]), strict=True))


def test_summary_reports_counts(mlp):
    tx = jsp.sparsify(optax.sgd(0.1), jsp.static(0.75, distribution="uniform"), key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    text = jsp.summary(params, state)
    assert "layer_0/kernel  (12, 32)" in text and "75.00%" in text and "dense" in text
    stats = {s.name: s for s in jsp.layer_stats(params, state)}
    assert stats["layer_0/kernel"].active == 12 * 32 - int(0.75 * 12 * 32) == stats["layer_0/kernel"].nonzero
    assert not stats["layer_0/bias"].sparsified
    assert jsp.total_sparsity(state) == pytest.approx(0.75, abs=1e-3)
