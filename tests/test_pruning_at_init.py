"""Pruning at initialisation: exact counts, the criteria against hand-worked references, SynFlow's overflow guard."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import jaxsparse as jsp
from jaxsparse.masks import NM, OutputChannels, SparsityLayout
from jaxsparse.pruning_at_init import CRITERIA, fit_layout, layer_collapse, prune_at_init
from jaxsparse.pruning_at_init._criteria import grasp_scores
from jaxsparse.pruning_at_init._rounds import exponential_counts
from tests.helpers import make_batch, make_mlp, mlp_loss

pytestmark = pytest.mark.usefixtures("fast_compiles")

SIZES = (6, 8, 3)
LAYOUT = SparsityLayout(0.8, "erk")


TRACES = []
"""One entry per trace of :func:`mlp_apply`: a second identical call must add none."""


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    """The forward pass of :func:`tests.helpers.mlp_loss`."""
    TRACES.append(None)
    for i in range(len(params)):
        x = x @ params[f"layer_{i}"]["kernel"] + params[f"layer_{i}"]["bias"][None, :]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


@pytest.fixture(scope="module")
def net():
    params = make_mlp(jax.random.key(0), SIZES)
    batch = make_batch(jax.random.key(1), 16, SIZES[0], SIZES[-1])
    return params, batch


def _prune(criterion, params, batch, layout=LAYOUT, **options):
    return prune_at_init(
        criterion,
        params,
        layout,
        key=options.pop("key", jax.random.key(2)),
        loss_fn=mlp_loss,
        batches=options.pop("batches", [batch]),
        apply_fn=mlp_apply,
        inputs=batch[0][:1],
        **options,
    )


def _kernels(tree) -> list[np.ndarray]:
    return [np.asarray(tree[f"layer_{i}"]["kernel"]) for i in range(len(tree))]


def _top_k(scores: list[np.ndarray], counts, scope: str) -> list[np.ndarray]:
    """The reference selection: numpy argsort, over all layers (``counts``: the total) or per layer."""
    if scope == "layer":
        return [_top_k([s], c, "global")[0] for s, c in zip(scores, counts, strict=True)]
    flat = np.concatenate([s.ravel() for s in scores])
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:counts]] = True
    parts = np.split(keep, np.cumsum([s.size for s in scores])[:-1])
    return [part.reshape(s.shape) for part, s in zip(parts, scores, strict=True)]


def _layout_counts(layout, params, scope):
    actives = [plan.active for plan in layout.plan(params) if plan is not None]
    return sum(actives) if scope == "global" else actives


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_exact_counts_and_masks_shaped_for_sparsify(net, criterion, scope):
    params, batch = net
    masks = _prune(criterion, params, batch, scope=scope)
    plans = LAYOUT.plan(params)
    leaves = jsp.masks.mask_leaves(params, masks)
    assert [m is None for m in leaves] == [p is None for p in plans]  # None exactly at the dense biases
    kept = [int(np.sum(m)) for m in leaves if m is not None]
    assert all(m.dtype == jnp.bool_ for m in leaves if m is not None)
    if scope == "layer":
        assert kept == [p.active for p in plans if p is not None]
    else:
        assert sum(kept) == sum(p.active for p in plans if p is not None)
    again = _prune(criterion, params, batch, scope=scope)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(again), strict=True))


def test_random_layer_scope_is_the_librarys_random_masks(net):
    params, batch = net
    key = jax.random.key(7)
    masks = _prune("random", params, batch, scope="layer", key=key)
    reference = jax.jit(lambda p, k: jsp.masks.random_masks(k, p, LAYOUT.plan(p)))(params, key)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(reference), strict=True))
    other = _prune("random", params, batch, scope="global", key=jax.random.key(8))
    first = _prune("random", params, batch, scope="global", key=key)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other), strict=True))


_loss_grad = jax.jit(jax.grad(mlp_loss))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_snip_is_the_top_k_of_abs_gradient_times_weight(net, scope):
    params, batch = net
    other = make_batch(jax.random.key(5), 16, SIZES[0], SIZES[-1])
    grads = [
        a + b for a, b in zip(_kernels(_loss_grad(params, batch)), _kernels(_loss_grad(params, other)), strict=True)
    ]
    scores = [np.abs(g * w) for g, w in zip(grads, _kernels(params), strict=True)]  # g summed over the batches
    expected = _top_k(scores, _layout_counts(LAYOUT, params, scope), scope)
    got = _kernels(_prune("snip", params, batch, scope=scope, batches=[batch, other]))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)


def test_magnitude_is_the_top_k_of_abs_weight(net):
    params, batch = net
    expected = _top_k([np.abs(w) for w in _kernels(params)], _layout_counts(LAYOUT, params, "global"), "global")
    for e, g in zip(expected, _kernels(_prune("magnitude", params, batch)), strict=True):
        np.testing.assert_array_equal(g, e)


# GraSP on L(w) = 1/2 w A w^T + b w^T, worked by hand: g = A w + b, H = A, S = -w * (A g).
_A = np.array([[2.0, 1.0], [1.0, 3.0]], np.float32)
_B = np.array([-4.4, -3.2], np.float32)


def _quadratic(params, batch):
    del batch
    w = params["w"][0]
    return 0.5 * w @ jnp.asarray(_A) @ w + jnp.asarray(_B) @ w


def test_grasp_removes_the_highest_score_on_a_hand_worked_quadratic():
    params = {"w": jnp.ones((1, 2))}
    g = _A @ np.ones(2) + _B  # (-1.4, 0.8)
    hg = _A @ g  # (-2, 1): S = -w * Hg = (2, -1), so w_0 (the highest S) is removed
    np.testing.assert_allclose(hg, [-2.0, 1.0], atol=1e-6)
    layout = SparsityLayout(0.5, "uniform")
    masks = prune_at_init("grasp", params, layout, key=jax.random.key(0), loss_fn=_quadratic, batches=[None])
    assert masks["w"].tolist() == [[False, True]]
    # SNIP ranks |g * w| = (1.4, 0.8) and keeps the other one: the criteria differ here.
    snip = prune_at_init("snip", params, layout, key=jax.random.key(0), loss_fn=_quadratic, batches=[None])
    assert snip["w"].tolist() == [[True, False]]


def test_grasp_scores_are_theta_times_the_kernels_hessian_times_their_gradient(net):
    params, batch = net
    flat, unravel = ravel_pytree([params["layer_0"]["kernel"], params["layer_1"]["kernel"]])

    def loss(kernels):  # the biases are not pruned, so the reference differentiates the kernels only
        k0, k1 = unravel(kernels)
        p = {"layer_0": {**params["layer_0"], "kernel": k0}, "layer_1": {**params["layer_1"], "kernel": k1}}
        return mlp_loss(p, batch)

    g, hessian = jax.jit(lambda x: (jax.grad(loss)(x), jax.hessian(loss)(x)))(flat)
    expected = np.asarray(flat) * (np.asarray(hessian, np.float64) @ np.asarray(g, np.float64))
    scores = grasp_scores(mlp_loss, params, [batch], LAYOUT.plan(params))
    got = np.concatenate([np.asarray(x).ravel() for x in scores if x is not None])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_grasp_groups_sum_signed_scores():
    # A = I, w = 1: theta * Hg = g = w + b. Channel 0 scores (3, -3) (sum 0, L2 4.2), channel 1
    # (0.5, 0.5) (sum 1, L2 0.7): the sum keeps channel 1, a norm would keep channel 0.
    bias = jnp.array([[2.0, -0.5], [-4.0, -0.5]])
    loss = lambda p, batch: 0.5 * jnp.sum(p["w"] ** 2) + jnp.sum(bias * p["w"])  # noqa: E731
    layout = SparsityLayout(0.5, "uniform", structure=OutputChannels())
    masks = prune_at_init("grasp", {"w": jnp.ones((2, 2))}, layout, key=jax.random.key(0), loss_fn=loss, batches=[0])
    assert masks["w"].tolist() == [False, True]


def _chain_synflow(kernels: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
    """SynFlow scores of a bias-free chain ``x @ W_1 ... @ W_L`` in float64, by hand: the forward
    signal ``h_{l-1}`` from all-ones inputs and the backward ``delta_l`` from all-ones outputs give
    ``dR/dW_l = outer(h_{l-1}, delta_l)``."""
    weights = [np.abs(w.astype(np.float64)) * m for w, m in zip(kernels, masks, strict=True)]
    forward = [np.ones(weights[0].shape[0])]
    for w in weights:
        forward.append(forward[-1] @ w)
    backward = [np.ones(weights[-1].shape[1])]
    for w in weights[::-1]:
        backward.insert(0, w @ backward[0])
    return [w * np.outer(h, d) for w, h, d in zip(weights, forward[:-1], backward[1:], strict=True)]


def test_synflow_one_round_is_the_closed_form_of_a_two_layer_net(net):
    params, batch = net
    w1, w2 = (np.abs(w.astype(np.float64)) for w in _kernels(params))
    # R = 1^T |W1| |W2| 1: dR/d|W1|_ij = (|W2| 1)_j and dR/d|W2|_jk = (1^T |W1|)_j.
    scores = [w1 * w2.sum(axis=1)[None, :], w1.sum(axis=0)[:, None] * w2]
    for s, reference in zip(scores, _chain_synflow(_kernels(params), [1.0, 1.0]), strict=True):
        np.testing.assert_allclose(s, reference)
    expected = _top_k(scores, _layout_counts(LAYOUT, params, "global"), "global")
    got = _kernels(_prune("synflow", params, batch, rounds=1))
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_synflow_rounds_follow_the_exponential_schedule(net, scope):
    params, batch = net
    kernels = _kernels(params)
    final = _layout_counts(LAYOUT, params, scope)
    if scope == "global":
        schedule = [int(k) for k in exponential_counts(final, sum(k.size for k in kernels), 100)]
    else:
        schedule = np.stack([exponential_counts(a, k.size, 100) for a, k in zip(final, kernels, strict=True)], 1)
    masks = [np.ones(k.shape) for k in kernels]
    for kept in schedule:  # re-scored on the masked network every round
        scores = [np.where(m > 0, s, -np.inf) for s, m in zip(_chain_synflow(kernels, masks), masks, strict=True)]
        masks = [m.astype(float) for m in _top_k(scores, kept, scope)]
    got = _kernels(_prune("synflow", params, batch, scope=scope))  # rounds=None: 100
    for e, g in zip(masks, got, strict=True):
        np.testing.assert_array_equal(g, e.astype(bool))


@given(st.integers(1, 5000), st.floats(0.0, 1.0), st.integers(1, 120))
@settings(max_examples=100, deadline=None)
def test_exponential_counts_end_on_the_layout_and_never_regrow(size, density, rounds):
    active = int(round(density * size))
    kept = exponential_counts(active, size, rounds)
    assert kept.shape == (rounds,) and kept[-1] == active
    assert (np.diff(kept) <= 0).all() and kept[0] <= size and (kept >= active).all()
    k = np.arange(1, rounds)
    assert (np.abs(kept[:-1] - size * (active / size) ** (k / rounds)) <= 1).all()


def _deep(scale: float, bias: float = 0.0):
    params = make_mlp(jax.random.key(3), (8,) * 21)
    return jax.tree.map(lambda x: x * scale if x.ndim == 2 else x + bias, params)


@pytest.mark.parametrize("scale", [300.0, 1e-3])
def test_synflow_survives_float32_overflow_and_underflow_of_a_20_layer_net(scale):
    params = _deep(scale)
    ones = jnp.ones((1, 8))
    naive = jnp.sum(mlp_apply(jax.tree.map(jnp.abs, params), ones))
    assert naive.dtype == jnp.float32 and (jnp.isinf(naive) if scale > 1 else naive == 0)
    kernels = _kernels(params)
    reference = _chain_synflow(kernels, [1.0] * len(kernels))
    total = sum(s.sum() for s in reference)
    assert math.isfinite(total) and (total > 1e40 if scale > 1 else 0 < total < 1e-40)
    layout = SparsityLayout(0.9, "uniform")
    expected = _top_k(reference, _layout_counts(layout, params, "global"), "global")
    got = prune_at_init("synflow", params, layout, key=jax.random.key(0), apply_fn=mlp_apply, inputs=ones, rounds=1)
    for e, g in zip(expected, _kernels(got), strict=True):
        np.testing.assert_array_equal(g, e)


def test_synflow_in_float64_ranks_scores_past_float32s_range(net):
    params, batch = net
    huge = jax.tree.map(lambda x: x * 1e25, params)  # R ~ 1e50
    assert jnp.isinf(jnp.sum(mlp_apply(jax.tree.map(jnp.abs, huge), batch[0][:1])))
    expected = _top_k(_chain_synflow(_kernels(huge), [1.0, 1.0]), _layout_counts(LAYOUT, huge, "global"), "global")
    rescaled = _prune("synflow", huge, batch, rounds=1)
    with jax.enable_x64(True):  # float64 needs no rescaling; its scores are brought into float32's keys
        wide = _prune("synflow", huge, batch, rounds=1)
    for e, f32, f64 in zip(expected, _kernels(rescaled), _kernels(wide), strict=True):
        np.testing.assert_array_equal(f32, e)
        np.testing.assert_array_equal(f64, e)


def test_synflow_overflow_of_a_network_outside_the_rescalings_class_says_use_float64():
    params = _deep(300.0, bias=1e30)  # large biases: R is no longer homogeneous in the kernels
    layout = SparsityLayout(0.9, "uniform")
    with pytest.raises(FloatingPointError, match="jax_enable_x64"):
        prune_at_init(
            "synflow", params, layout, key=jax.random.key(0), apply_fn=mlp_apply, inputs=jnp.ones((1, 8)), rounds=1
        )


def test_synflow_without_a_path_from_input_to_output_says_so(net):
    params, batch = net
    params = {**params, "layer_1": {**params["layer_1"], "kernel": jnp.zeros_like(params["layer_1"]["kernel"])}}
    with pytest.raises(ValueError, match="R = sum.* is 0 at round 1 of 1: no signal"):
        _prune("synflow", params, batch, rounds=1)


def test_global_magnitude_collapse_is_reported_and_representable(net):
    params, batch = net
    tiny = {**params, "layer_1": {**params["layer_1"], "kernel": params["layer_1"]["kernel"] * 1e-6}}
    masks = _prune("magnitude", tiny, batch)
    assert layer_collapse(tiny, masks) == ["layer_1/kernel"]
    assert layer_collapse(params, _prune("magnitude", params, batch)) == []
    fitted = fit_layout(LAYOUT, tiny, masks)
    assert [plan.active for plan in fitted.plan(tiny) if plan] == [int(np.sum(m)) for m in _kernels(masks)]
    assert dict(fitted.layer_sparsity)["^layer_1/kernel$"] == 1.0
    tx = jsp.sparsify(optax.sgd(0.1), jsp.algorithms.Static(layout=fitted), key=jax.random.key(0), masks=masks)
    state = tx.init(tiny)
    for e, g in zip(_kernels(masks), _kernels(jsp.masks_of(state)), strict=True):
        np.testing.assert_array_equal(g, e)


@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5), st.floats(0.0, 1.0)), min_size=1, max_size=3))
@settings(max_examples=20, deadline=None)
def test_fit_layout_plans_any_counts_exactly(layers):
    params, masks = {}, {}
    for i, (rows, cols, density) in enumerate(layers):
        params[f"w{i}"] = np.ones((rows, cols), np.float32)
        masks[f"w{i}"] = np.arange(rows * cols).reshape(rows, cols) < round(density * rows * cols)
    fitted = fit_layout(SparsityLayout(0.5, "uniform"), params, masks)
    assert [p.active for p in fitted.plan(params)] == [int(m.sum()) for m in masks.values()]


def test_layer_scope_with_output_channels_keeps_whole_channels(net):
    params, batch = net
    layout = SparsityLayout(0.5, "uniform", structure=OutputChannels())
    masks = _prune("snip", params, batch, layout=layout, scope="layer")
    plans = layout.plan(params)
    assert [int(np.sum(m)) for m in _kernels(masks)] == [p.active for p in plans if p]
    assert [m.shape for m in _kernels(masks)] == [(8,), (3,)]
    fitted = fit_layout(layout, params, masks)
    assert [p.active for p in fitted.plan(params) if p] == [p.active for p in plans if p]


def test_synflow_rounds_keep_n_of_every_m():
    params = {"a": jax.random.normal(jax.random.key(0), (8, 8)), "b": jax.random.normal(jax.random.key(1), (8, 4))}
    layout = SparsityLayout(None, structure=NM(2, 4))
    apply = lambda p, x: x @ p["a"] @ p["b"]  # noqa: E731
    masks = prune_at_init(
        "synflow",
        params,
        layout,
        key=jax.random.key(0),
        apply_fn=apply,
        inputs=jnp.ones((1, 8)),
        scope="layer",
        rounds=3,
    )
    for mask in (masks["a"], masks["b"]):  # groups of 4 consecutive inputs (axis 0)
        assert (np.asarray(mask).reshape(-1, 4, mask.shape[1]).sum(axis=1) == 2).all()
    assert fit_layout(layout, params, masks).layer_sparsity == ()


def test_flax_linen_params():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])
    x, y = make_batch(jax.random.key(1), 16, 6, 3)
    variables = jax.jit(model.init)(jax.random.key(0), x)

    def loss(variables, batch):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(variables, batch[0]), batch[1]).mean()

    masks = prune_at_init("snip", variables, LAYOUT, key=jax.random.key(2), loss_fn=loss, batches=[(x, y)])
    assert layer_collapse(variables, masks) == []
    kept = [int(np.sum(m)) for m in jax.tree.leaves(masks)]
    assert sum(kept) == _layout_counts(LAYOUT, variables, "global") and len(kept) == 2


def test_repeated_calls_do_not_retrace_and_run_under_jit(net):
    params, batch = net
    _prune("synflow", params, batch)
    traced = len(TRACES)
    _prune("synflow", params, batch, key=jax.random.key(3))
    _prune("synflow", jax.tree.map(lambda x: x * 2, params), batch)
    assert len(TRACES) == traced
    eager = _prune("magnitude", params, batch, key=jax.random.key(3))
    jitted = jax.jit(lambda p, k: prune_at_init("magnitude", p, LAYOUT, key=k))(params, jax.random.key(3))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True))


def test_layer_sparsity_may_be_one_but_the_global_sparsity_may_not():
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4))}
    plans = SparsityLayout(0.5, "uniform", layer_sparsity={"b": 1.0}).plan(params)
    assert [p.active for p in plans] == [8, 0]
    with pytest.raises(ValueError, match=r"sparsity=1.0 is outside \[0, 1\)"):
        SparsityLayout(1.0)
    with pytest.raises(ValueError, match=r"layer_sparsity\['b'\]=1.5 is outside \[0, 1\]"):
        SparsityLayout(0.5, layer_sparsity={"b": 1.5})


def test_bad_input_errors_name_the_fix(net):
    params, batch = net
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="unknown criterion 'snap'; choose one of 'random', 'magnitude', 'snip'"):
        prune_at_init("snap", params, LAYOUT, key=key)
    with pytest.raises(ValueError, match="unknown scope 'local'"):
        prune_at_init("magnitude", params, LAYOUT, key=key, scope="local")
    for criterion in ("snip", "grasp"):
        with pytest.raises(ValueError, match=f"criterion '{criterion}' needs loss_fn and batches: pass loss_fn"):
            prune_at_init(criterion, params, LAYOUT, key=key)
        with pytest.raises(ValueError, match="needs batches"):
            prune_at_init(criterion, params, LAYOUT, key=key, loss_fn=mlp_loss)
        with pytest.raises(ValueError, match="batches is empty"):
            prune_at_init(criterion, params, LAYOUT, key=key, loss_fn=mlp_loss, batches=iter([]))
    with pytest.raises(ValueError, match="'synflow' needs apply_fn and inputs.*data-free"):
        prune_at_init("synflow", params, LAYOUT, key=key)
    with pytest.raises(ValueError, match="needs inputs"):
        prune_at_init("synflow", params, LAYOUT, key=key, apply_fn=mlp_apply)
    with pytest.raises(ValueError, match="rounds=3 is for SynFlow"):
        prune_at_init("snip", params, LAYOUT, key=key, loss_fn=mlp_loss, batches=[batch], rounds=3)
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        prune_at_init("synflow", params, LAYOUT, key=key, apply_fn=mlp_apply, inputs=batch[0], rounds=0)
    with pytest.raises(ValueError, match="scope='global' shares one threshold"):
        prune_at_init("magnitude", {"w": jnp.ones((8, 4))}, SparsityLayout(None, structure=NM(2, 4)), key=key)


def test_masks_of_sharded_params_equal_the_single_device_ones():
    """Params sharded over an 8-device mesh get the same masks as on one device (SNIP global, SynFlow per layer)."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    params = make_mlp(jax.random.key(0), (16, 64, 32))
    batch = make_batch(jax.random.key(1), 16, 16, 32)
    shardings = jax.tree.map(lambda p: NamedSharding(mesh, P(None, "model") if p.ndim == 2 else P("model")), params)
    sharded = jax.device_put(params, shardings)
    for criterion, scope, rounds in (("snip", "global", None), ("synflow", "layer", 3)):
        single = _prune(criterion, params, batch, scope=scope, rounds=rounds)
        across = _prune(criterion, sharded, batch, scope=scope, rounds=rounds)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(across), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
