"""Layouts, random masks with exact counts, apply_masks, and mask-tree validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse.masks import SparsityLayout, apply_masks, check_masks, random_masks
from tests.helpers import make_mlp


@settings(max_examples=8, deadline=None)
@given(
    sparsity=st.floats(0, 0.99),
    distribution=st.sampled_from(["uniform", "er", "erk"]),
    seed=st.integers(0, 2**16),
)
def test_random_masks_have_exact_zero_counts(sparsity, distribution, seed):
    params = make_mlp(jax.random.key(seed), (7, 33, 20, 3))
    plans = SparsityLayout(sparsity, distribution).plan(params)
    masks = random_masks(jax.random.key(seed), params, plans)
    for plan, mask in zip(plans, jax.tree.leaves(masks, is_leaf=lambda x: x is None), strict=True):
        if plan is None:
            assert mask is None
        else:
            assert mask.dtype == jnp.bool_
            assert int((~mask).sum()) == plan.zeros == int(np.floor(plan.sparsity * plan.size))


def test_random_masks_depend_only_on_key():
    params = make_mlp(jax.random.key(0), (8, 16, 4))
    plans = SparsityLayout(0.7).plan(params)
    a = random_masks(jax.random.key(5), params, plans)
    b = random_masks(jax.random.key(5), params, plans)
    c = random_masks(jax.random.key(6), params, plans)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))
    assert not jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), a, c))


def test_layer_overrides_and_dense_options():
    params = {f"layer_{i}": {"kernel": jnp.ones((10, 10)), "bias": jnp.ones(10)} for i in (1, 2, 10)}
    plans = {
        p.name: p
        for p in SparsityLayout(0.5, "uniform", layer_sparsity={"layer_2": 0.2}, dense_last_layer=True).plan(params)
        if p is not None
    }
    # Natural order: layer_10 is last, so it is the one kept dense.
    assert set(plans) == {"layer_1/kernel", "layer_2/kernel"}
    assert plans["layer_2/kernel"].sparsity == 0.2
    assert plans["layer_1/kernel"].sparsity == 0.5
    first_dense = SparsityLayout(0.5, dense_first_layer=True).plan(params)
    assert {p.name for p in first_dense if p is not None} == {"layer_2/kernel", "layer_10/kernel"}


def test_apply_masks_zeroes_exactly_and_keeps_dtype():
    params = {"w": jnp.full((3, 3), 2.0, jnp.bfloat16), "b": jnp.ones(3)}
    masks = {"w": jnp.eye(3, dtype=bool), "b": None}
    out = apply_masks(params, masks)
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out["w"], np.float32), 2 * np.eye(3))
    assert out["b"] is params["b"]


def test_mask_tree_mismatch_is_a_clear_error():
    params = {"w": jnp.ones((2, 2)), "v": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="mask tree does not match the params tree"):
        check_masks(params, {"w": jnp.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="expected a bool mask of shape"):
        check_masks(params, {"w": jnp.ones((2, 3), bool), "v": None})
    with pytest.raises(ValueError, match="expected a bool mask of shape"):
        check_masks(params, {"w": jnp.ones((2, 2)), "v": None})
    with pytest.raises(ValueError, match="params is None"):
        check_masks(None, {"w": None})


def test_layout_errors_name_the_problem():
    with pytest.raises(ValueError, match="no parameter is sparsified"):
        SparsityLayout(0.5).plan({"b": jnp.ones(3)})
    with pytest.raises(TypeError, match="'w' has dtype int32.*only floating-point"):
        SparsityLayout(0.5).plan({"w": jnp.ones((3, 3), jnp.int32)})
    with pytest.raises(ValueError, match="params is None"):
        SparsityLayout(0.5).plan(None)
    with pytest.raises(ValueError, match="unknown distribution"):
        SparsityLayout(0.5, "gaussian")
    with pytest.raises(ValueError, match=r"layer_sparsity\['w'\]=1.2 is outside"):
        SparsityLayout(0.5, layer_sparsity={"w": 1.2})


def test_layout_options_accept_lists_and_stay_hashable():
    layout = SparsityLayout(0.5, keep_dense=["embed"], layer_sparsity={"w": 0.2})
    assert layout.keep_dense == ("embed",) and layout.layer_sparsity == (("w", 0.2),)
    assert hash(layout) == hash(SparsityLayout(0.5, keep_dense=("embed",), layer_sparsity={"w": 0.2}))


def test_default_filter_keeps_biases_dense_even_at_rank_two():
    # flax attention stores its biases as (heads, head_dim): rank 2, but still a bias.
    params = {"attention": {"query": {"kernel": jnp.ones((8, 2, 4)), "bias": jnp.ones((2, 4))}}, "norm": jnp.ones(8)}
    plans = {plan.name: plan for plan in SparsityLayout(sparsity=0.5).plan(params) if plan is not None}
    assert set(plans) == {"attention/query/kernel"}
