"""The core-v2 protocol: registry, finality, algorithm state, structure, regularisers, handed-in
masks, parameter actions, finding the state in a chain, sharding of ``jit(tx.init)``, key use."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsparse as jsp
from jaxsparse.algorithms import registered
from jaxsparse.masks import OutputChannels
from jaxsparse.regularizers import GroupLasso
from tests import example_algorithm
from tests.helpers import make_mlp, make_train_step, mlp_loss, registered_algorithms

NAMES = [method.name for method in registered()]


def _kernels(tree):
    return [tree[k]["kernel"] for k in sorted(tree)]


def _train(tx, params, batch, steps, step=None):
    """``steps`` jitted train steps from ``tx.init``; ``step`` reuses a compiled step."""
    state = tx.init(params)
    if not state.algorithm.stores_dense:
        params = jsp.apply_masks(params, jsp.masks_of(state))
    step = step or jax.jit(make_train_step(tx))
    for _ in range(steps):
        params, state = step(params, state, batch)
    return params, state


def test_registry_holds_every_builtin_and_the_worked_example():
    assert NAMES[:5] == ["static", "set", "rigl", "top_kast", "gradual_magnitude"]
    assert "averaged_growth" in NAMES
    with pytest.raises(KeyError, match="no algorithm named 'nope'"):
        jsp.algorithms.lookup("nope")
    with pytest.raises(ValueError, match="already registered"):
        jsp.algorithms.register(dataclasses.replace(jsp.algorithms.lookup("rigl"), help="another"))


def test_concrete_algorithms_are_final():
    with pytest.raises(TypeError, match="final algorithm and cannot be subclassed"):

        class MoreRigL(jsp.algorithms.DropAndGrow):
            """A subclass of a final algorithm: refused when the class is created."""

    with pytest.raises(TypeError, match="abstract"):
        jsp.SparseAlgorithm()


# ----- conformance: every registered algorithm -------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_conformance_exact_counts_zeros_no_retrace_determinism(name, mlp, batch):
    """SGD with momentum here; every method also trains with Adam at four structures in tests/test_structure.py."""
    algo = registered_algorithms(0.75)[name]
    tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), algo, key=jax.random.key(3))
    step = jax.jit(chex.assert_max_traces(make_train_step(tx), n=1))  # normal and update steps: one trace
    chex.clear_trace_counter()
    (params, state), (params_again, state_again) = [_train(tx, mlp, batch, 7, step) for _ in range(2)]
    assert step._cache_size() == 1
    chex.assert_trees_all_equal(jsp.masks_of(state), jsp.masks_of(state_again))  # deterministic
    chex.assert_trees_all_equal(params, params_again)
    masks = jsp.masks_of(state)
    for plan, mask, param in zip(algo.plan(mlp), jax.tree.leaves(masks, is_leaf=lambda x: x is None),
                                 jax.tree.leaves(params), strict=True):  # fmt: skip
        if plan is None:
            assert mask is None
            continue
        if algo.fixed_counts:
            assert int(mask.sum()) == plan.active
        if not algo.stores_dense:
            assert bool((param[~mask] == 0).all())
    # Pruning ramps keep at least the final counts; SNFS moves counts between layers, keeping the total.
    active = sum(int(m.sum()) for m in jax.tree.leaves(masks))
    assert active >= sum(plan.active for plan in algo.plan(mlp) if plan is not None)


@pytest.mark.parametrize("name", NAMES)
def test_conformance_state_and_masks_sharded_like_params_under_jit_init(name):
    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    params = make_mlp(jax.random.key(0), (16, 64, 32))
    shardings = jax.tree.map(lambda p: NamedSharding(mesh, P(None, "model") if p.ndim == 2 else P("model")), params)
    params = jax.device_put(params, shardings)
    tx = jsp.sparsify(optax.adam(1e-3), registered_algorithms(0.5)[name], key=jax.random.key(0))
    state = jax.jit(tx.init)(params)
    for layer in params:
        assert jsp.masks_of(state)[layer]["kernel"].sharding.is_equivalent_to(shardings[layer]["kernel"], 2)
        assert state.inner_state[0].mu[layer]["kernel"].sharding.is_equivalent_to(shardings[layer]["kernel"], 2)
    # Parameter-shaped algorithm state (the worked example's average) is sharded like its parameter;
    # the rest (GaP's dense partition) is replicated.
    owners = jsp.transform.slot_owners(state.algorithm_state, params)
    by_path = dict(jax.tree_util.tree_leaves_with_path(shardings))
    for leaf, owner in zip(jax.tree.leaves(state.algorithm_state), owners, strict=True):
        expected = NamedSharding(mesh, P()) if owner is None else by_path[owner]
        assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)


# ----- algorithm state --------------------------------------------------------------------------


def test_algorithm_state_is_updated_every_step_and_checkpointable(mlp, batch):
    algo = example_algorithm.averaged_growth(0.8, update_every=3, end_step=30)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    params, state = _train(tx, mlp, batch, 2)
    grads = jax.grad(mlp_loss)(jsp.forward_params(params, state), batch)
    _, after = tx.update(grads, state, params)
    expected = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * jnp.abs(g), state.algorithm_state, grads)
    chex.assert_trees_all_close(after.algorithm_state, expected, rtol=1e-6)
    # The state is a pytree like any other: flattening and unflattening round-trips it.
    leaves, treedef = jax.tree.flatten(after)
    chex.assert_trees_all_equal(jax.tree.unflatten(treedef, leaves).algorithm_state, after.algorithm_state)


def test_handed_in_algorithm_state_is_checked(mlp):
    algo = example_algorithm.averaged_growth(0.8, update_every=3, end_step=30)
    masks = algo.init_masks(mlp, jax.random.key(0))
    bad = jax.tree.map(lambda p: jnp.zeros(p.shape[:1]), mlp)
    with pytest.raises(ValueError, match=r"algorithm state at 'layer_0/kernel' has shape \(12,\)"):
        jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks=masks, algorithm_state=bad).init(mlp)
    with pytest.raises(ValueError, match="algorithm state handed in does not match"):
        jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks=masks, algorithm_state=(1,)).init(mlp)


# ----- handed-in masks --------------------------------------------------------------------------


def test_handed_in_masks_are_used_and_checked(mlp, batch):
    algo = jsp.rigl(0.8, update_every=2, end_step=10)
    masks = algo.init_masks(mlp, jax.random.key(42))
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks=masks)
    chex.assert_trees_all_equal(tx.init(mlp).masks, masks)
    _train(tx, mlp, batch, 3)
    wrong_count = {**masks, "layer_1": {"kernel": jnp.ones_like(masks["layer_1"]["kernel"]), "bias": None}}
    with pytest.raises(ValueError, match=r"'layer_1/kernel' has 512 active entries, but rigl's layout keeps exactly"):
        jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks=wrong_count).init(mlp)
    wrong_shape = {**masks, "layer_1": {"kernel": jnp.ones((3, 3), bool), "bias": None}}
    with pytest.raises(ValueError, match=r"mask at 'layer_1/kernel' has shape \(3, 3\).*expected a bool mask"):
        jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks=wrong_shape).init(mlp)
    dense_leaf = {**masks, "layer_1": {"kernel": masks["layer_1"]["kernel"], "bias": jnp.ones(16, bool)}}
    with pytest.raises(ValueError, match="'layer_1/bias' has a mask, but the layout keeps dense"):
        jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0), masks=dense_leaf).init(mlp)


# ----- structure: output channels end to end ----------------------------------------------------


@pytest.mark.parametrize("name", ["rigl", "top_kast"])  # every method at channels: tests/test_structure.py
def test_output_channel_structure_end_to_end(name, mlp, batch, tmp_path):
    algo = jsp.algorithms.lookup(name).make(0.5, update_every=2, end_step=6, distribution="uniform")
    algo = dataclasses.replace(algo, layout=dataclasses.replace(algo.layout, structure=OutputChannels()))
    if name == "top_kast":
        algo = dataclasses.replace(
            algo, backward_layout=dataclasses.replace(algo.backward_layout, structure=OutputChannels())
        )
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(0))
    params, state = _train(tx, mlp, batch, 7)
    stored = jax.tree.leaves(algo.forward_masks(state.masks))
    assert [m.shape for m in stored] == [(32,), (16,), (4,)]  # C bytes, not the kernel's size
    for plan, group_mask, mask, param in zip(
        [p for p in algo.plan(mlp) if p is not None], stored, _kernels(jsp.masks_of(state)), _kernels(params),
        strict=True,
    ):  # fmt: skip
        assert mask.shape == param.shape
        assert bool((mask == group_mask[None, :]).all())  # whole columns
        if name != "gradual_magnitude":
            assert int(group_mask.sum()) == plan.active
        if name != "top_kast":
            assert bool((param[:, ~group_mask] == 0).all())
    stats = jsp.layer_stats(params, state)
    assert stats[1].active == int(jsp.masks_of(state)["layer_0"]["kernel"].sum())
    ratio = jsp.inspection.inference_flops_ratio({"layer_0/kernel": 10, "layer_1/kernel": 10, "layer_2/kernel": 10},
                                                 state)  # fmt: skip
    assert 0 < ratio < 1
    # Checkpoints round-trip the group-level state, algorithm and plans included.
    from jaxsparse.training import Checkpoints

    with Checkpoints(tmp_path, keep=1) as checkpoints:
        checkpoints.save(7, {"opt": state}, {"step": 7})
        restored, _ = checkpoints.restore({"opt": jax.tree.map(jnp.zeros_like, state)})
    chex.assert_trees_all_equal(restored["opt"].masks, state.masks)
    assert restored["opt"].algorithm == algo


def test_structure_that_does_not_fit_a_leaf_names_it():
    layout = jsp.SparsityLayout(0.5, include=lambda name, leaf: True, structure=OutputChannels())
    with pytest.raises(ValueError, match=r"parameter 'b': output-channel structure needs a kernel of rank >= 2"):
        layout.plan({"w": jnp.ones((4, 4)), "b": jnp.ones(4)})


# ----- regularisers -----------------------------------------------------------------------------


def test_group_lasso_proximal_step_gives_exact_zero_groups(mlp, batch):
    lasso = GroupLasso(0.5, learning_rate=0.1)
    algo = jsp.static(0.25, structure=OutputChannels(), distribution="uniform", regularizer=lasso)
    params, state = _train(jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0)), mlp, batch, 20)
    zero_columns = sum(int((jnp.abs(k).sum(axis=0) == 0).sum()) for k in _kernels(params))
    pruned = sum(int((~m).sum()) for m in jax.tree.leaves(state.masks))
    assert zero_columns > pruned  # the proximal step zeroed whole groups beyond the masks'
    value = lasso.value(params, state.masks, algo.plan(params), 0)
    norms = sum(float(jnp.linalg.norm(k, axis=0).sum()) for k in _kernels(params))
    assert float(value) == pytest.approx(0.5 * norms, rel=1e-5)


def test_group_lasso_subgradient_matches_its_formula(mlp):
    algo = jsp.static(0.0, structure=OutputChannels())
    plans = algo.plan(mlp)
    grad = GroupLasso(0.3).gradient(mlp, None, plans, 0)
    kernel = mlp["layer_0"]["kernel"]
    np.testing.assert_allclose(
        grad["layer_0"]["kernel"], 0.3 * kernel / jnp.linalg.norm(kernel, axis=0)[None, :], rtol=1e-5
    )
    assert float(jnp.abs(grad["layer_0"]["bias"]).max()) == 0.0
    with pytest.raises(ValueError, match="group lasso needs groups, but leaf 'layer_0/kernel'"):
        GroupLasso(0.3).value(mlp, None, jsp.static(0.5).plan(mlp), 0)


# ----- finding the state, nested wrappers -------------------------------------------------------


def test_helpers_find_the_sparsify_state_inside_any_wrapper(mlp, batch):
    sparse = jsp.sparsify(optax.adam(1e-2), jsp.rigl(0.8, update_every=2, end_step=20), key=jax.random.key(0))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.MultiSteps(sparse, 1))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    step = jax.jit(make_train_step(tx))
    for _ in range(5):
        params, state = step(params, state, batch)
    masks = jsp.masks_of(state)
    for mask, param in zip(_kernels(masks), _kernels(params), strict=True):
        assert bool((param[~mask] == 0).all())
    inner = jsp.transform.find_sparsify_state(state)
    assert int(inner.step) == 5
    assert "sparsified" in jsp.summary(params, state)
    chex.assert_trees_all_equal(jsp.forward_params(params, state), jsp.forward_params(params, inner))
    with pytest.raises(ValueError, match="holds 2 sparsify states"):
        jsp.masks_of((inner, inner))


# ----- the defects fixed in the port ------------------------------------------------------------


def test_inner_counters_advance_on_skipped_steps_while_moments_stay(mlp, batch):
    algo = jsp.rigl(0.8, update_every=3, end_step=100, skip_optimizer_on_update=True)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(0))
    params, state = _train(tx, mlp, batch, 3)  # steps 0 (update, skipped), 1, 2
    before, old_masks = state.inner_state[0], jsp.masks_of(state)
    params, state = jax.jit(make_train_step(tx))(params, state, batch)  # step 3: an update, skipped
    after, new_masks = state.inner_state[0], jsp.masks_of(state)
    assert int(after.count) == 4  # every step counts, as the reference's global step does
    for layer in mlp:
        kept = old_masks[layer]["kernel"] & new_masks[layer]["kernel"]
        for moment in ("mu", "nu"):
            old, new = getattr(before, moment)[layer], getattr(after, moment)[layer]
            np.testing.assert_array_equal(new["kernel"][kept], old["kernel"][kept])
            np.testing.assert_array_equal(new["bias"], old["bias"])


def _recording(monkeypatch):
    """Records the key data of every key drawn from (``bits``, initializers) and split."""
    used = {"bits": [], "split": []}
    bits, split = jax.random.bits, jax.random.split

    def record(kind, key):
        used[kind].append(tuple(np.asarray(jax.random.key_data(key)).ravel().tolist()))

    def spy_bits(key, *args, **kwargs):
        record("bits", key)
        return bits(key, *args, **kwargs)

    def spy_split(key, *args, **kwargs):
        record("split", key)
        return split(key, *args, **kwargs)

    monkeypatch.setattr(jax.random, "bits", spy_bits)
    monkeypatch.setattr(jax.random, "split", spy_split)
    return used, record


def test_random_masks_draw_scores_and_tie_seeds_from_different_keys(monkeypatch, mlp):
    used, _ = _recording(monkeypatch)
    with jax.disable_jit():
        jsp.static(0.8).init_masks(mlp, jax.random.key(0))
    assert len(used["bits"]) == 2 * 3
    assert len(set(used["bits"])) == len(used["bits"])


def test_grow_init_keys_are_not_the_rules_layer_keys(monkeypatch, mlp, batch):
    grown_keys = []

    def init(key, shape, dtype):
        grown_keys.append(tuple(np.asarray(jax.random.key_data(key)).ravel().tolist()))
        return jnp.full(shape, 0.01, dtype)

    algo = jsp.rigl(0.8, update_every=1, end_step=10, grow_init=init)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    state = tx.init(mlp)
    params = jsp.apply_masks(mlp, jsp.masks_of(state))
    used, _ = _recording(monkeypatch)
    with jax.disable_jit():
        make_train_step(tx)(params, state, batch)
    assert grown_keys and used["split"]
    assert not set(grown_keys) & set(used["split"])
    assert not set(grown_keys) & set(used["bits"])
