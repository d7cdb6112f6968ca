"""Pure mask-update rules: drop/grow behaviour, schedules, exact counts, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as jsp
from tests.helpers import make_mlp


def _leaves(masks):
    return jax.tree.leaves(masks, is_leaf=lambda x: x is None)


def _counts(masks):
    return [None if m is None else int(m.sum()) for m in _leaves(masks)]


def _single_layer(key, shape=(10, 10)):
    kw, kg = jax.random.split(key)
    return {"w": jax.random.normal(kw, shape)}, {"w": jax.random.normal(kg, shape)}


def test_rigl_drops_smallest_active_and_grows_largest_gradients():
    params, grads = _single_layer(jax.random.key(0))
    algo = jsp.rigl(0.5, distribution="uniform", drop_fraction=0.2, drop_fraction_decay="constant", update_every=1)
    masks = algo.init_masks(params, jax.random.key(1))
    new = algo.update(params, masks, grads, 0, jax.random.key(2))
    w, g, m = (np.asarray(x).ravel() for x in (params["w"], grads["w"], masks["w"]))
    active = np.flatnonzero(m)
    kept = active[np.argsort(-np.abs(w[active]))[:40]]  # 50 active, drop floor(50 * 0.2) = 10
    rest = np.setdiff1d(np.arange(100), kept)
    grown = rest[np.argsort(-np.abs(g[rest]))[:10]]
    expected = np.zeros(100, bool)
    expected[kept] = expected[grown] = True
    np.testing.assert_array_equal(np.asarray(new["w"]).ravel(), expected)


def test_set_grows_uniformly_at_random():
    params = {"w": jax.random.normal(jax.random.key(0), (20, 20))}
    algo = jsp.set_(0.9, distribution="uniform", drop_fraction=0.5, drop_fraction_decay="constant")
    masks = algo.init_masks(params, jax.random.key(1))
    trials = 400
    keys = jax.random.split(jax.random.key(2), trials)
    new = jax.vmap(lambda k: algo.update_rule(params, masks, None, jnp.int32(0), k, ())[0]["w"])(keys)
    assert (np.asarray(new).reshape(trials, -1).sum(axis=1) == 40).all()
    # 40 active, 20 dropped; 20 grown among the 380 positions not kept. Positions inactive before
    # the update are each grown with probability 20/380 in every trial.
    inactive = ~np.asarray(masks["w"]).ravel()
    observed = np.asarray(new).reshape(trials, -1)[:, inactive].sum(axis=0)
    expected = trials * 20 / 380
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = inactive.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), chi2  # a 5-sigma bound on the chi-square statistic
    assert observed.min() > 0


def test_drop_fraction_follows_cosine_schedule_and_grid():
    params, _ = _single_layer(jax.random.key(0), (40, 40))
    algo = jsp.rigl(0.9, distribution="uniform", update_every=10, begin_step=10, end_step=60)
    masks = algo.init_masks(params, jax.random.key(1))
    update = jax.jit(algo.update)
    for step in range(0, 80):
        # Gradients only off the mask, so nothing dropped is regrown: grown == dropped == floor(n f_t).
        grads = {"w": jnp.where(masks["w"], 0.0, 1.0 + jax.random.uniform(jax.random.key(step), (40, 40)))}
        new = update(params, masks, grads, step, jax.random.key(step))
        grown = int((new["w"] & ~masks["w"]).sum())
        on_grid = 10 <= step <= 60 and step % 10 == 0
        expected = int(np.floor(np.float32(algo.drop_fraction(step)) * 160)) if on_grid else 0
        assert grown == expected, step
        assert int(new["w"].sum()) == 160
        if not on_grid:
            assert bool((new["w"] == masks["w"]).all())
        masks = new
    assert update._cache_size() == 1


def test_updates_are_deterministic_functions_of_key_and_step():
    params, grads = _single_layer(jax.random.key(0), (30, 30))
    algo = jsp.set_(0.8, update_every=1, drop_fraction=0.3, drop_fraction_decay="constant")
    masks = algo.init_masks(params, jax.random.key(1))
    a = algo.update(params, masks, grads, 7, jax.random.key(3))
    algo.update(params, masks, grads, 8, jax.random.key(4))  # unrelated call in between
    b = algo.update(params, masks, grads, 7, jax.random.key(3))
    c = algo.update(params, masks, grads, 7, jax.random.key(5))
    np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
    assert not np.array_equal(np.asarray(a["w"]), np.asarray(c["w"]))


ALGORITHMS = {
    "static": lambda s, d: jsp.static(s, distribution=d),
    "set": lambda s, d: jsp.set_(s, distribution=d, update_every=1, end_step=100),
    "rigl": lambda s, d: jsp.rigl(s, distribution=d, update_every=1, end_step=100),
    "gradual_magnitude": lambda s, d: jsp.gradual_magnitude(s, distribution=d, end_step=3, update_every=1),
}


@settings(max_examples=6, deadline=None)
@given(
    name=st.sampled_from(sorted(ALGORITHMS)),
    distribution=st.sampled_from(["uniform", "er", "erk"]),
    sparsity=st.floats(0.05, 0.98),
    seed=st.integers(0, 1000),
)
def test_exact_counts_after_init_and_every_update(name, distribution, sparsity, seed):
    params = make_mlp(jax.random.key(seed), (9, 24, 17, 5))
    algo = ALGORITHMS[name](sparsity, distribution)
    plans = algo.plan(params)
    masks = algo.init_masks(params, jax.random.key(seed))
    update = jax.jit(algo.update)
    for step in range(4):
        grads = jax.tree.map(lambda p, s=step: jax.random.normal(jax.random.key(s), p.shape), params)
        params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        masks = update(params, masks, grads, step, jax.random.key(step))
        if name != "gradual_magnitude" or step >= 3:
            assert _counts(masks) == [None if p is None else p.active for p in plans]


def test_gradual_magnitude_follows_ramp_and_never_regrows():
    params = {"a": jax.random.normal(jax.random.key(0), (50, 40)), "b": jax.random.normal(jax.random.key(1), (40, 10))}
    algo = jsp.gradual_magnitude(0.8, distribution="erk", begin_step=0, end_step=100, update_every=10)
    plans = algo.plan(params)
    masks = algo.init_masks(params, jax.random.key(0))
    assert all(bool(m.all()) for m in jax.tree.leaves(masks))
    for step in range(0, 130, 10):
        new = algo.update(params, masks, None, step, jax.random.key(step))
        for plan, old, m in zip(plans, _leaves(masks), _leaves(new), strict=True):
            assert not bool((m & ~old).any())  # pruned weights stay pruned
            s_t = float(algo.sparsity_schedule(step))
            expected = (
                plan.active
                if step >= 100
                else plan.size - int(np.floor(np.float32(s_t / 0.8) * np.float32(plan.sparsity) * plan.size))
            )
            assert abs(int(m.sum()) - expected) <= 1 if step < 100 else int(m.sum()) == expected
            kept = np.abs(np.asarray(params[plan.name]))[np.asarray(m)]
            dropped = np.abs(np.asarray(params[plan.name]))[~np.asarray(m)]
            if dropped.size and kept.size:
                assert kept.min() >= dropped.max()
        masks = new


def test_gradual_magnitude_global_scope_has_exact_total():
    params = {
        "a": jax.random.normal(jax.random.key(0), (50, 40)),
        "b": 3 * jax.random.normal(jax.random.key(1), (40, 10)),
    }
    algo = jsp.gradual_magnitude(0.9, scope="global", end_step=10, update_every=10)
    masks = algo.init_masks(params, jax.random.key(0))
    masks = algo.update(params, masks, None, 10, jax.random.key(1))
    assert int(masks["a"].sum()) + int(masks["b"].sum()) == 2400 - int(np.floor(0.9 * 2400))
    # One shared threshold: the larger-scale layer keeps a larger fraction.
    assert float(masks["b"].mean()) > float(masks["a"].mean())


def test_top_kast_sets_are_nested_top_magnitudes():
    params = make_mlp(jax.random.key(0), (20, 30, 10))
    algo = jsp.top_kast(0.9, 0.7, distribution="uniform")
    pair = algo.init_masks(params, jax.random.key(0))
    for plan, a, b, p in zip(
        algo.plan(params), _leaves(pair.forward), _leaves(pair.backward), jax.tree.leaves(params), strict=True
    ):
        if plan is None:
            assert a is None and b is None
            continue
        assert int(a.sum()) == plan.active
        assert int(b.sum()) == plan.size - int(np.floor(0.7 * plan.size))
        assert not bool((a & ~b).any())
        assert float(jnp.abs(p)[a].min()) >= float(jnp.abs(p)[~a].max())


def test_top_kast_penalty_gradient_form():
    params = {"w": jnp.arange(1.0, 11.0).reshape(1, 10) * jnp.ones((10, 1))}
    algo = jsp.top_kast(0.9, 0.8, distribution="uniform", penalty=0.5)
    pair = algo.init_masks(params, jax.random.key(0))
    g = algo.regularizer.gradient(params, pair, algo.plan(params), jnp.int32(0))["w"]
    a, b, w = pair.forward["w"], pair.backward["w"], params["w"]
    np.testing.assert_allclose(np.asarray(g[a]), 0.5 * np.asarray(w[a]))
    np.testing.assert_allclose(np.asarray(g[b & ~a]), 0.5 * np.asarray(w[b & ~a]) / 0.1, rtol=1e-6)
    assert float(jnp.abs(g[~b]).max()) == 0.0


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: jsp.rigl(1.0, end_step=10), ValueError, r"sparsity=1.0 is outside \[0, 1\)"),
        (lambda: jsp.set_(-0.5, end_step=10), ValueError, "outside"),
        (lambda: jsp.rigl(0.9, distribution="gauss", end_step=10), ValueError, "unknown distribution 'gauss'"),
        (lambda: jsp.rigl(0.9), ValueError, "cosine drop-fraction decay needs end_step"),
        (lambda: jsp.rigl(0.9, end_step=10, drop_fraction=1.5), ValueError, "drop_fraction must be a float in"),
        (lambda: jsp.rigl(0.9, end_step=10, update_every=0), ValueError, "update_every must be an int >= 1"),
        (lambda: jsp.rigl(0.9, end_step=10, drop_fraction_decay="linear"), ValueError, "unknown drop_fraction_decay"),
        (lambda: jsp.top_kast(0.8, 0.9), ValueError, "backward set B must contain the forward set A"),
        (lambda: jsp.gradual_magnitude(0.9, end_step=0), ValueError, "must be after begin_step"),
        (lambda: jsp.gradual_magnitude(0.5, end_step=10, initial_sparsity=0.7), ValueError, "initial_sparsity"),
        (lambda: jsp.gradual_magnitude(0.5, end_step=10, scope="model"), ValueError, "unknown scope"),
        (lambda: jsp.static(0.5, dense_middle_layer=True), TypeError, "layout options are"),
        (lambda: jsp.static("0.5"), TypeError, "sparsity must be a float"),
    ],
)
def test_hyperparameters_are_validated_when_built(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_update_needs_params_and_matching_grads():
    params, grads = _single_layer(jax.random.key(0))
    algo = jsp.rigl(0.5, end_step=10)
    masks = algo.init_masks(params, jax.random.key(0))
    with pytest.raises(ValueError, match="needs params"):
        algo.update(None, masks, grads, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="grads do not match params"):
        algo.update(params, masks, {"v": grads["w"]}, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="gradient_magnitude needs gradients"):
        algo.update(params, masks, None, 0, jax.random.key(0))


def test_non_finite_scores_keep_exact_counts():
    params, grads = _single_layer(jax.random.key(0), (20, 20))
    params = {"w": params["w"].at[0, :5].set(jnp.nan).at[1, :3].set(jnp.inf)}
    grads = {"w": grads["w"].at[2].set(jnp.nan).at[3, :4].set(-jnp.inf)}
    algo = jsp.rigl(0.7, distribution="uniform", update_every=1, drop_fraction=0.5, drop_fraction_decay="constant")
    masks = algo.init_masks(params, jax.random.key(0))
    for step in range(5):
        masks = algo.update(params, masks, grads, step, jax.random.key(step))
        assert int(masks["w"].sum()) == 400 - 280
    # Infinite gradients rank highest: they are grown first; NaN gradients rank lowest.
    assert bool(masks["w"][3, :4].all())


@pytest.mark.parametrize(
    "build",
    [
        lambda: jsp.rigl(0.9, update_every=1, end_step=10),
        lambda: jsp.gradual_magnitude(0.9, end_step=1, update_every=1),
        lambda: jsp.top_kast(0.9, 0.8),
    ],
)
def test_layers_saturated_to_dense_stay_dense(build):
    # ERK at 90%: the 100-weight layer's raw score saturates it to dense (see test_distributions).
    params = {"big": jax.random.normal(jax.random.key(0), (1000, 1000)), "small": jnp.ones((10, 10))}
    algo = build()
    plans = {p.name: p for p in algo.plan(params) if p is not None}
    assert plans["small"].zeros == 0 and plans["big"].zeros > 0
    grads = jax.tree.map(jnp.ones_like, params)
    masks = algo.update(params, algo.init_masks(params, jax.random.key(0)), grads, 1, jax.random.key(1))
    for m in jax.tree.leaves(algo.forward_masks(masks)):
        if m.shape == (10, 10):
            assert bool(m.all())
        else:
            assert int(m.sum()) == plans["big"].active
