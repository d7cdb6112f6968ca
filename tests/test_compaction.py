"""Compaction: the smaller model computes the same function, and removes exactly the dead channels."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsparse.compaction import compact, coupled_leaves
from jaxsparse.masks import leaf_name
from jaxsparse.models import create_model


def _zero_channels(variables, rng: np.random.Generator, fraction: float, skip: tuple[str, ...] = ()):
    """Zeros a random ``fraction`` of the output channels (last axis) of every kernel but ``skip``.

    Returns the new variables and ``{kernel name: number of zeroed channels}``.
    """
    flat, tree = jax.tree_util.tree_flatten_with_path(variables)
    leaves, zeroed = [], {}
    for path, leaf in flat:
        name, array = leaf_name(path), np.array(leaf)
        if name.endswith("kernel") and not any(s in name for s in skip):
            n = array.shape[-1]
            chosen = rng.choice(n, int(n * fraction), replace=False)
            array[..., chosen] = 0
            zeroed[name] = len(chosen)
        leaves.append(array)
    return jax.tree.unflatten(tree, leaves), zeroed


def _assert_same_function(apply_fn, variables, model, batch):
    expected = apply_fn(variables, batch)
    actual = jax.jit(model)(model.params, batch)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-5)


def _shapes(model) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    return {r.name: (r.before, r.after) for r in model.report}


@pytest.mark.parametrize(
    "name, shape, seed",
    [("mlp", (40, 1), 0), ("mlp", (40, 1), 1), ("lenet5", (40, 1), 0), ("lenet5", (40, 1), 1)]
    + [("resnet20", (8, 8, 3), 0), ("vit", (40, 1), 0)],
)
def test_library_models_compact_to_the_same_function(name, shape, seed):
    net = create_model(name, num_classes=10, input_shape=shape)
    batch = jax.random.normal(jax.random.key(seed), (4, *shape))
    variables = net.init(jax.random.key(seed), batch, train=False)
    variables, _ = _zero_channels(variables, np.random.default_rng(seed), 0.5, skip=("output", "Dense_2"))
    apply_fn = functools.partial(net.apply, train=False)
    model = compact(apply_fn, variables, batch)
    before, after = model.parameter_counts
    assert after < before
    # Another batch size re-traces the model abstractly and runs the same primitives on the smaller arrays.
    _assert_same_function(apply_fn, variables, model, jax.random.normal(jax.random.key(9), (7, *shape)))


def test_exact_shapes_follow_the_coupling_through_bias_flatten_and_next_layer():
    net = create_model("lenet5", num_classes=10, input_shape=(40, 1))
    batch = jnp.ones((2, 40, 1))
    variables = net.init(jax.random.key(0), batch, train=False)
    variables, zeroed = _zero_channels(variables, np.random.default_rng(3), 0.5, skip=("Dense_2",))
    model = compact(functools.partial(net.apply, train=False), variables, batch)
    shapes = _shapes(model)
    conv0 = 6 - zeroed["params/Conv_0/kernel"]
    conv1 = 16 - zeroed["params/Conv_1/kernel"]
    dense0 = 120 - zeroed["params/Dense_0/kernel"]
    assert shapes["params/Conv_0/kernel"][1] == (5, 1, conv0)
    assert shapes["params/Conv_0/bias"][1] == (conv0,)
    assert shapes["params/Conv_1/kernel"][1] == (5, conv0, conv1)
    # The flatten maps each of Conv_1's channels to a block of the first dense layer's rows.
    length = shapes["params/Dense_0/kernel"][0][0] // 16
    assert shapes["params/Dense_0/kernel"][1] == (length * conv1, dense0)
    assert shapes["params/Dense_1/kernel"][1][0] == dense0


def test_gradients_of_the_compacted_model_are_the_kept_gradients():
    net = create_model("mlp", num_classes=10, input_shape=(12,))
    x = jax.random.normal(jax.random.key(0), (6, 12))
    variables = net.init(jax.random.key(1), x, train=False)
    variables, _ = _zero_channels(variables, np.random.default_rng(0), 0.5, skip=("Dense_2",))
    apply_fn = functools.partial(net.apply, train=False)
    model = compact(apply_fn, variables, x)

    def loss(fn, p):
        return jnp.sum(fn(p, x) ** 2)

    full = jax.grad(functools.partial(loss, apply_fn))(variables)
    small = jax.grad(functools.partial(loss, model))(model.params)
    for a, b in zip(jax.tree.leaves(model.compact_params(full)), jax.tree.leaves(small), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_expand_params_puts_the_kept_weights_back_and_zeros_the_rest():
    net = create_model("mlp", num_classes=3, input_shape=(5,))
    x = jax.random.normal(jax.random.key(2), (2, 5))
    variables, _ = _zero_channels(net.init(jax.random.key(0), x, train=False), np.random.default_rng(1), 0.5)
    apply_fn = functools.partial(net.apply, train=False)
    model = compact(apply_fn, variables, x, on_unsupported="keep")
    expanded = model.expand_params(model.params)
    where = model.expand_params(jax.tree.map(jnp.ones_like, model.params))
    for a, b, kept in zip(*map(jax.tree.leaves, (expanded, variables, where)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.where(np.asarray(kept) == 1, np.asarray(b), 0.0))
    # The rows of the next layer that met a dead channel were zeroed: the same function.
    np.testing.assert_allclose(apply_fn(expanded, x), apply_fn(variables, x), rtol=1e-6, atol=1e-6)


def test_attention_heads_are_removed_across_query_key_value_and_output():
    net = create_model("vit", num_classes=10, input_shape=(40, 1))
    batch = jax.random.normal(jax.random.key(0), (3, 40, 1))
    variables = net.init(jax.random.key(0), batch, train=False)
    params = variables["params"]["layer_0"]["attention"]
    params["out"]["kernel"] = params["out"]["kernel"].at[2].set(0.0)  # head 2 writes nothing
    apply_fn = functools.partial(net.apply, train=False)
    model = compact(apply_fn, variables, batch)
    shapes = _shapes(model)
    for part in ("query", "key", "value"):
        assert shapes[f"params/layer_0/attention/{part}/kernel"][1] == (64, 3, 16)
        assert shapes[f"params/layer_0/attention/{part}/bias"][1] == (3, 16)
    assert shapes["params/layer_0/attention/out/kernel"][1] == (3, 16, 64)
    assert shapes["params/layer_1/attention/query/kernel"][1] == (64, 4, 16)  # the other block keeps its heads
    _assert_same_function(apply_fn, variables, model, batch)


class _Residual(nn.Module):
    """A test-only convnet: conv, batch norm, a residual pair of convs, pooling, flatten, dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn_in")(nn.Conv(8, (3, 3), name="stem")(x)))
        y = nn.relu(nn.Conv(6, (3, 3), name="inner")(x))
        x = nn.relu(x + nn.Conv(8, (3, 3), name="outer")(y))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))


