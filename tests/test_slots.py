"""``slot_owners`` and ``reset_slots``: which optimizer-state leaves belong to which parameter, and resetting them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsparse.transform import reset_slots, slot_owners

PARAMS = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "scale": jnp.ones(4)}


def _names(owners):
    return [None if owner is None else jax.tree_util.keystr(owner) for owner in owners]


def test_slot_owners_match_path_suffix_and_shape():
    state = optax.chain(optax.clip(1.0), optax.adam(1e-3)).init(PARAMS)
    owners = _names(slot_owners(state, PARAMS))
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(state)]
    by_path = dict(zip(paths, owners, strict=True))
    assert by_path["[1][0].mu['dense']['kernel']"] == "['dense']['kernel']"
    assert by_path["[1][0].nu['scale']"] == "['scale']"
    assert by_path["[1][0].count"] is None  # a scalar counter belongs to nobody
    assert sum(owner is not None for owner in owners) == 6  # mu and nu of three parameters


def test_slot_owners_need_the_shape_as_well_as_the_path():
    # Same path suffix as the kernel, other shape: a factored statistic, not a slot.
    state = {"v_row": {"dense": {"kernel": jnp.ones(3)}}, "v": {"dense": {"kernel": jnp.ones((3, 4))}}}
    owners = _names(slot_owners(state, PARAMS))
    assert owners == ["['dense']['kernel']", None]  # dict keys flatten sorted: v, v_row


def test_slot_owners_take_the_longest_matching_suffix():
    params = {"a": {"w": jnp.ones(2)}, "w": jnp.ones(2)}
    state = {"mu": {"a": {"w": jnp.zeros(2)}, "w": jnp.zeros(2)}}
    assert _names(slot_owners(state, params)) == ["['a']['w']", "['w']"]


def test_reset_slots_resets_only_the_given_positions_to_the_fresh_value():
    tx = optax.adagrad(0.1, initial_accumulator_value=0.5)
    fresh = tx.init(PARAMS)
    _, state = tx.update(jax.tree.map(lambda p: 2.0 * p, PARAMS), fresh, PARAMS)
    positions = {"dense": {"kernel": jnp.eye(3, 4, dtype=bool), "bias": None}, "scale": None}
    reset = reset_slots(state, fresh, PARAMS, positions)
    kernel, before = reset[0].sum_of_squares["dense"]["kernel"], state[0].sum_of_squares["dense"]["kernel"]
    np.testing.assert_array_equal(kernel[np.eye(3, 4, dtype=bool)], 0.5)
    np.testing.assert_array_equal(kernel[~np.eye(3, 4, dtype=bool)], before[~np.eye(3, 4, dtype=bool)])
    np.testing.assert_array_equal(reset[0].sum_of_squares["scale"], state[0].sum_of_squares["scale"])
    assert jax.tree.structure(reset) == jax.tree.structure(state)
    assert all(a.dtype == b.dtype for a, b in zip(jax.tree.leaves(reset), jax.tree.leaves(state), strict=True))
