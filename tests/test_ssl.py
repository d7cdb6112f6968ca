"""Structured Sparsity Learning (penalty, algorithm) and its baseline, L1-norm filter pruning."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as jsp
from jaxsparse.masks import OutputChannels, SparsityLayout
from jaxsparse.models import ResNet
from jaxsparse.regularizers import SSLPenalty, parse_groups, resnet_blocks, resnet_coupling
from jaxsparse.training import main
from tests.helpers import make_mlp, make_train_step


def _plans(params):
    return SparsityLayout(0.0, distribution="uniform").plan(params)


def _value(penalty, params, step=0):
    return float(penalty.value(params, None, _plans(params), step))


def _norms(x, axes):
    return np.sqrt(np.square(np.asarray(x, np.float64)).sum(axis=axes))


# ----- the penalty by hand ----------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(
    # A few shapes (each new one compiles every op anew), any values and strengths.
    shape=st.sampled_from([(1, 1, 1, 1), (3, 3, 2, 4), (2, 1, 4, 3)]),
    seed=st.integers(0, 2**16),
    strength=st.one_of(st.just(0.0), st.floats(1e-3, 2.0)),
)
def test_penalty_of_each_group_type_on_a_conv_and_a_dense_kernel(shape, seed, strength):
    conv_key, dense_key = jax.random.split(jax.random.key(seed))
    conv = jax.random.normal(conv_key, shape)  # HWIO
    dense = jax.random.normal(dense_key, (shape[2], shape[3]))
    params = {"conv": {"kernel": conv}, "dense": {"kernel": dense}}
    expected = {
        "filter": _norms(conv, (0, 1, 2)).sum() + _norms(dense, 0).sum(),
        "channel": _norms(conv, (0, 1, 3)).sum() + _norms(dense, 1).sum(),
        "shape": _norms(conv, 3).sum() + _norms(dense, 1).sum(),  # dense: the same groups as 'input'
    }
    for kind, value in expected.items():
        np.testing.assert_allclose(_value(SSLPenalty({kind: strength}), params), strength * value, rtol=2e-5)
    # Aliases, and several types: the sum of their penalties.
    np.testing.assert_allclose(_value(SSLPenalty({"neuron": 1.0, "input": 1.0}), params),
                               expected["filter"] + expected["channel"], rtol=2e-5)  # fmt: skip
    np.testing.assert_allclose(_value(SSLPenalty({"filter": strength, "shape": 0.5}), params),
                               strength * expected["filter"] + 0.5 * expected["shape"], rtol=2e-5)  # fmt: skip


def test_penalty_of_heads_and_of_depth_blocks():
    keys = jax.random.split(jax.random.key(0), 6)
    d, heads, head_dim = 6, 3, 2
    attention = {name: {"kernel": jax.random.normal(k, (d, heads, head_dim))}
                 for name, k in zip(("query", "key", "value"), keys, strict=False)}  # fmt: skip
    attention["out"] = {"kernel": jax.random.normal(keys[3], (heads, head_dim, d))}
    params = {"block": {"attn": attention, "mlp": {"kernel": jax.random.normal(keys[4], (d, 4))}}}
    per_head = sum(np.square(np.asarray(attention[n]["kernel"])).sum(axis=(0, 2)) for n in ("query", "key", "value"))
    per_head = np.sqrt(per_head + np.square(np.asarray(attention["out"]["kernel"])).sum(axis=(1, 2)))
    np.testing.assert_allclose(_value(SSLPenalty({"head": 0.3}), params), 0.3 * per_head.sum(), rtol=1e-5)
    # Attention kernels are heads only: filters are the MLP's columns.
    mlp = np.asarray(params["block"]["mlp"]["kernel"])
    np.testing.assert_allclose(_value(SSLPenalty({"filter": 1.0}), params), _norms(mlp, 0).sum(), rtol=1e-5)
    blocks = {"b": ["block/mlp/kernel", "block/attn/out/kernel"]}
    whole = np.sqrt(np.square(mlp).sum() + np.square(np.asarray(attention["out"]["kernel"])).sum())
    np.testing.assert_allclose(_value(SSLPenalty({"depth": 2.0}, blocks=blocks), params), 2.0 * whole, rtol=1e-5)


def test_subgradient_is_lambda_w_over_the_group_norm():
    params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]])}
    grad = SSLPenalty({"filter": 1.0, "shape": 2.0}).gradient(params, None, _plans(params), 0)["w"]
    rows = 2.0 * np.array([[1.0, 0.0], [4.0 / np.sqrt(17.0), 1.0 / np.sqrt(17.0)]])
    np.testing.assert_allclose(grad, np.array([[0.6, 0.0], [0.8, 1.0]]) + rows, rtol=1e-6)
    zero = {"w": jnp.zeros((2, 2))}  # a zero group has subgradient 0, not NaN
    assert not SSLPenalty({"filter": 1.0}).gradient(zero, None, _plans(zero), 0)["w"].any()


# ----- exact zeros ------------------------------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), rate=st.floats(0.05, 1.0))
def test_prox_zeroes_whole_groups_exactly_and_shrinks_the_others(seed, rate):
    w = jax.random.normal(jax.random.key(seed), (3, 3, 2, 5))
    w = w.at[..., 1].multiply(1e-4).at[..., 3].multiply(1e-4)  # two small filters
    params = {"conv": {"kernel": w}}
    prox = SSLPenalty({"filter": 0.1}, prox=True, learning_rate=rate)
    out = np.asarray(prox.proximal(params, None, _plans(params), 0)["conv"]["kernel"])
    norms = _norms(w, (0, 1, 2))
    zero = norms <= 0.1 * rate
    assert zero[[1, 3]].all()
    assert (out[..., zero] == 0.0).all() and not np.signbit(out[..., zero]).any()  # exact +0
    factor = 1.0 - 0.1 * rate / norms[~zero]
    np.testing.assert_allclose(out[..., ~zero], np.asarray(w)[..., ~zero] * factor, rtol=1e-5)
    assert prox.gradient(params, None, _plans(params), 0) is None  # prox: no subgradient


def test_prox_applies_the_types_in_turn():
    w = jnp.array([[3.0, 0.2], [4.0, 0.1]])
    params = {"w": w}
    out = SSLPenalty({"filter": 1.0, "shape": 1.0}, prox=True, learning_rate=1.0).proximal(
        params, None, _plans(params), 0
    )
    after_filter = np.array([[2.4, 0.0], [3.2, 0.0]])  # column norms 5 and 0.22: the second goes
    rows = _norms(after_filter, 1)
    np.testing.assert_allclose(out["w"], after_filter * (1.0 - 1.0 / rows)[:, None], rtol=1e-6)


def test_threshold_zeroes_small_weights_until_the_end_step():
    w = jnp.array([[5e-5, -5e-5], [2e-4, -1.0]])
    params = {"w": w}
    penalty = SSLPenalty({"filter": 0.1}, end_step=10)
    out = np.asarray(penalty.proximal(params, None, _plans(params), 3)["w"])
    np.testing.assert_array_equal(out, np.array([[0.0, 0.0], [2e-4, -1.0]], np.float32))
    assert not np.signbit(out[0]).any()
    np.testing.assert_array_equal(penalty.proximal(params, None, _plans(params), 10)["w"], w)  # fine-tuning
    assert float(penalty.value(params, None, _plans(params), 10)) == 0.0


def test_coupled_leaves_join_the_filter_and_reach_zero_with_it():
    w = jax.random.normal(jax.random.key(0), (3, 3, 2, 4)).at[..., 2].multiply(1e-3)
    scale, bias = jnp.array([1.0, 1.0, 1e-3, 1.0]), jnp.array([0.5, -0.5, 1e-3, 0.1])
    params = {"conv": {"kernel": w}, "norm": {"scale": scale, "bias": bias}}
    coupled = {"conv/kernel": ["norm/scale", "norm/bias"]}
    expected = np.sqrt(np.square(np.asarray(w)).sum(axis=(0, 1, 2)) + np.square(scale) + np.square(bias)).sum()
    np.testing.assert_allclose(_value(SSLPenalty({"filter": 1.0}, coupled=coupled), params), expected, rtol=1e-5)
    out = SSLPenalty({"filter": 1.0}, prox=True, learning_rate=0.1, coupled=coupled).proximal(
        params, None, _plans(params), 0
    )
    assert (out["conv"]["kernel"][..., 2] == 0).all() and out["norm"]["scale"][2] == 0 and out["norm"]["bias"][2] == 0
    assert (out["norm"]["scale"][jnp.array([0, 1, 3])] != 0).all() and (out["conv"]["kernel"][..., 0] != 0).all()
    with pytest.raises(ValueError, match=r"coupled leaf 'norm/bias' of 'conv/kernel' has shape \(3,\)"):
        bad = {**params, "norm": {"scale": scale, "bias": bias[:3]}}
        SSLPenalty({"filter": 1.0}, coupled=coupled).value(bad, None, _plans(bad), 0)


def test_kernels_sharing_coupled_leaves_form_one_group_per_channel():
    """A residual stream: two convs write to channels that one norm follows, so channel n is one group of both."""
    a, b = jax.random.normal(jax.random.key(1), (3, 2, 4)), jax.random.normal(jax.random.key(2), (3, 4, 4))
    a, b = a.at[..., 1].multiply(1e-4), b.at[..., 1].multiply(1e-4)
    bias = jnp.array([1.0, 1e-4, 1.0, 1.0])
    params = {"a": {"kernel": a}, "b": {"kernel": b}, "norm": {"bias": bias}}
    coupled = {"a/kernel": ["norm/bias"], "b/kernel": ["norm/bias"]}
    penalty = SSLPenalty({"filter": 1.0}, prox=True, learning_rate=0.01, coupled=coupled)
    (family,) = penalty.families(params, _plans(params))
    assert family.label == "a/kernel + b/kernel" and len(family.members) == 3
    joint = np.sqrt(np.square(np.asarray(a)).sum((0, 1)) + np.square(np.asarray(b)).sum((0, 1)) + np.square(bias))
    np.testing.assert_allclose(float(penalty.value(params, None, _plans(params), 0)), joint.sum(), rtol=1e-5)
    out = penalty.proximal(params, None, _plans(params), 0)
    assert (out["a"]["kernel"][..., 1] == 0).all() and (out["b"]["kernel"][..., 1] == 0).all()
    assert out["norm"]["bias"][1] == 0 and (out["norm"]["bias"][jnp.array([0, 2, 3])] != 0).all()
    zero = penalty.zero_groups(out, _plans(params))
    assert zero == {"a/kernel + b/kernel": {"filter": [1, 4]}}


# ----- refusals ---------------------------------------------------------------------------------


def test_bad_strengths_and_group_types_are_refused(mlp):
    with pytest.raises(ValueError, match=r"strength of SSL's 'filter' groups must be a float >= 0"):
        SSLPenalty({"filter": -0.1})
    with pytest.raises(ValueError, match=r"unknown SSL group type 'rows'; choose from filter, neuron"):
        parse_groups("filter,rows")
    with pytest.raises(ValueError, match="'filter' is given twice"):
        jsp.ssl("filter,neuron", steps=10)
    with pytest.raises(ValueError, match="pass learning_rate="):
        SSLPenalty({"filter": 1.0}, prox=True)
    with pytest.raises(ValueError, match=r"SSL group type 'head' needs attention kernels.*'layer_0/kernel'"):
        _value(SSLPenalty({"head": 1.0}), mlp)
    with pytest.raises(ValueError, match="no shortcut blocks.*Pass blocks="):
        jsp.ssl("filter,depth", steps=10).plan(mlp)  # the algorithm refuses before anything runs
    attention_only = {"attn": {"query": {"kernel": jnp.ones((4, 2, 2))}}}
    with pytest.raises(ValueError, match=r"SSL group type 'channel' needs sparsified kernels .*'attn/query/kernel'"):
        _value(SSLPenalty({"channel": 1.0}), attention_only)
    with pytest.raises(ValueError, match="structure"):
        jsp.ssl("filter", steps=10, structure=OutputChannels())
    with pytest.raises(ValueError, match=r"finetune_steps must be an int in \[1, steps=10\)"):
        jsp.ssl("filter", steps=10, finetune_steps=10)


def test_resnet_blocks_and_coupling_from_its_names():
    model = ResNet(num_classes=3, stage_sizes=(1, 1), widths=(4, 8))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8, 1)), train=False))["params"]
    blocks, coupling = resnet_blocks(shapes), resnet_coupling(shapes)
    assert sorted(blocks) == ["layer_0", "layer_1"]
    leaves = (("conv", "kernel"), ("norm", "scale"), ("norm", "bias"))
    assert set(blocks["layer_1"]) == {f"layer_1/{m}_{j}/{leaf}" for j in (0, 1) for m, leaf in leaves}
    assert coupling["input_conv/kernel"] == ("input_norm/bias", "input_norm/scale")
    assert coupling["layer_0/conv_1/kernel"] == ("layer_0/norm_1/bias", "layer_0/norm_1/scale")
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    algo = jsp.ssl("filter,depth", steps=10, coupled=coupling)
    families = algo.regularizer.families(params, algo.plan(params))
    assert {f.label for f in families if f.kind == "depth"} == {"layer_0", "layer_1"}
    names = algo.regularizer.leaf_names(params, algo.plan(params))
    assert "layer_0/norm_0/scale" in names and "input_norm/bias" in names  # masked with their groups


# ----- the algorithm: freeze, then fine-tune ----------------------------------------------------


def test_frozen_groups_stay_exactly_zero_through_fine_tuning(batch, fast_compiles):
    params = make_mlp(jax.random.key(0), (12, 32, 16, 4))
    small = jnp.arange(32) % 4 == 0  # a quarter of layer_0's neurons start tiny
    params["layer_0"]["kernel"] = jnp.where(small[None, :], 1e-3, 1.0) * params["layer_0"]["kernel"]
    algo = jsp.ssl("filter", strength=0.3, steps=12, finetune_steps=6, prox=True, learning_rate=0.1,
                   coupled={"layer_0/kernel": ["layer_0/bias"]})  # fmt: skip
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    step = jax.jit(make_train_step(tx))
    state = tx.init(params)
    history = []
    for _ in range(12):
        params, state = step(params, state, batch)
        history.append((params, jsp.masks_of(state)))
    at_freeze, masks = history[algo.freeze_step]  # the update of step t_f froze the zero groups
    zero = np.asarray(jnp.all(history[algo.freeze_step - 1][0]["layer_0"]["kernel"] == 0, axis=0))
    assert zero[np.asarray(small)].all() and not zero[~np.asarray(small)].any()
    np.testing.assert_array_equal(np.asarray(masks["layer_0"]["kernel"]).all(axis=0), ~zero)
    np.testing.assert_array_equal(np.asarray(masks["layer_0"]["bias"]), ~zero)  # the coupled bias too
    for later, later_masks in history[algo.freeze_step :]:
        jax.tree.map(np.testing.assert_array_equal, later_masks, masks)
        for layer, leaves in later.items():
            for name, leaf in leaves.items():
                mask = later_masks[layer][name]
                assert mask is None or (np.asarray(leaf)[~np.asarray(mask)] == 0).all()
    # The penalty stopped: the live weights go on training without shrinking towards zero.
    final = history[-1][0]["layer_0"]["kernel"]
    assert not np.allclose(final[:, ~zero], at_freeze["layer_0"]["kernel"][:, ~zero])
    assert float(jsp.inspection.penalty(history[-1][0], state)) == 0.0


# ----- the baseline: L1-norm filter pruning -----------------------------------------------------


def test_l1_filter_is_gradual_magnitude_in_one_step():
    algo = jsp.l1_filter(0.5, steps=8, finetune_steps=4)
    same = jsp.gradual_magnitude(0.5, distribution="uniform", structure=OutputChannels(),
                                 begin_step=3, end_step=4, update_every=1, criterion="l1")  # fmt: skip
    assert algo == dataclasses.replace(same, name="l1_filter")
    assert float(algo.sparsity_schedule(3)) == 0.0 and float(algo.sparsity_schedule(4)) == 0.5
    # From the registry: the run's steps; a run of no fixed length (the speed benchmark) ends at end_step.
    registry = jsp.algorithms.lookup("l1_filter")
    assert registry.make(0.5, steps=8, options={"finetune_steps": 4}) == algo
    assert registry.make(0.5, end_step=100).schedule.end_step == 100
    assert jsp.algorithms.lookup("ssl").make(0.0, end_step=100).freeze_step == 100


def test_l1_filter_keeps_exactly_the_top_filters_by_l1_norm(batch, fast_compiles):
    params = make_mlp(jax.random.key(3), (12, 32, 16, 4))
    algo = jsp.l1_filter(0.5, steps=8, finetune_steps=4, dense_last_layer=True)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    step = jax.jit(make_train_step(tx))
    state = tx.init(params)
    for _ in range(4):
        params, state = step(params, state, batch)
    before = params
    assert all(bool(m.all()) for m in jax.tree.leaves(jsp.masks_of(state)))  # dense until the prune
    for _ in range(4):
        params, state = step(params, state, batch)
    masks = jsp.masks_of(state)
    for layer in ("layer_0", "layer_1"):
        l1 = np.abs(np.asarray(before[layer]["kernel"])).sum(axis=0)
        kept = np.asarray(masks[layer]["kernel"]).all(axis=0)
        assert kept.sum() == l1.size // 2
        assert l1[kept].min() > l1[~kept].max()
        assert (np.asarray(params[layer]["kernel"])[:, ~kept] == 0).all()
    assert masks["layer_2"]["kernel"] is None  # the classifier stays dense


# ----- the command line -------------------------------------------------------------------------

FLAGS = ["--dataset", "digits", "--model", "mlp", "--steps", "30", "--batch-size", "32", "--eval-every", "30"]


def test_ssl_and_l1_filter_from_the_command_line(tmp_path, capsys, fast_compiles):
    out = tmp_path / "ssl"
    argv = ["--method", "ssl", "--ssl-groups", "filter,shape", "--ssl-lambda", "0.005", "--ssl-prox"]
    assert main(["train", *FLAGS, *argv, "--finetune-steps", "10", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["ssl_groups"] == "filter,shape" and summary["config"]["finetune_steps"] == 10
    groups = summary["regularizer"]["zero_groups"]
    assert set(groups["Dense_0/kernel"]) == {"filter", "shape"} and groups["Dense_0/kernel"]["filter"][1] == 256
    assert (out / "zero_groups.png").is_file()
    out = tmp_path / "l1"
    argv = ["--method", "l1_filter", "--sparsity", "0.5", "--finetune-steps", "10", "--keep-dense", "Dense_2"]
    assert main(["train", *FLAGS, *argv, "--out", str(out), "--quiet"]) == 0
    layers = {layer["name"]: layer["sparsity"] for layer in json.loads((out / "summary.json").read_text())["layers"]}
    assert layers["Dense_0/kernel"] == layers["Dense_1/kernel"] == 0.5 and layers["Dense_2/kernel"] == 0.0
    assert "l1_filter on digits/mlp" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["train", *FLAGS, "--method", "ssl", "--finetune-steps", "30", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "finetune_steps=30 is invalid: must be an integer in [1, steps)" in capsys.readouterr().err


def test_the_harness_couples_each_filter_with_its_bias_and_norm_traced_from_the_model():
    from jaxsparse.models import create_model
    from jaxsparse.training import Config, make_algorithm
    from jaxsparse.training._build import model_spec

    spec = model_spec(create_model("resnet20", num_classes=10, input_shape=(8, 8, 1)), (8, 8, 1))
    config = Config(method="ssl", dataset="digits", model="resnet20", steps=100)
    coupled = dict(make_algorithm(config, spec).regularizer.coupled)
    assert coupled["layer_3/conv_0/kernel"] == ("layer_3/norm_0/bias", "layer_3/norm_0/scale")
    # The first stage's residual stream: the stem's norm and every block's second norm, one group per channel.
    assert {"input_norm/scale", "layer_0/norm_1/scale", "layer_2/norm_1/bias"} <= set(coupled["input_conv/kernel"])
    uncoupled = make_algorithm(dataclasses.replace(config, options=(("ssl_couple", False),)), spec)
    assert not uncoupled.regularizer.coupled
    assert not make_algorithm(config).regularizer.coupled  # no model given: nothing to trace