def _residual_variables():
    net = _Residual()
    batch = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    variables = jax.tree.map(np.array, net.init(jax.random.key(1), batch))
    return net, batch, variables


def test_a_linen_residual_model_removes_a_channel_dead_in_both_branches():
    net, batch, variables = _residual_variables()
    p = variables["params"]
    p["inner"]["kernel"][..., [1, 4]] = 0.0  # inside the residual branch: removable
    # Channel 5 of the residual stream: the stem's filter (its batch norm then outputs 0 with
    # shift 0) and the branch's filter are both zero, so the sum is zero there.
    p["stem"]["kernel"][..., 5] = 0.0
    p["outer"]["kernel"][..., 5] = 0.0
    model = compact(net.apply, variables, batch)
    shapes = _shapes(model)
    assert shapes["params/inner/kernel"][1] == (3, 3, 7, 4)  # its input: the residual stream
    assert shapes["params/outer/kernel"][1] == (3, 3, 4, 7)
    assert shapes["params/stem/kernel"][1] == (3, 3, 3, 7)
    assert shapes["params/bn_in/scale"][1] == shapes["batch_stats/bn_in/mean"][1] == (7,)
    assert shapes["params/head/kernel"][1] == (3 * 3 * 7, 4)
    _assert_same_function(net.apply, variables, model, jax.random.normal(jax.random.key(5), (5, 6, 6, 3)))


def test_a_channel_zero_in_one_branch_only_is_kept():
    net, batch, variables = _residual_variables()
    variables["params"]["outer"]["kernel"][..., 5] = 0.0  # the stem still writes channel 5
    model = compact(net.apply, variables, batch)
    assert all(r.before == r.after for r in model.report)
    reason = {r.name: r for r in model.report}["params/outer/kernel"].kept_because[3]
    assert reason.startswith("1 zero slice(s) kept") and "residual sum" in reason
    _assert_same_function(net.apply, variables, model, batch)


def test_a_constant_nonzero_channel_is_kept():
    net, batch, variables = _residual_variables()
    variables["params"]["inner"]["kernel"][..., 2] = 0.0
    variables["params"]["inner"]["bias"][2] = 0.5  # relu(0.5): the channel is constant, not zero
    model = compact(net.apply, variables, batch)
    assert _shapes(model)["params/inner/kernel"][1] == (3, 3, 8, 6)
    _assert_same_function(net.apply, variables, model, batch)


