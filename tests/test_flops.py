"""Theoretical FLOPs: per-layer dense counts from the jaxpr, and the RigL paper's ratios.

Parameters are abstract (``jax.ShapeDtypeStruct``) wherever only the count matters, so nothing is
initialised or compiled.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import jaxsparse as jsp
from jaxsparse.inspection import inference_flops_ratio, layer_flops, training_flops_ratio
from jaxsparse.models import LeNet5
from tests.helpers import make_mlp, mlp_loss

MLP_PARAMS = jax.eval_shape(lambda: make_mlp(jax.random.key(0), (12, 32, 16, 4)))
MLP_BATCH = (jax.ShapeDtypeStruct((5, 12), jnp.float32), jax.ShapeDtypeStruct((5,), jnp.int32))


def _abstract(shapes: dict) -> dict:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=lambda s: isinstance(s, tuple))


def _masks(densities: dict[str, float], shapes: dict[str, tuple[int, ...]]) -> dict:
    """Masks whose first ``density * size`` entries are active (``None`` for a density of ``None``)."""
    masks = {}
    for name, shape in shapes.items():
        density = densities[name]
        size = int(np.prod(shape))
        masks[name] = None if density is None else (np.arange(size) < round(density * size)).reshape(shape)
    return masks


# --- layer_flops: hand-computed counts ---------------------------------------------------------


def test_mlp_flops_are_two_multiply_adds_per_weight_per_example():
    flops = layer_flops(mlp_loss, MLP_PARAMS, MLP_BATCH)
    # The loss's softmax and the bias adds cost nothing here; each kernel does batch x in x out MACs.
    assert flops == {
        "layer_0/kernel": 2 * 5 * 12 * 32,
        "layer_1/kernel": 2 * 5 * 32 * 16,
        "layer_2/kernel": 2 * 5 * 16 * 4,
    }


def test_conv_net_flops():
    model, x = LeNet5(num_classes=10), jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))["params"]
    flops = layer_flops(lambda p, x: model.apply({"params": p}, x, train=False), params, x)
    assert flops == {
        # 2 x outputs (batch x positions x filters) x window x input channels
        "Conv_0/kernel": 2 * (2 * 8 * 8 * 6) * 25 * 1,
        "Conv_1/kernel": 2 * (2 * 4 * 4 * 16) * 25 * 6,
        "Dense_0/kernel": 2 * 2 * (2 * 2 * 16) * 120,
        "Dense_1/kernel": 2 * 2 * 120 * 84,
        "Dense_2/kernel": 2 * 2 * 84 * 10,
    }


def test_grouped_strided_and_1d_convolutions():
    params = _abstract({"grouped": (3, 3, 2, 8), "line": (5, 4, 6)})

    def apply(p, image, signal):
        # 4 input channels in 2 groups: each output sums over a 3x3 window of 2 channels.
        a = lax.conv_general_dilated(
            image, p["grouped"], (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
        )
        b = lax.conv_general_dilated(signal, p["line"], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
        return a.sum() + b.sum()

    image = jax.ShapeDtypeStruct((1, 7, 7, 4), jnp.float32)  # VALID, stride 2: 3x3 outputs
    signal = jax.ShapeDtypeStruct((2, 10, 4), jnp.float32)
    assert layer_flops(apply, params, image, signal) == {
        "grouped": 2 * (1 * 3 * 3 * 8) * 9 * 2,
        "line": 2 * (2 * 10 * 6) * 5 * 4,
    }


def test_attention_layer_flops():
    # 2 heads of size 4 on 5 tokens of width 8, batch 3.
    attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    x = jax.ShapeDtypeStruct((3, 5, 8), jnp.float32)
    params = jax.eval_shape(lambda: attention.init(jax.random.key(0), jnp.zeros(x.shape)))["params"]
    flops = layer_flops(lambda p, x: attention.apply({"params": p}, x), params, x)
    # q, k, v: (3, 5) tokens x 8 inputs -> (2, 4); out: (3, 5) tokens x (2 x 4) -> 8. The
    # token-token products (q.k and the weighted sum of v) involve no weight and are not counted.
    per_projection = 2 * (3 * 5) * 8 * (2 * 4)
    assert flops == {f"{name}/kernel": per_projection for name in ("key", "out", "query", "value")}


def test_parameters_are_followed_through_reshapes_and_nested_jaxprs():
    params = _abstract({"a": (4, 3), "b": (4, 3), "c": (4, 4), "d": (4, 4), "e": (4, 4), "f": (2, 4, 4)})
    x = jnp.ones((2, 4))

    @jax.custom_vjp
    def identity(w):
        return w

    identity.defvjp(lambda w: (w, None), lambda _, g: (g,))

    def apply(p, x):
        y = x @ p["a"].astype(jnp.bfloat16).astype(jnp.float32)  # casts
        y = jax.jit(lambda y, w: y @ w.T)(y, p["b"])  # a transpose inside a nested jit
        y = jax.checkpoint(lambda y: y @ p["c"])(y)  # remat
        y = y @ identity(p["d"])  # custom_vjp's body passes the parameter through
        y = lax.cond(y.sum() > 0, lambda y: y @ p["e"] @ p["e"], lambda y: y @ p["e"], y)  # the dearer branch
        y, _ = lax.scan(lambda y, w: (y @ w, None), y, p["f"])  # two steps, one slice each
        return y

    per_product = 2 * 2 * 4 * 4
    assert layer_flops(apply, params, x) == {
        "a": 2 * 2 * 4 * 3,
        "b": 2 * 2 * 3 * 4,
        "c": per_product,
        "d": per_product,
        "e": 2 * per_product,
        "f": 2 * per_product,
    }


def test_products_inside_while_loops_are_refused():
    params = _abstract({"w": (3, 3), "v": (3,)})

    def apply(p, x):
        # A parameter only carried or compared in a loop costs nothing and is fine...
        x = lax.while_loop(lambda c: (c * p["v"]).sum() < 10, lambda c: c + p["v"], x)
        return x @ p["w"]

    assert layer_flops(apply, params, jnp.ones(3)) == {"w": 2 * 3 * 3}
    # ... but a product in the body repeats an unknown number of times.
    with pytest.raises(ValueError, match="while_loop"):
        layer_flops(lambda p, x: lax.while_loop(lambda c: c.sum() < 10, lambda c: c @ p["w"], x), params, jnp.ones(3))


# --- ratios --------------------------------------------------------------------------------------

SHAPES = {"a": (10, 10), "b": (10, 20), "c": (20,)}
DENSE = {"a": 1000, "b": 3000}  # FLOPs of "a" and "b"; "c" (a bias) has none


def test_inference_ratio_is_one_when_dense_and_one_minus_sparsity_for_uniform_masks():
    flops = layer_flops(mlp_loss, MLP_PARAMS, MLP_BATCH)
    assert inference_flops_ratio(flops, jax.tree.map(lambda p: None, MLP_PARAMS)) == 1.0
    assert inference_flops_ratio(flops, jax.tree.map(lambda p: np.ones(p.shape, bool), MLP_PARAMS)) == 1.0
    # Uniform 75% sparsity: every kernel keeps a quarter of its weights (every size is a multiple of
    # 4), biases stay dense. Which weights are kept does not matter, only how many.
    masks = jax.tree.map(lambda p: None if p.ndim == 1 else np.arange(p.size).reshape(p.shape) % 4 == 0, MLP_PARAMS)
    assert inference_flops_ratio(flops, masks) == pytest.approx(0.25, abs=1e-12)
    assert training_flops_ratio(jsp.static(0.75), flops, masks, total_steps=10) == pytest.approx(0.25, abs=1e-12)


def test_inference_ratio_weights_layers_by_their_flops():
    masks = _masks({"a": 0.5, "b": 0.1, "c": None}, SHAPES)
    assert inference_flops_ratio(DENSE, masks) == pytest.approx((0.5 * 1000 + 0.1 * 3000) / 4000)


def test_dense_leaves_count_at_density_one_and_state_is_accepted():
    masks = _masks({"a": None, "b": 0.1, "c": None}, SHAPES)
    expected = (1000 + 0.1 * 3000) / 4000
    assert inference_flops_ratio(DENSE, masks) == pytest.approx(expected)
    params = {name: jnp.ones(shape) for name, shape in SHAPES.items()}
    state = jsp.sparsify(optax.sgd(0.1), jsp.static(0.9, distribution="uniform"), key=jax.random.key(0)).init(params)
    chain_state = (optax.clip(1.0).init(params), state)
    for given in (state, chain_state):  # found inside an enclosing state too
        assert inference_flops_ratio(DENSE, given) == pytest.approx(inference_flops_ratio(DENSE, jsp.masks_of(state)))


def test_rigl_counts_the_dense_gradient_on_its_update_steps():
    masks = _masks({"a": 0.2, "b": 0.1, "c": None}, SHAPES)
    f_s, f_d = 0.2 * 1000 + 0.1 * 3000, 4000.0
    # Updates at steps 5, 15, 25, 35, 45 (begin 5, every 10, end 45) out of 100 steps.
    algo = jsp.rigl(0.9, update_every=10, begin_step=5, end_step=45)
    expected = (95 * 3 * f_s + 5 * (2 * f_s + f_d)) / (100 * 3 * f_d)
    assert training_flops_ratio(algo, DENSE, masks, total_steps=100) == pytest.approx(expected)
    # With updates throughout training, the per-step average over one period of ΔT steps.
    algo = jsp.rigl(0.9, update_every=10, drop_fraction_decay="constant")
    expected = (3 * f_s * 9 + 2 * f_s + f_d) / (10 * 3 * f_d)
    assert training_flops_ratio(algo, DENSE, masks, total_steps=100) == pytest.approx(expected)
    # All-dense masks cost exactly dense training.
    assert training_flops_ratio(algo, DENSE, _masks({"a": 1.0, "b": 1.0, "c": None}, SHAPES), total_steps=7) == 1.0


def test_set_and_static_cost_three_sparse_passes():
    masks = _masks({"a": 0.2, "b": 0.1, "c": None}, SHAPES)
    sparse = (0.2 * 1000 + 0.1 * 3000) / 4000
    for algo in (jsp.set_(0.9, update_every=10, end_step=50), jsp.static(0.9)):
        assert training_flops_ratio(algo, DENSE, masks, total_steps=100) == pytest.approx(sparse)


def test_top_kast_uses_both_masks():
    forward = _masks({"a": 0.1, "b": 0.1, "c": None}, SHAPES)
    pair = jsp.MaskPair(forward, backward=_masks({"a": 0.3, "b": 0.5, "c": None}, SHAPES))
    algo = jsp.top_kast(0.9, 0.5)
    f_a, f_b = 0.1 * 4000, 0.3 * 1000 + 0.5 * 3000
    assert training_flops_ratio(algo, DENSE, pair, total_steps=10) == pytest.approx((2 * f_a + f_b) / (3 * 4000))
    assert inference_flops_ratio(DENSE, algo.forward_masks(pair)) == pytest.approx(0.1)  # inference uses A only
    with pytest.raises(ValueError, match="these masks are not top_kast's.*MaskPair"):
        training_flops_ratio(algo, DENSE, pair.forward, total_steps=10)


def test_gradual_magnitude_averages_the_ramp():
    # s_t = 0.8 (1 - (1 - t/4)^3) on updates at 0, 2, 4: s_0 = 0, s_2 = 0.7, s_4 = 0.8. The forward
    # pass of step t sees the masks of the last update before t (init: 0): 0, 0, 0, 0.7, 0.7, 0.8.
    algo = jsp.gradual_magnitude(0.8, begin_step=0, end_step=4, update_every=2, distribution="uniform")
    final = _masks({"a": 0.2, "b": 0.2, "c": None}, SHAPES)
    densities = [1.0, 1.0, 1.0, 0.3, 0.3, 0.2]
    assert training_flops_ratio(algo, DENSE, final, total_steps=6) == pytest.approx(np.mean(densities))
    # Layers keep their own final sparsities along the ramp: "a" ends dense, so only "b" is pruned.
    final = _masks({"a": 1.0, "b": 0.2, "c": None}, SHAPES)
    expected = (1000 + 3000 * np.mean(densities)) / 4000
    assert training_flops_ratio(algo, DENSE, final, total_steps=6) == pytest.approx(expected)


def test_bad_arguments_are_rejected():
    masks = _masks({"a": 0.2, "b": 0.1, "c": None}, SHAPES)
    with pytest.raises(ValueError, match="not leaves of the mask tree"):
        inference_flops_ratio({"params/a": 1000}, masks)
    with pytest.raises(ValueError, match="no FLOPs"):
        inference_flops_ratio({}, masks)
    with pytest.raises(ValueError, match="total_steps"):
        training_flops_ratio(jsp.static(0.9), DENSE, masks, total_steps=0)

    class Custom(jsp.SparseAlgorithm):
        """An algorithm the FLOPs accounting has never heard of."""

    with pytest.raises(TypeError, match="Custom"):
        training_flops_ratio(Custom(layout=jsp.SparsityLayout(0.9)), DENSE, masks, total_steps=10)
