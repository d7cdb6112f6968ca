"""Bad or unusual input: clear errors that name the problem and its fix, or the expected result.

Each case here was once a silent no-op, a raw traceback, or a refusal of a valid value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from jaxsparse.regularizers import GroupLasso

PARAMS = {"dense_0": {"kernel": jnp.ones((8, 8))}, "dense_1": {"kernel": jnp.ones((8, 4))}}


def _init(algorithm, params=PARAMS):
    return jsp.sparsify(optax.sgd(0.1), algorithm, key=jax.random.key(0)).init(params)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), jnp.asarray(0.5), np.asarray(0.5)])
def test_numpy_and_jax_scalars_are_hyperparameters_like_floats(value):
    assert jsp.static(value) == jsp.static(0.5)
    assert jsp.rigl(value, end_step=10, drop_fraction=value) == jsp.rigl(0.5, end_step=10, drop_fraction=0.5)
    assert jsp.static(0.9, layer_sparsity={"dense_1": value}) == jsp.static(0.9, layer_sparsity={"dense_1": 0.5})
    assert GroupLasso(value) == GroupLasso(0.5)


@pytest.mark.parametrize("value", [True, np.bool_(True), np.ones(2) * 0.5, "0.5"])
def test_non_scalar_sparsities_are_refused_by_name(value):
    with pytest.raises(TypeError, match=r"sparsity must be a float in \[0, 1\)"):
        jsp.static(value)


def test_a_traced_sparsity_is_refused_with_the_reason():
    with pytest.raises(TypeError, match="build the algorithm outside jit"):
        jax.jit(lambda s: jsp.static(s).layout.sparsity)(0.5)


@pytest.mark.parametrize("distribution", ["erk", "er", "uniform"])
def test_empty_leaves_are_left_dense(distribution):
    params = {"w": jnp.ones((8, 8)), "z": jnp.zeros((0, 8))}
    algorithm = jsp.rigl(0.5, distribution=distribution, update_every=1, end_step=4)
    tx = jsp.sparsify(optax.sgd(0.1), algorithm, key=jax.random.key(0))
    state = tx.init(params)
    assert jsp.masks_of(state)["z"] is None
    assert int(jsp.masks_of(state)["w"].sum()) == 32
    updates, state = jax.jit(tx.update)(params, state, params)
    assert int(jsp.masks_of(state)["w"].sum()) == 32
    assert updates["z"].shape == (0, 8)


def test_a_keep_dense_pattern_that_matches_nothing_names_the_leaves():
    with pytest.raises(ValueError, match=r"keep_dense pattern 'Dense_0' matches no parameter.*'dense_0/kernel'"):
        _init(jsp.static(0.5, keep_dense=("Dense_0",)))
    assert jsp.masks_of(_init(jsp.static(0.5, keep_dense=("dense_0",))))["dense_0"]["kernel"] is None


def test_a_layer_sparsity_pattern_that_matches_no_sparsified_leaf_names_them():
    with pytest.raises(ValueError, match=r"layer_sparsity pattern 'dense_2' matches no sparsified.*'dense_1/kernel'"):
        _init(jsp.static(0.5, layer_sparsity={"dense_2": 0.9}))
    # A pattern aimed at a leaf that keep_dense already removed is just as ineffective.
    with pytest.raises(ValueError, match="layer_sparsity pattern 'dense_0'"):
        _init(jsp.static(0.5, keep_dense=("dense_0",), layer_sparsity={"dense_0": 0.9}))
    masks = jsp.masks_of(_init(jsp.static(0.5, layer_sparsity={"dense_1": 0.75})))
    assert int(masks["dense_1"]["kernel"].sum()) == 8


def _rigl(**kwargs):
    return jsp.rigl(0.5, update_every=2, end_step=10, **kwargs)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda: jsp.sparsify(optax.sgd(0.1), _rigl(), key=jax.random.key(0)), "another sparsity layout"),
        (
            lambda: jsp.sparsify(
                optax.sgd(0.1),
                jsp.rigl(0.75, update_every=2, end_step=10, keep_dense=("dense_0",)),
                key=jax.random.key(0),
            ),
            "sparsity 0.5 in the state, sparsity 0.75 here",
        ),
        (
            lambda: jsp.sparsify(optax.adam(0.1), _rigl(keep_dense=("dense_0",)), key=jax.random.key(0)),
            "inner optimizer",
        ),
        (
            lambda: jsp.sparsify(
                optax.sgd(0.1),
                jsp.set_(0.5, update_every=2, end_step=10, keep_dense=("dense_0",)),
                key=jax.random.key(0),
            ),
            "built for rigl",
        ),
    ],
    ids=["keep_dense", "sparsity", "optimizer", "algorithm"],
)
def test_a_state_from_a_differently_configured_tx_is_named(other, message):
    state = jsp.sparsify(optax.sgd(0.1), _rigl(keep_dense=("dense_0",)), key=jax.random.key(0)).init(PARAMS)
    tx = other()
    with pytest.raises(ValueError, match=f"{message}.*pass the state returned by this tx's init"):
        jax.jit(tx.update)(PARAMS, state, PARAMS)


@pytest.mark.parametrize(
    ("schedule", "bad"),
    [
        (lambda t: jnp.nan, "nan"),
        (lambda t: jnp.where(t >= 6, -0.1, 0.3), "-0.1"),
        (lambda t: 2.0, "2.0"),
    ],
    ids=["nan", "negative_late", "above_one"],
)
@pytest.mark.parametrize("end_step", [10, None])
def test_a_drop_fraction_schedule_outside_zero_one_is_refused(schedule, bad, end_step):
    with pytest.raises(ValueError, match=rf"drop_fraction schedule returns {bad}.*at update step"):
        jsp.rigl(0.5, update_every=2, end_step=end_step, drop_fraction=schedule)


def test_a_valid_drop_fraction_schedule_is_used_as_given():
    schedule = optax.cosine_decay_schedule(0.4, 10)
    algorithm = jsp.rigl(0.5, update_every=2, end_step=10, drop_fraction=schedule)
    assert algorithm.drop_fraction is schedule