def test_an_nnx_model_compacts():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(5, 9, rngs=rngs)
            self.b = nnx.Linear(9, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.gelu(self.a(x)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    params = jax.tree.map(np.array, nnx.to_pure_dict(state))
    params["a"]["kernel"][:, [0, 3, 8]] = 0.0

    def apply_fn(p, x):
        new_state = nnx.clone(state)
        nnx.replace_by_pure_dict(new_state, p)
        return nnx.merge(graphdef, new_state)(x)

    x = jax.random.normal(jax.random.key(0), (4, 5))
    model = compact(apply_fn, params, x)
    assert _shapes(model)["a/kernel"][1] == (5, 6)
    assert _shapes(model)["b/kernel"][1] == (6, 3)
    _assert_same_function(apply_fn, params, model, x)


def test_an_equinox_model_with_out_by_in_weights_compacts():
    import equinox as eqx
    net = eqx.nn.MLP(6, 2, 10, 2, key=jax.random.key(0))
    params, static = eqx.partition(net, eqx.is_array)
    params = jax.tree.map(np.array, params)
    params.layers[0].weight[[2, 7]] = 0.0  # two neurons of the first hidden layer: rows of (out, in)
    params.layers[0].bias[[2, 7]] = 0.0

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    x = jax.random.normal(jax.random.key(1), (5, 6))
    model = compact(apply_fn, params, x)
    after = [np.shape(leaf) for leaf in jax.tree.leaves(model.params)]
    assert after[:4] == [(8, 6), (8,), (10, 8), (10,)]
    _assert_same_function(apply_fn, params, model, x)


def test_an_operation_it_cannot_follow_is_named_and_nothing_is_removed():
    def apply_fn(p, x):
        h = jax.nn.relu(x @ p["w1"])
        h = jnp.take(h, jnp.array([3, 2, 1, 0, 4, 5]), axis=1)  # a gather over channels
        return h @ p["w2"]

    params = {"w1": np.ones((3, 6), np.float32), "w2": np.ones((6, 2), np.float32)}
    params["w1"][:, 1] = 0.0
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="gather") as error:
        compact(apply_fn, params, x)
    assert "'w1' axis 1" in str(error.value) and "on_unsupported='keep'" in str(error.value)
    model = compact(apply_fn, params, x, on_unsupported="keep")
    kept = {r.name: r for r in model.report}["w1"]
    assert kept.after == (3, 6) and "gather" in kept.kept_because[1]
    _assert_same_function(apply_fn, params, model, x)


def test_the_compacted_model_traces_once_per_input_shape():
    traces = []
    net = create_model("mlp", num_classes=3, input_shape=(4,))

    def apply_fn(p, x):
        traces.append(x.shape)
        return net.apply(p, x, train=False)

    x = jnp.ones((2, 4))
    variables, _ = _zero_channels(net.init(jax.random.key(0), x, train=False), np.random.default_rng(0), 0.5)
    model = compact(apply_fn, variables, x, on_unsupported="keep")
    step = jax.jit(model)
    traces.clear()
    for _ in range(3):
        step(model.params, x)
    step(model.params, jnp.ones((5, 4)))
    # The example batch's shape was traced by compact()'s own check; the new shape once, whatever the calls.
    assert traces == [(5, 4)]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="on_unsupported"):
        compact(lambda p, x: x @ p, jnp.ones((2, 2)), jnp.ones((1, 2)), on_unsupported="skip")


def test_coupled_leaves_names_each_filters_norm_and_the_residual_streams():
    net = create_model("resnet20", num_classes=10, input_shape=(8, 8, 3))
    x = jnp.ones((2, 8, 8, 3))
    variables = net.init(jax.random.key(0), x, train=False)

    def apply_fn(params, x):
        return net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)

    coupled = coupled_leaves(apply_fn, variables["params"], x)
    assert coupled["layer_4/conv_0/kernel"] == ("layer_4/norm_0/bias", "layer_4/norm_0/scale")
    # The first stage's residual stream: the stem's norm and every block's second norm share it.
    stream = coupled["layer_1/conv_1/kernel"]
    assert coupled["input_conv/kernel"] == stream
    assert set(stream) == {"input_norm/bias", "input_norm/scale"} | {
        f"layer_{k}/norm_1/{p}" for k in range(3) for p in ("bias", "scale")
    }
    assert coupled["output/kernel"] == ("output/bias",)


def test_a_constant_channel_feeding_a_dense_layer_is_folded_into_it():
    net = create_model("lenet5", num_classes=10, input_shape=(40, 1))
    batch = jax.random.normal(jax.random.key(0), (3, 40, 1))
    variables = jax.tree.map(np.array, net.init(jax.random.key(0), batch, train=False))
    params = variables["params"]
    # Zeroed filters with positive biases emit relu(b) > 0: constants, not zeros.
    params["Conv_1"]["kernel"][..., [2, 9]] = 0.0
    params["Conv_1"]["bias"][[2, 9]] = [0.3, 0.7]
    params["Dense_0"]["kernel"][:, [5, 50, 100]] = 0.0
    params["Dense_0"]["bias"][[5, 50, 100]] = [0.2, 0.4, 1.5]
    apply_fn = functools.partial(net.apply, train=False)
    model = compact(apply_fn, variables, batch)
    shapes = _shapes(model)
    assert shapes["params/Conv_1/kernel"][1] == (5, 6, 14)
    assert shapes["params/Dense_0/kernel"][1] == (14 * shapes["params/Dense_0/kernel"][0][0] // 16, 117)
    assert shapes["params/Dense_1/kernel"][1] == (117, 84)
    assert len(model.folds) == 2  # into Dense_0 (from the flattened channels) and Dense_1
    _assert_same_function(apply_fn, variables, model, jax.random.normal(jax.random.key(1), (6, 40, 1)))
