"""Any parameter pytree works: dicts, lists, tuples, NamedTuples, flax linen and nnx states.

For each container kind we initialise ``sparsify(adam, rigl)``, take a few jitted RigL steps (every
step a mask update) and check exact per-layer counts, exact zeros off the mask, and that
``masks_of(state)`` mirrors the params tree (a ``bool`` mask at every kernel, ``None`` at every
bias). Then the leaf filter: rank <= 1 leaves are dense by default, and ``dense_first_layer``,
``dense_last_layer`` and ``keep_dense`` leave exactly the named leaves dense, with "first" and
"last" in natural name order (``layer_2`` before ``layer_10``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as jsp
from tests.helpers import SMALL_OPTIONS

SPARSITY = 0.5


pytestmark = pytest.mark.usefixtures("fast_compiles")


def is_none(x):
    return x is None


def mask_leaves(masks):
    return jax.tree.leaves(masks, is_leaf=is_none)


def dense_layer(key, n_in, n_out):
    kernel = jax.random.normal(key, (n_in, n_out)) / math.sqrt(n_in)
    bias = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), (n_out,))
    return kernel, bias


def linear(x, kernel, bias):
    return x @ kernel + bias[None, :]


# --------------------------------------------------------------------------------------------
# The containers. Each builder returns (params, apply(params, x) -> outputs, input shape).
# --------------------------------------------------------------------------------------------


def nested_dict_model(key):
    k1, k2 = jax.random.split(key)
    (w0, b0), (w1, b1) = dense_layer(k1, 6, 10), dense_layer(k2, 10, 3)
    params = {
        "encoder": {"block_0": {"dense": {"kernel": w0, "bias": b0}}},
        "head": {"kernel": w1, "bias": b1, "temperature": jnp.ones(())},  # a rank-0 leaf
    }

    def apply(p, x):
        dense = p["encoder"]["block_0"]["dense"]
        x = jnp.tanh(linear(x, dense["kernel"], dense["bias"]))
        return linear(x, p["head"]["kernel"], p["head"]["bias"]) / p["head"]["temperature"]

    return params, apply, (6,)


def list_model(key):
    shapes = [(6, 10), (10, 3)]
    layers = [dense_layer(k, a, b) for k, (a, b) in zip(jax.random.split(key, 2), shapes, strict=True)]
    params = [{"w": w, "b": b} for w, b in layers]

    def apply(p, x):
        for i, layer in enumerate(p):
            x = linear(x, layer["w"], layer["b"])
            x = jnp.tanh(x) if i < len(p) - 1 else x
        return x

    return params, apply, (6,)


def tuple_model(key):
    params = tuple(dense_layer(k, a, b) for k, (a, b) in zip(jax.random.split(key, 2), [(6, 12), (12, 3)], strict=True))

    def apply(p, x):
        (w0, b0), (w1, b1) = p
        return linear(jnp.tanh(linear(x, w0, b0)), w1, b1)

    return params, apply, (6,)


class Dense(NamedTuple):
    kernel: jax.Array
    bias: jax.Array


class MLPParams(NamedTuple):
    hidden: Dense
    out: Dense


def namedtuple_model(key):
    k1, k2 = jax.random.split(key)
    params = MLPParams(hidden=Dense(*dense_layer(k1, 6, 12)), out=Dense(*dense_layer(k2, 12, 3)))

    def apply(p, x):
        return linear(jnp.tanh(linear(x, p.hidden.kernel, p.hidden.bias)), p.out.kernel, p.out.bias)

    return params, apply, (6,)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(12)(x))
        return nn.Dense(3)(x)


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))  # rank-4 kernel (3, 3, 2, 4)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3)(x)


def linen_mlp_model(key):
    model = LinenMLP()
    variables = model.init(key, jnp.ones((1, 6)))
    assert set(variables) == {"params"}
    return variables, model.apply, (6,)


def linen_cnn_model(key):
    model = LinenCNN()
    variables = model.init(key, jnp.ones((1, 5, 5, 2)))
    assert variables["params"]["Conv_0"]["kernel"].ndim == 4
    return variables, model.apply, (5, 5, 2)


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(6, 12, rngs=rngs)
        self.out = nnx.Linear(12, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def nnx_model(key):
    graphdef, state = nnx.split(NnxMLP(nnx.Rngs(params=key)))
    assert isinstance(state, nnx.State)

    def apply(p, x):
        return nnx.merge(graphdef, p)(x)

    return state, apply, (6,)


MODELS = {
    "nested_dict": nested_dict_model,
    "list": list_model,
    "tuple": tuple_model,
    "namedtuple": namedtuple_model,
    "linen_mlp": linen_mlp_model,
    "linen_cnn": linen_cnn_model,
    "nnx_state": nnx_model,
}


# --------------------------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------------------------


def assert_masks_mirror_params(params, masks):
    """Same structure (None counted as a leaf); bool masks exactly at rank >= 2 leaves."""
    param_paths = jax.tree_util.tree_leaves_with_path(params)
    mask_struct = jax.tree.structure(masks, is_leaf=is_none)
    assert mask_struct.num_leaves == len(param_paths)
    # nnx's Param boxes are seen through: masks are plain bool arrays in the unboxed structure.
    assert mask_struct == jax.tree.structure(nnx.as_pure(params))
    n_masked = 0
    for (path, p), m in zip(param_paths, mask_leaves(masks), strict=True):
        name = jax.tree_util.keystr(path)
        if jnp.ndim(p) >= 2:
            assert m is not None, f"kernel {name} has no mask"
            assert m.shape == p.shape and m.dtype == jnp.bool_, name
            n_masked += 1
        else:
            assert m is None, f"rank-{jnp.ndim(p)} leaf {name} should be dense"
    assert n_masked >= 2


def expected_uniform_counts(params, sparsity):
    return {
        jax.tree_util.keystr(path): p.size - math.floor(sparsity * p.size)
        for path, p in jax.tree_util.tree_leaves_with_path(nnx.as_pure(params))  # masks carry no nnx boxes
        if jnp.ndim(p) >= 2
    }


def active_counts(masks):
    return {
        jax.tree_util.keystr(path): int(np.asarray(m).sum())
        for path, m in jax.tree_util.tree_leaves_with_path(masks, is_leaf=is_none)
        if m is not None
    }


def assert_zero_off_mask(params, masks):
    for (path, p), m in zip(jax.tree_util.tree_leaves_with_path(params), mask_leaves(masks), strict=True):
        if m is not None:
            off = np.asarray(p)[~np.asarray(m)]
            assert np.all(off == 0), f"{jax.tree_util.keystr(path)}: {np.count_nonzero(off)} nonzero off mask"


# --------------------------------------------------------------------------------------------
# Training on every container kind.
# --------------------------------------------------------------------------------------------


def slots_of(opt_state, param_path, shape):
    """Optimizer-state leaves shaped like the parameter whose key path ends with its key path."""
    n = len(param_path)
    return [
        (jax.tree_util.keystr(path), np.asarray(leaf))
        for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
        if getattr(leaf, "shape", None) == tuple(shape) and tuple(path[len(path) - n :]) == tuple(param_path)
    ]


@pytest.mark.parametrize("model_name", list(MODELS))
def test_rigl_trains_any_container(model_name):
    params, apply, in_shape = MODELS[model_name](jax.random.key(0))
    container = type(params)
    k_x, k_y = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k_x, (8, *in_shape))
    y = jax.random.normal(k_y, (8, 3))

    # Mask updates at steps 0 and 2 (optimizer skipped there, as in the RigL reference); steps 1
    # and 3 are normal Adam steps.
    algo = jsp.rigl(SPARSITY, distribution="uniform", update_every=2, end_step=1000, drop_fraction=0.5)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(2))
    state = tx.init(params)
    masks0 = jsp.masks_of(state)
    assert_masks_mirror_params(params, masks0)
    counts0 = active_counts(masks0)
    assert counts0 == expected_uniform_counts(params, SPARSITY)

    params = jsp.apply_masks(params, masks0)
    assert type(params) is container
    assert type(state.inner_state[0].mu) is container  # the optimizer state mirrors the container
    kernels = [(path, p.shape) for path, p in jax.tree_util.tree_leaves_with_path(params) if p.ndim >= 2]
    for path, shape in kernels:
        assert len(slots_of(state.inner_state, path, shape)) == 2  # Adam's mu and nu

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((apply(jsp.forward_params(p, state), x) - y) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    n_changed = 0
    for t in range(4):
        old_state = state
        params, state, loss = step(params, state)
        assert np.isfinite(float(loss))
        masks = jsp.masks_of(state)
        assert_masks_mirror_params(params, masks)
        assert active_counts(masks) == counts0
        assert_zero_off_mask(params, masks)
        for path, shape in kernels:
            old_m = np.asarray(mask_leaves(old_state.masks)[_leaf_index(params, path)])
            new_m = np.asarray(mask_leaves(masks)[_leaf_index(params, path)])
            n_changed += int((old_m != new_m).sum())
            if t % 2 == 1:
                np.testing.assert_array_equal(old_m, new_m)  # normal step: masks unchanged
                continue
            # Update step, no optimizer step: slots are the old ones, zeroed where the mask changed.
            new_slots, old_slots = (
                slots_of(state.inner_state, path, shape),
                slots_of(old_state.inner_state, path, shape),
            )
            for (where, slot), (_, old_slot) in zip(new_slots, old_slots, strict=True):
                np.testing.assert_array_equal(slot, np.where(old_m != new_m, 0, old_slot), err_msg=where)
    assert n_changed > 0, "RigL never changed a mask"
    assert any(np.any(slot != 0) for path, shape in kernels for _, slot in slots_of(state.inner_state, path, shape))
    assert type(params) is container
    assert step._cache_size() == 1


def _leaf_index(params, path):
    return [p for p, _ in jax.tree_util.tree_leaves_with_path(params)].index(path)


# --------------------------------------------------------------------------------------------
# Hypothesis: random nested containers and shapes, masks at init.
# --------------------------------------------------------------------------------------------


@st.composite
def param_trees(draw):
    """A random nest of dicts/lists/tuples holding 2-3 kernels and some rank-0/1 leaves."""
    n_kernels = draw(st.integers(2, 3))
    leaves = []
    for i in range(n_kernels):
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=2, max_size=3)))
        leaves.append(("kernel", shape, i))
    for i in range(draw(st.integers(0, 3))):
        leaves.append(("vector", tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=1))), i))
    order = draw(st.permutations(range(len(leaves))))
    key = jax.random.key(draw(st.integers(0, 2**16)))

    def build(items, depth):
        if len(items) == 1:
            kind, shape, i = items[0]
            return jax.random.normal(jax.random.fold_in(key, 2 * i + (kind == "kernel")), shape)
        if depth >= 3:
            return [build([item], depth + 1) for item in items]
        split = draw(st.integers(1, len(items) - 1))
        parts = [items[:split], items[split:]]
        container = draw(st.sampled_from(["dict", "list", "tuple"]))
        children = [build(part, depth + 1) for part in parts]
        if container == "dict":
            return {f"node_{j}": c for j, c in enumerate(children)}
        return list(children) if container == "list" else tuple(children)

    return build([leaves[j] for j in order], 0)


@settings(max_examples=10, deadline=None, database=None)
@given(params=param_trees(), sparsity=st.floats(0.0, 0.99))
def test_masks_mirror_any_nested_container(params, sparsity):
    algo = jsp.static(sparsity, distribution="uniform")
    # Jitted init: one compile per new set of shapes is cheaper than eager op-by-op dispatch.
    state = jax.jit(jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0)).init)(params)
    masks = jsp.masks_of(state)
    assert_masks_mirror_params(params, masks)
    assert active_counts(masks) == expected_uniform_counts(params, sparsity)
    # apply_masks keeps the container and zeroes exactly the inactive weights.
    projected = jsp.apply_masks(params, masks)
    assert jax.tree.structure(projected) == jax.tree.structure(params)
    assert_zero_off_mask(projected, masks)
    for p, q, m in zip(jax.tree.leaves(params), jax.tree.leaves(projected), mask_leaves(masks), strict=True):
        on = np.ones(p.shape, bool) if m is None else np.asarray(m)
        np.testing.assert_array_equal(np.asarray(q)[on], np.asarray(p)[on])


# --------------------------------------------------------------------------------------------
# Leaf filter defaults and options.
# --------------------------------------------------------------------------------------------


def named_layers(names, width=4):
    """``{name: {"kernel", "bias"}}``, plus an embedding table and a layer-norm scale."""
    params = {name: {"kernel": jnp.ones((width, width)), "bias": jnp.zeros(width)} for name in names}
    params["embed"] = {"embedding": jnp.ones((10, width))}
    params["norm"] = {"scale": jnp.ones(width)}
    return params


def masked_names(params, *, end_to_end=False, **layout_options):
    """Names of the leaves that get a mask under these layout options.

    ``end_to_end`` reads them from ``masks_of(sparsify(...).init(params))``; otherwise from the
    algorithm's static per-leaf plan (pure Python, no compilation), which is what decides the
    ``None`` leaves of the masks.
    """
    algo = jsp.static(SPARSITY, distribution="uniform", **layout_options)
    if not end_to_end:
        plans = algo.plan(params)
        assert len(plans) == len(jax.tree.leaves(params))
        return {plan.name for plan in plans if plan is not None}
    masks = jsp.masks_of(jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0)).init(params))
    assert jax.tree.structure(masks, is_leaf=is_none) == jax.tree.structure(params)
    return {
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, m in jax.tree_util.tree_leaves_with_path(masks, is_leaf=is_none)
        if m is not None
    }


# Dicts flatten in lexicographic key order (layer_10, layer_2, layer_9); "first" and "last" must
# follow the natural order layer_2 < layer_9 < layer_10 instead.
LAYERS = ("layer_2", "layer_9", "layer_10")
KERNELS = {f"{n}/kernel" for n in LAYERS} | {"embed/embedding"}


def test_default_filter_masks_only_rank_two_and_up():
    params = named_layers(LAYERS)
    # Biases and the norm scale (rank 1) carry no mask.
    assert masked_names(params, end_to_end=True) == masked_names(params) == KERNELS


def test_dense_first_layer_uses_natural_order():
    params = {n: {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)} for n in LAYERS}
    first_flattened = jax.tree_util.tree_leaves_with_path(params)[0][0]
    assert jax.tree_util.keystr(first_flattened).startswith("['layer_10']")  # lexicographic order
    assert masked_names(params, dense_first_layer=True, end_to_end=True) == {"layer_9/kernel", "layer_10/kernel"}


def test_dense_last_layer_uses_natural_order():
    params = {n: {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)} for n in LAYERS}
    assert masked_names(params, dense_last_layer=True) == {"layer_2/kernel", "layer_9/kernel"}


def test_dense_first_and_last_layer_together():
    params = {n: {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)} for n in LAYERS}
    assert masked_names(params, dense_first_layer=True, dense_last_layer=True) == {"layer_9/kernel"}


def test_keep_dense_patterns():
    params = named_layers(LAYERS)
    assert masked_names(params, keep_dense=("embed",), end_to_end=True) == KERNELS - {"embed/embedding"}
    # A bare string is accepted as one pattern; patterns are regular expressions.
    assert masked_names(params, keep_dense="embed") == KERNELS - {"embed/embedding"}
    assert masked_names(params, keep_dense=(r"layer_(2|9)/",)) == {"layer_10/kernel", "embed/embedding"}


def test_dense_first_layer_on_linen_names():
    """Flax names Dense_0 ... Dense_10: Dense_10 is the last layer, not the second."""

    class Deep(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(11):
                x = nn.Dense(2)(x)
            return x

    variables = Deep().init(jax.random.key(0), jnp.ones((1, 2)))
    every = {f"params/Dense_{i}/kernel" for i in range(11)}
    # Lexicographically the last kernel would be Dense_9.
    assert masked_names(variables, dense_last_layer=True) == every - {"params/Dense_10/kernel"}


def test_dense_leaves_train_densely():
    """A kept-dense kernel has no mask, is never zeroed, and its optimizer slots are untouched."""
    params = {n: {"kernel": jnp.ones((6, 6)), "bias": jnp.zeros(6)} for n in LAYERS}
    # Step 0 updates the masks (and, as in the RigL reference, skips the optimizer); step 1 is normal.
    algo = jsp.rigl(0.7, distribution="uniform", update_every=2, end_step=100, dense_first_layer=True)
    tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), algo, key=jax.random.key(0))
    state = tx.init(params)
    assert jsp.masks_of(state)["layer_2"]["kernel"] is None
    assert jsp.masks_of(state)["layer_9"]["kernel"] is not None
    params = jsp.apply_masks(params, jsp.masks_of(state))
    np.testing.assert_array_equal(np.asarray(params["layer_2"]["kernel"]), 1.0)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(2):
        params, state = step(params, state)
    # One SGD step with gradient 1 on every entry of the dense kernel: no entry was masked.
    dense = np.asarray(params["layer_2"]["kernel"])
    np.testing.assert_allclose(dense, 0.9, rtol=1e-6)
    trace = np.asarray(state.inner_state[0].trace["layer_2"]["kernel"])
    np.testing.assert_array_equal(trace, 1.0)
    assert_zero_off_mask(params, jsp.masks_of(state))


def test_integer_kernel_needs_keep_dense():
    params = {"layer_0": {"kernel": jnp.ones((4, 4))}, "lookup": jnp.zeros((3, 3), jnp.int32)}
    with pytest.raises(TypeError, match="lookup"):
        jsp.sparsify(optax.sgd(0.1), jsp.static(0.5), key=jax.random.key(0)).init(params)
    assert masked_names(params, keep_dense=("lookup",)) == {"layer_0/kernel"}


@pytest.mark.parametrize("name", [m.name for m in jsp.algorithms.registered()])
def test_three_tuples_and_none_leaves_in_params(name):
    """A 3-tuple (eqx.nn.MLP's layers) and None leaves (eqx.filter's output) are ordinary pytree nodes."""
    algo = jsp.algorithms.lookup(name).make(0.5, options=SMALL_OPTIONS, update_every=1, end_step=10, steps=3)
    params = {"layers": tuple(jnp.ones((8, 8)) * (i + 1) for i in range(3)), "act": None}
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    state = tx.init(params)
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert updates["act"] is None
    assert "sparsified" in jsp.summary(optax.apply_updates(params, updates), state)
    bad = {"layers": (jnp.ones((8, 8), bool), jnp.ones((8, 7), bool), jnp.ones((8, 8), bool)), "act": None}
    with pytest.raises(ValueError, match=r"mask at 'layers/1' has shape \(8, 7\)"):
        jsp.apply_masks(params, bad)
