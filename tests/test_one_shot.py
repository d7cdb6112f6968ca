"""One-shot pruning of a trained model (jaxsparse.one_shot): criteria against brute force, capture, bad input."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxsparse as jsp
from jaxsparse.masks import NM, FanIn, OutputChannels, SparsityLayout
from jaxsparse.models import create_model
from jaxsparse.one_shot import CRITERIA, prune_one_shot
from jaxsparse.one_shot._capture import find_products, input_statistics

KEY = jax.random.key(0)


class TwoLayer(nn.Module):
    """A model written here, not taken from the library: two dense layers with a tanh."""

    @nn.compact
    def __call__(self, x):
        hidden = jnp.tanh(nn.Dense(8)(x))
        return nn.Dense(6)(hidden)


def _two_layer(n=24, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, 12))
    y = jax.random.randint(jax.random.key(seed + 1), (n,), 0, 6)
    model = TwoLayer()
    params = model.init(jax.random.key(seed + 2), x)["params"]

    def apply_fn(p, batch):
        return model.apply({"params": p}, batch[0])

    def loss_fn(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, batch), batch[1]).mean()

    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    return params, apply_fn, loss_fn, batches


KERNELS = SparsityLayout(0.5, "uniform")


def _zero_off_mask(result, layout, params, scope="layer"):
    plans = layout.plan(params)
    for plan, leaf, mask in zip(
        plans,
        jax.tree.leaves(result.params),
        jax.tree.structure(params).flatten_up_to(result.masks),
        strict=True,
    ):
        if plan is None:
            assert mask is None
            continue
        full = np.asarray(plan.structure.expand(mask, plan.shape))
        assert np.all(np.asarray(leaf)[~full] == 0)
        if scope == "layer":
            assert int(np.sum(mask)) == plan.active


# --- capture -------------------------------------------------------------------------------------


def test_captured_inputs_of_a_dense_layer_are_its_activations():
    params, apply_fn, _, batches = _two_layer()
    leaves = jax.tree.leaves(params)
    kernels = [i for i, leaf in enumerate(leaves) if leaf.ndim == 2]
    products = find_products(apply_fn, params, batches[0], kernels)
    stats = input_statistics(apply_fn, params, batches, products, hessian=True)
    x = jnp.concatenate([b[0] for b in batches])
    hidden = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None, :])
    for index, inputs in zip(kernels, (x, hidden), strict=True):
        np.testing.assert_allclose(stats[index]["hessian"], inputs.T @ inputs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[index]["squares"], jnp.sum(inputs**2, axis=0), rtol=1e-5)
        assert float(stats[index]["rows"]) == 24


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 1), "VALID")])
def test_captured_inputs_of_a_convolution_are_its_patches(strides, padding):
    x = jax.random.normal(KEY, (3, 6, 5, 2))
    kernel = jax.random.normal(jax.random.key(1), (3, 2, 2, 4))
    params = {"k": kernel}

    def apply_fn(p, b):
        return jax.lax.conv_general_dilated(b, p["k"], strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    products = find_products(apply_fn, params, x, [0])
    stats = input_statistics(apply_fn, params, [x], products, hessian=True)[0]
    # Brute force: the patch of every output position, flattened in the kernel's (H, W, I) order.
    xp = np.asarray(x)
    if padding == "SAME":
        xp = np.pad(xp, ((0, 0), (1, 1), (0, 1), (0, 0)))
    rows = []
    for n in range(xp.shape[0]):
        for i in range(0, xp.shape[1] - 3 + 1, strides[0]):
            for j in range(0, xp.shape[2] - 2 + 1, strides[1]):
                rows.append(xp[n, i : i + 3, j : j + 2, :].reshape(-1))
    rows = np.array(rows)
    np.testing.assert_allclose(stats["hessian"], rows.T @ rows, rtol=1e-5, atol=1e-4)
    assert int(stats["rows"]) == len(rows)


def _model_products(name, shape):
    model = create_model(name, num_classes=10, input_shape=shape)
    x = jax.random.normal(KEY, (2, *shape))
    variables = model.init(KEY, x, train=False)

    def apply_fn(p, b):
        return model.apply({**variables, "params": p}, b, train=False)

    params = variables["params"]
    plans = jsp.SparsityLayout(0.5, keep_dense=("pos_embedding",) if name == "vit" else ()).plan(params)
    chosen = [i for i, plan in enumerate(plans) if plan is not None]
    return find_products(apply_fn, params, x, chosen), plans


@pytest.mark.parametrize(
    "name,shape,count", [("mlp", (40,), 3), ("lenet5", (40, 1), 5), ("resnet20", (8, 8, 1), 20), ("vit", (40, 1), 14)]
)
def test_every_sparsified_kernel_of_the_library_models_is_found(name, shape, count):
    products, plans = _model_products(name, shape)
    assert len(products) == count == sum(plan is not None for plan in plans)
    for index, product in products.items():
        assert product.shape == plans[index].shape
        assert product.d_in * product.d_out == np.prod(product.shape)


def test_attention_projections_are_seen_as_their_matrices():
    products, _ = _model_products("vit", (40, 1))
    by_name = {p.name: p for p in products.values()}
    query, out = by_name["layer_0/attention/query/kernel"], by_name["layer_0/attention/out/kernel"]
    assert (query.axes_in, query.d_in, query.d_out) == ((0,), 64, 64)
    assert (out.axes_in, out.d_in, out.d_out) == ((0, 1), 64, 64)
    kernel = jax.random.normal(KEY, out.shape)
    np.testing.assert_array_equal(out.from_matrix(out.to_matrix(kernel)), kernel)


def test_an_nnx_model_is_traced():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(5, 7, rngs=rngs)
            self.b = nnx.Linear(7, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)

    def apply_fn(p, x):
        new_state = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(new_state, p)
        return nnx.merge(graphdef, new_state)(x)

    x = jax.random.normal(KEY, (10, 5))
    result = prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[x])
    assert int(result.masks["a"]["kernel"].sum()) == 18 and int(result.masks["b"]["kernel"].sum()) == 11


def test_a_kernel_used_twice_is_refused():
    params = {"w": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match="'w' takes part in 2 products"):
        prune_one_shot(
            "wanda", params, KERNELS, key=KEY, apply_fn=lambda p, b: b @ p["w"] @ p["w"], batches=[jnp.ones((2, 4))]
        )


def test_a_kernel_under_scan_is_refused():
    params = {"w": jnp.ones((4, 4))}

    def apply_fn(p, b):
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ p["w"]), None), b, length=3)[0]

    with pytest.raises(ValueError, match="'w' is used by `scan` inside a loop"):
        prune_one_shot("sparsegpt", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[jnp.ones((2, 4))])


def test_a_kernel_transformed_before_its_product_is_refused():
    params = {"w": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match="'w' is used by `transpose` before its product"):
        prune_one_shot(
            "wanda", params, KERNELS, key=KEY, apply_fn=lambda p, b: b @ p["w"].T, batches=[jnp.ones((2, 4))]
        )


def test_a_grouped_convolution_is_refused():
    params = {"k": jnp.ones((3, 1, 4))}

    def apply_fn(p, b):
        return jax.lax.conv_general_dilated(
            b, p["k"], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=4
        )

    with pytest.raises(ValueError, match="grouped"):
        prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[jnp.ones((2, 5, 4))])


# --- the criteria against brute force ----------------------------------------------------------


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_keeps_the_largest_weights(scope):
    params, *_ = _two_layer()
    layout = SparsityLayout(0.6, "uniform")
    result = prune_one_shot("magnitude", params, layout, key=KEY, scope=scope)
    _zero_off_mask(result, layout, params, scope)
    kernels = [params["Dense_0"]["kernel"], params["Dense_1"]["kernel"]]
    masks = [result.masks["Dense_0"]["kernel"], result.masks["Dense_1"]["kernel"]]
    if scope == "global":
        values = np.abs(np.concatenate([np.ravel(k) for k in kernels]))
        kept = np.concatenate([np.ravel(m) for m in masks])
        assert kept.sum() == sum(k.size - int(0.6 * k.size) for k in kernels)
        assert values[kept].min() >= values[~kept].max()
    else:
        for k, m in zip(kernels, masks, strict=True):
            values, kept = np.abs(np.ravel(k)), np.ravel(np.asarray(m))
            assert kept.sum() == k.size - int(0.6 * k.size)
            assert values[kept].min() >= values[~kept].max()
    assert result.params["Dense_0"]["bias"] is params["Dense_0"]["bias"]


def test_taylor_scores_are_the_mean_squared_first_order_terms():
    params, _, loss_fn, batches = _two_layer()
    from jaxsparse.one_shot._gradients import taylor_scores

    plans = KERNELS.plan(params)
    scores = taylor_scores(loss_fn, params, batches, plans)
    leaves = jax.tree.leaves(params)
    expected = [None] * len(leaves)
    for batch in batches:
        grads = jax.tree.leaves(jax.grad(loss_fn)(params, batch))
        for i, (plan, g, leaf) in enumerate(zip(plans, grads, leaves, strict=True)):
            if plan is not None:
                term = np.square(np.asarray(g * leaf, np.float64)) / len(batches)
                expected[i] = term if expected[i] is None else expected[i] + term
    for got, want in zip(scores, expected, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_taylor_group_scores_square_the_summed_terms():
    params, _, loss_fn, batches = _two_layer()
    layout = SparsityLayout(0.5, "uniform", structure=OutputChannels())
    result = prune_one_shot("taylor", params, layout, key=KEY, loss_fn=loss_fn, batches=batches)
    kernel = params["Dense_0"]["kernel"]
    per_batch = [
        np.sum(np.asarray(jax.grad(loss_fn)(params, b)["Dense_0"]["kernel"] * kernel), axis=0) for b in batches
    ]
    score = np.mean(np.square(per_batch), axis=0)
    kept = np.asarray(result.masks["Dense_0"]["kernel"])
    assert kept.sum() == 4 and score[kept].min() >= score[~kept].max()


def test_obd_scores_are_half_theta_squared_times_the_per_example_fisher():
    params, _, loss_fn, batches = _two_layer()
    from jaxsparse.one_shot._gradients import diagonal_fisher

    plans = KERNELS.plan(params)
    fisher = diagonal_fisher(loss_fn, params, batches, [p is not None for p in plans])
    examples = [(b[0][n : n + 1], b[1][n : n + 1]) for b in batches for n in range(len(b[1]))]
    squares = [np.square(np.asarray(jax.grad(loss_fn)(params, e)["Dense_1"]["kernel"], np.float64)) for e in examples]
    index = [i for i, p in enumerate(plans) if p is not None and p.name == "Dense_1/kernel"][0]
    np.testing.assert_allclose(fisher[index], np.mean(squares, axis=0), rtol=1e-4, atol=1e-10)
    result = prune_one_shot("obd", params, KERNELS, key=KEY, loss_fn=loss_fn, batches=batches)
    saliency = 0.5 * np.square(np.asarray(params["Dense_1"]["kernel"])) * np.mean(squares, axis=0)
    kept = np.asarray(result.masks["Dense_1"]["kernel"])
    assert kept.sum() == 24 and saliency[kept].min() >= saliency[~kept].max()


def test_wanda_keeps_the_best_weight_times_input_norm_in_every_output():
    params, apply_fn, _, batches = _two_layer()
    result = prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches, sequential=False)
    _zero_off_mask(result, KERNELS, params)
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    score = np.abs(np.asarray(params["Dense_0"]["kernel"])) * np.linalg.norm(x, axis=0)[:, None]
    kept = np.asarray(result.masks["Dense_0"]["kernel"])
    np.testing.assert_array_equal(kept.sum(axis=0), 6)  # 12 inputs, half kept in every output
    for column in range(8):
        assert score[kept[:, column], column].min() >= score[~kept[:, column], column].max()
    np.testing.assert_array_equal(result.params["Dense_0"]["kernel"], np.where(kept, params["Dense_0"]["kernel"], 0))


def test_wanda_spreads_an_uneven_count_over_the_outputs():
    params = {"w": jax.random.normal(KEY, (5, 3))}
    x = jax.random.normal(jax.random.key(1), (7, 5))
    layout = SparsityLayout(0.5, "uniform")  # keeps 15 - 7 = 8 of 15: 3, 3 and 2 per output
    result = prune_one_shot("wanda", params, layout, key=KEY, apply_fn=lambda p, b: b @ p["w"], batches=[x])
    kept = np.asarray(result.masks["w"])
    assert kept.sum() == 8 and sorted(kept.sum(axis=0).tolist()) == [2, 3, 3]
    score = np.abs(np.asarray(params["w"])) * np.linalg.norm(np.asarray(x), axis=0)[:, None]
    ranked = -np.sort(-score, axis=0)  # the column keeping 2 has the smallest third-best score
    assert np.argmin(kept.sum(axis=0)) == np.argmin(ranked[2])


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_two_four_holds_in_every_group(criterion):
    params, apply_fn, _, batches = _two_layer()
    layout = SparsityLayout(None, "uniform", structure=NM(2, 4))
    result = prune_one_shot(criterion, params, layout, key=KEY, apply_fn=apply_fn, batches=batches)
    for name in ("Dense_0", "Dense_1"):
        mask = np.asarray(result.masks[name]["kernel"])
        groups = mask.reshape(mask.shape[0] // 4, 4, mask.shape[1]).sum(axis=1)
        np.testing.assert_array_equal(groups, 2)
        assert np.all(np.asarray(result.params[name]["kernel"])[~mask] == 0)


def test_wanda_takes_constant_fan_in():
    params, apply_fn, _, batches = _two_layer()
    layout = SparsityLayout(0.75, "uniform", structure=FanIn())
    result = prune_one_shot("wanda", params, layout, key=KEY, apply_fn=apply_fn, batches=batches)
    np.testing.assert_array_equal(np.asarray(result.masks["Dense_0"]["kernel"]).sum(axis=0), 3)


# --- handing the result to sparsify ------------------------------------------------------------


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_hands_masks_to_sparsify(criterion):
    params, apply_fn, loss_fn, batches = _two_layer()
    result = prune_one_shot(criterion, params, KERNELS, key=KEY, loss_fn=loss_fn, apply_fn=apply_fn, batches=batches)
    _zero_off_mask(result, KERNELS, params)
    again = prune_one_shot(criterion, params, KERNELS, key=KEY, loss_fn=loss_fn, apply_fn=apply_fn, batches=batches)
    jax.tree.map(np.testing.assert_array_equal, result, again)
    tx = jsp.sparsify(optax.sgd(0.1), jsp.algorithms.Static(layout=KERNELS), key=KEY, masks=result.masks)
    state = tx.init(result.params)
    grads = jax.grad(loss_fn)(result.params, batches[0])
    updates, _ = jax.jit(tx.update)(grads, state, result.params)
    trained = optax.apply_updates(result.params, updates)
    mask = np.asarray(result.masks["Dense_0"]["kernel"])
    assert np.all(np.asarray(trained["Dense_0"]["kernel"])[~mask] == 0)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["taylor", "obd", "woodfisher"])
def test_gradient_criteria_without_calibration_data_are_refused(criterion):
    params, _, loss_fn, _ = _two_layer()
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_one_shot(criterion, params, KERNELS, key=KEY, loss_fn=loss_fn)
    with pytest.raises(ValueError, match="pass loss_fn"):
        prune_one_shot(criterion, params, KERNELS, key=KEY, batches=[None])


@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
def test_input_criteria_need_apply_fn_and_batches(criterion):
    params, apply_fn, _, _ = _two_layer()
    with pytest.raises(ValueError, match="pass apply_fn"):
        prune_one_shot(criterion, params, KERNELS, key=KEY, batches=[None])
    with pytest.raises(ValueError, match="batches is empty"):
        prune_one_shot(criterion, params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[])


def test_a_batch_that_does_not_fit_the_model_is_named():
    params, apply_fn, loss_fn, batches = _two_layer()
    wrong = (jnp.ones((4, 11)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"calibration batch 2 \(leaf shapes \[\(4, 11\), \(4,\)\]\) does not fit"):
        prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[*batches, wrong])
    with pytest.raises(ValueError, match="calibration batch 0"):
        prune_one_shot("obd", params, KERNELS, key=KEY, loss_fn=loss_fn, batches=[wrong])


def test_unsupported_structures_and_scopes_are_refused():
    params, apply_fn, _, batches = _two_layer()
    channels = SparsityLayout(0.5, "uniform", structure=OutputChannels())
    with pytest.raises(ValueError, match="'sparsegpt' does not support the 'output_channels' structure"):
        prune_one_shot("sparsegpt", params, channels, key=KEY, apply_fn=apply_fn, batches=batches)
    with pytest.raises(ValueError, match="supports unstructured, n:m$|supports unstructured, n:m\\."):
        prune_one_shot(
            "sparsegpt", params, SparsityLayout(0.5, structure=FanIn()), key=KEY, apply_fn=apply_fn, batches=batches
        )
    with pytest.raises(ValueError, match="use scope='layer'"):
        prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches, scope="global")
    with pytest.raises(ValueError, match="unknown criterion 'snip'"):
        prune_one_shot("snip", params, KERNELS, key=KEY)
    nm_rows = SparsityLayout(None, "uniform", structure=NM(2, 4, axis=1))
    with pytest.raises(ValueError, match="pass NM\\(2, 4, axis=0\\)"):
        prune_one_shot(
            "sparsegpt",
            {"w": jnp.ones((8, 4))},
            nm_rows,
            key=KEY,
            apply_fn=lambda p, b: b @ p["w"],
            batches=[jnp.ones((3, 8))],
        )


def test_a_non_finite_fisher_names_the_layer():
    params, _, loss_fn, batches = _two_layer()
    bad = jax.tree.map(lambda a: a, params)
    bad["Dense_1"]["kernel"] = bad["Dense_1"]["kernel"].at[0, 0].set(jnp.inf)
    with pytest.raises(FloatingPointError, match="layer 'Dense_[01]/kernel' is not finite"):
        prune_one_shot("obd", bad, KERNELS, key=KEY, loss_fn=loss_fn, batches=batches)


@pytest.mark.parametrize("damping", [0.0, -1.0, float("nan")])
def test_bad_damping_is_refused(damping):
    params, apply_fn, _, batches = _two_layer()
    with pytest.raises(ValueError, match="damping must be a positive finite number"):
        prune_one_shot("sparsegpt", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches, damping=damping)


def test_results_do_not_depend_on_how_batches_are_iterated():
    params, apply_fn, _, batches = _two_layer()
    listed = prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches)
    generated = prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=iter(batches))
    jax.tree.map(np.testing.assert_array_equal, listed.masks, generated.masks)


# --- the OBS family, end to end ----------------------------------------------------------------


def test_woodfisher_prunes_the_smallest_saliencies_and_applies_the_exact_obs_step():
    x = jax.random.normal(KEY, (20, 2))
    y = jax.random.normal(jax.random.key(1), (20, 3))
    params = {"w": jax.random.normal(jax.random.key(2), (2, 3))}

    def loss_fn(p, batch):
        return 0.5 * jnp.mean(jnp.sum(jnp.square(batch[0] @ p["w"] - batch[1]), axis=-1))

    damping = 1e-3
    result = prune_one_shot(
        "woodfisher",
        params,
        KERNELS,
        key=KEY,
        loss_fn=loss_fn,
        batches=[(x[:12], y[:12]), (x[12:], y[12:])],
        block_size=6,
        damping=damping,
    )
    grads = np.stack([np.ravel(jax.grad(loss_fn)(params, (x[n : n + 1], y[n : n + 1]))["w"]) for n in range(20)])
    fisher = damping * np.eye(6) + grads.T.astype(np.float64) @ grads / 20
    inverse = np.linalg.inv(fisher)
    theta = np.ravel(np.asarray(params["w"], np.float64))
    saliency = theta**2 / (2 * np.diag(inverse))
    pruned = ~np.ravel(np.asarray(result.masks["w"]))
    assert pruned.sum() == 3 and saliency[pruned].max() <= saliency[~pruned].min()
    # The minimiser of 1/2 d^T F d subject to theta_Q + d_Q = 0, by its KKT system.
    q = np.flatnonzero(pruned)
    kkt = np.block([[fisher, np.eye(6)[:, q]], [np.eye(6)[q], np.zeros((3, 3))]])
    delta = np.linalg.solve(kkt, np.concatenate([np.zeros(6), -theta[q]]))[:6]
    np.testing.assert_allclose(np.ravel(result.params["w"]), theta + delta, rtol=1e-4, atol=1e-5)
    assert np.all(np.ravel(result.params["w"])[pruned] == 0)


@pytest.mark.parametrize("seed", range(3))
def test_sparsegpt_reconstructs_a_layer_better_than_magnitude(seed):
    params = {"w": jax.random.normal(jax.random.key(seed), (16, 8))}
    x = jax.random.normal(jax.random.key(seed + 10), (64, 16)) @ jax.random.normal(jax.random.key(seed + 20), (16, 16))
    batches = [x[:32], x[32:]]
    apply_fn = lambda p, b: b @ p["w"]  # noqa: E731
    error = {}
    for criterion in ("sparsegpt", "magnitude"):
        # Blocks of 4 of the 16 inputs: the adaptive mask selection at work (the paper's 128 of thousands).
        options = {"block_size": 4} if criterion == "sparsegpt" else {}
        result = prune_one_shot(criterion, params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches, **options)
        error[criterion] = float(jnp.sum(jnp.square(x @ params["w"] - x @ result.params["w"])))
    assert error["sparsegpt"] < error["magnitude"]


def test_sequential_sparsegpt_sees_the_pruned_earlier_layers():
    from jaxsparse.one_shot._sparsegpt import sparsegpt_prune

    params, apply_fn, _, batches = _two_layer()
    result = prune_one_shot("sparsegpt", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches)
    parallel = prune_one_shot(
        "sparsegpt", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=batches, sequential=False
    )
    x = jnp.concatenate([b[0] for b in batches])
    first = result.params["Dense_0"]
    hidden = jnp.tanh(x @ first["kernel"] + first["bias"][None, :])
    seeds = jax.random.bits(jax.random.fold_in(KEY, 0x7FFFFFFE), (4,), jnp.uint32)
    weight, mask = sparsegpt_prune(params["Dense_1"]["kernel"], hidden.T @ hidden, kept=24, tie_seed=seeds[3])
    np.testing.assert_allclose(result.params["Dense_1"]["kernel"], weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.masks["Dense_1"]["kernel"], mask)
    np.testing.assert_array_equal(parallel.params["Dense_0"]["kernel"], first["kernel"])
    assert not np.allclose(parallel.params["Dense_1"]["kernel"], weight)


def test_woodfisher_under_a_memory_budget_streams_the_leaves_to_the_same_result():
    params, _, loss_fn, batches = _two_layer()
    whole = prune_one_shot("woodfisher", params, KERNELS, key=KEY, loss_fn=loss_fn, batches=batches, block_size=16)
    # 12x8 and 8x6 kernels with blocks of 16: 6144 and 3072 bytes; 7000 bytes holds one at a time.
    streamed = prune_one_shot(
        "woodfisher", params, KERNELS, key=KEY, loss_fn=loss_fn, batches=batches, block_size=16, fisher_memory=7000
    )
    jax.tree.map(np.testing.assert_array_equal, whole.masks, streamed.masks)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), whole.params, streamed.params)
    from jaxsparse.one_shot._gradients import fisher_groups

    assert fisher_groups([96, 48], [0, 1], 16, 7000) == [[0], [1]]
    assert fisher_groups([96, 48], [0, 1], 16, 2**30) == [[0, 1]]


def test_an_equinox_model_with_out_by_in_weights_is_compared_per_output():
    import equinox as eqx

    model = eqx.nn.MLP(8, 3, 16, 2, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    x = jax.random.normal(KEY, (32, 8))
    result = prune_one_shot("wanda", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[x])
    weight, mask = np.asarray(params.layers[0].weight), np.asarray(result.masks.layers[0].weight)
    np.testing.assert_array_equal(mask.sum(axis=1), 4)  # (out, in): each of the 16 outputs keeps 4 of 8
    score = np.abs(weight) * np.linalg.norm(np.asarray(x), axis=0)[None, :]
    assert all(score[o, mask[o]].min() >= score[o, ~mask[o]].max() for o in range(16))
    gpt = prune_one_shot("sparsegpt", params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[x])
    assert [int(m.sum()) for m in jax.tree.leaves(gpt.masks)] == [64, 128, 24]


@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
def test_non_finite_layer_inputs_name_the_layer(criterion):
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}

    def apply_fn(p, x):
        return jnp.exp(x @ p["a"] * 100.0) @ p["b"]  # the second layer's inputs overflow to inf

    x = jnp.ones((3, 4))
    with pytest.raises(FloatingPointError, match="layer 'b' is not finite"):
        prune_one_shot(criterion, params, KERNELS, key=KEY, apply_fn=apply_fn, batches=[x], sequential=False)
