"""Sparse training across devices: pmap, jit over a mesh (automatic and explicit axes), global selection.

Every test runs on the 8 CPU devices that ``tests/conftest.py`` asks XLA for, and compares against
the same run on one device: same key, same global batch. Float reductions may differ in order, so
params are compared with a tolerance, while masks (scores here have no ties) must agree exactly.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsparse as jsp
from jaxsparse.distributed import assert_replicas_equal, replicas_agree, replicate, state_shardings, unreplicate
from tests.helpers import make_batch, make_mlp, make_train_step, mlp_loss

SIZES = (24, 64, 32, 8)
GLOBAL_BATCH = 32
STEPS = 7  # mask updates at steps 2, 4 and 6

ALGORITHMS = {
    "rigl": lambda: jsp.rigl(sparsity=0.8, update_every=2, end_step=STEPS, drop_fraction=0.3),
    "set": lambda: jsp.set_(sparsity=0.8, update_every=2, end_step=STEPS, drop_fraction=0.3),
    "top_kast": lambda: jsp.top_kast(forward_sparsity=0.8, backward_sparsity=0.6, update_every=2, end_step=STEPS),
    "gradual_magnitude_global": lambda: jsp.gradual_magnitude(
        sparsity=0.8, begin_step=0, end_step=STEPS, update_every=2, scope="global"
    ),
}


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    chex.clear_trace_counter()  # step functions are redefined per test and may reuse an id


def _batches():
    return [make_batch(jax.random.key(100 + t), GLOBAL_BATCH, SIZES[0], SIZES[-1]) for t in range(STEPS)]


def _tx(algorithm):
    return jsp.sparsify(optax.sgd(0.2, momentum=0.9), algorithm, key=jax.random.key(7))


@functools.cache
def _single_device_run(name):
    """The reference: the same training on one device, with the whole batch."""
    algorithm = ALGORITHMS[name]()
    tx = _tx(algorithm)
    params = make_mlp(jax.random.key(0), SIZES)
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = jax.jit(make_train_step(tx))
    for batch in _batches():
        params, state = step(params, state, batch)
    return params, state


def _check_sparse(params, state, algorithm):
    """Exact per-layer counts, and exact zeros off the mask in the weights the forward pass uses."""
    for plan, mask, param in zip(
        algorithm.plan(params),
        jax.tree.leaves(jsp.masks_of(state), is_leaf=lambda x: x is None),
        jax.tree.leaves(jsp.forward_params(params, state)),
        strict=True,
    ):
        if plan is None:
            continue
        if getattr(algorithm, "scope", "layer") == "layer":
            assert int(np.asarray(mask).sum()) == plan.active
        assert not np.any(np.asarray(param)[~np.asarray(mask)]), "a weight is non-zero off the mask"


def _assert_same_run(params, state, reference_params, reference_state):
    chex.assert_trees_all_equal(jsp.masks_of(state), jsp.masks_of(reference_state))
    chex.assert_trees_all_close(params, reference_params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(state.inner_state, reference_state.inner_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_pmap_replicas_agree_and_match_single_device(name):
    algorithm = ALGORITHMS[name]()
    tx = _tx(algorithm)
    n = jax.local_device_count()
    assert n == 8, "tests/conftest.py should give 8 CPU devices"
    params = make_mlp(jax.random.key(0), SIZES)
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    params, state = replicate((params, state), axis_name="batch")

    def step(params, state, batch):
        grads = jax.grad(mlp_loss)(jsp.forward_params(params, state), batch)
        grads = jax.lax.pmean(grads, "batch")  # the only cross-replica step a data-parallel loop needs
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return params, state, replicas_agree((jsp.masks_of(state), params), "batch")

    step = jax.pmap(chex.assert_max_traces(step, n=1), axis_name="batch")
    for x, y in _batches():
        params, state, agree = step(params, state, (x.reshape(n, -1, SIZES[0]), y.reshape(n, -1)))
        assert np.all(np.asarray(agree))
    assert_replicas_equal((params, state), stacked=True)
    params, state = unreplicate(params), unreplicate(state)
    _check_sparse(params, state, algorithm)
    _assert_same_run(params, state, *_single_device_run(name))


def test_replicas_agree_detects_a_diverged_replica():
    masks = replicate({"w": jnp.arange(16).reshape(4, 4) % 3 == 0}, axis_name="r")
    broken = {"w": masks["w"].at[5, 1, 2].set(~masks["w"][5, 1, 2])}
    agree = jax.pmap(lambda m: replicas_agree(m, "r"), axis_name="r")
    assert np.all(np.asarray(agree(masks)))
    assert not np.any(np.asarray(agree(broken)))
    with pytest.raises(AssertionError, match=r"\['w'\] differs between replicas"):
        assert_replicas_equal(broken, stacked=True)


def _mesh(axis_type):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type, axis_type))


MODEL_PARALLEL = {  # Megatron-style: columns of the first kernel, rows of the second
    "layer_0": {"kernel": P(None, "model"), "bias": P("model")},
    "layer_1": {"kernel": P("model", None), "bias": P()},
    "layer_2": {"kernel": P(), "bias": P()},
}
DATA_PARALLEL = jax.tree.map(lambda _: P(), MODEL_PARALLEL, is_leaf=lambda x: isinstance(x, P))


def _all_gathered_shapes(compiled_text: str) -> list[tuple[int, ...]]:
    shapes = re.findall(r"= \w+\[([\d,]*)\]\S* all-gather\(", compiled_text)
    return [tuple(int(d) for d in s.split(",") if d) for s in shapes]


def _sharded_run(algorithm, specs, axis_type):
    """Trains on the mesh; returns params, state, the step's compiled HLO and the state shardings."""
    mesh = _mesh(axis_type)
    tx = _tx(algorithm)
    to_sharding = lambda spec: NamedSharding(mesh, spec)
    param_shardings = jax.tree.map(to_sharding, specs, is_leaf=lambda x: isinstance(x, P))
    batch_sharding = (to_sharding(P("data", None)), to_sharding(P("data")))
    with jax.set_mesh(mesh):
        params = jax.device_put(make_mlp(jax.random.key(0), SIZES), param_shardings)
        shardings = state_shardings(jax.eval_shape(tx.init, params), params, param_shardings)
        state = jax.jit(tx.init, out_shardings=shardings)(params)
        params = jax.jit(jsp.apply_masks, out_shardings=param_shardings)(params, jsp.masks_of(state))
        step = chex.assert_max_traces(make_train_step(tx), n=1)
        step = jax.jit(step, out_shardings=(param_shardings, shardings), donate_argnums=(0, 1))
        compiled = step.lower(params, state, jax.device_put(_batches()[0], batch_sharding)).compile().as_text()
        for batch in _batches():
            params, state = step(params, state, jax.device_put(batch, batch_sharding))
            for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True):
                assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    return params, state, compiled


@pytest.mark.parametrize(
    "name, specs",
    [
        ("rigl", MODEL_PARALLEL),
        ("rigl", DATA_PARALLEL),
        ("set", MODEL_PARALLEL),
        ("top_kast", MODEL_PARALLEL),
        ("gradual_magnitude_global", MODEL_PARALLEL),
    ],
    ids=[
        "rigl-model_parallel",
        "rigl-data_parallel",
        "set-model_parallel",
        "top_kast-model_parallel",
        "global-model_parallel",
    ],
)
def test_mesh_training_keeps_shardings_and_matches_single_device(name, specs):
    algorithm = ALGORITHMS[name]()
    params, state, compiled = _sharded_run(algorithm, specs, AxisType.Auto)
    _check_sparse(params, state, algorithm)
    _assert_same_run(params, state, *_single_device_run(name))
    assert_replicas_equal((params, state))
    sharded_kernels = [(SIZES[0], SIZES[1]), (SIZES[1], SIZES[2])] if specs is MODEL_PARALLEL else []
    for shape in sharded_kernels:
        assert shape not in _all_gathered_shapes(compiled), f"the step all-gathers a sharded {shape} kernel"


def test_sharded_selection_communicates_histograms_not_kernels():
    """A column-sharded kernel's top-k compiles to all-reduces of histograms, no all-gather."""
    mesh = _mesh(AxisType.Auto)
    scores = jax.device_put(jax.random.normal(jax.random.key(0), (512, 256)), NamedSharding(mesh, P("data", "model")))
    select = jax.jit(lambda s: jsp.top_k_mask(s, 10_000, tie_seed=1))
    compiled = select.lower(scores).compile().as_text()
    assert "all-gather" not in compiled
    assert "all-reduce" in compiled
    mask = select(scores)
    assert int(mask.sum()) == 10_000
    chex.assert_trees_all_equal(mask, jsp.top_k_mask(np.asarray(scores), 10_000, tie_seed=1))


def test_explicit_axes_keep_the_param_sharding_in_every_type():
    """With explicit mesh axes (jax.make_mesh's default) shardings are types: init and update keep them."""
    name = "set"
    algorithm = ALGORITHMS[name]()
    specs = {**DATA_PARALLEL, "layer_0": {"kernel": P(None, "model"), "bias": P("model")}}
    mesh = _mesh(AxisType.Explicit)
    tx = _tx(algorithm)
    param_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))
    with jax.set_mesh(mesh):
        params = jax.device_put(make_mlp(jax.random.key(0), SIZES), param_shardings)
        state = jax.jit(tx.init)(params)  # no out_shardings: the types carry them
        expected = state_shardings(state, params, specs)
        step = jax.jit(make_train_step(tx))
        for batch in _batches():
            batch = jax.device_put(batch, (NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P("data"))))
            params, state = step(params, state, batch)
        for leaf, spec in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
            assert leaf.sharding.is_equivalent_to(NamedSharding(mesh, spec), leaf.ndim)
    _check_sparse(params, state, algorithm)
    _assert_same_run(params, state, *_single_device_run(name))


def test_state_shardings_rejects_a_tree_unlike_the_params():
    params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
    tx = _tx(jsp.static(0.5))
    with pytest.raises(ValueError, match="param_shardings does not match params"):
        state_shardings(jax.eval_shape(tx.init, params), params, {"w": P("model")})


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto_pinned", "explicit"])
def test_a_step_returns_params_and_state_with_the_shardings_they_came_in_with(axis_type):
    """The README's recipe: pin ``out_shardings`` to the inputs' under automatic axes; explicit axes need nothing.

    Unpinned, automatic propagation returns ``layer_1``'s replicated ``P()`` kernel sharded as
    ``P('model',)`` (a dense optax step drifts alike); the last assertion names that leaf.
    """
    algorithm = ALGORITHMS["rigl"]()
    mesh = _mesh(axis_type)
    tx = _tx(algorithm)
    specs = {**DATA_PARALLEL, "layer_0": {"kernel": P(None, "model"), "bias": P("model")}}
    param_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))
    batch_sharding = (NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P("data")))
    with jax.set_mesh(mesh):
        params = jax.device_put(make_mlp(jax.random.key(0), SIZES), param_shardings)
        state = jax.jit(
            tx.init, out_shardings=state_shardings(jax.eval_shape(tx.init, params), params, param_shardings)
        )(params)
        given = jax.tree.map(lambda x: x.sharding, (params, state))
        pinned = {} if axis_type == AxisType.Explicit else {"out_shardings": given}
        step = jax.jit(make_train_step(tx), **pinned)
        for batch in _batches()[:3]:  # a normal step and a mask update
            params, state = step(params, state, jax.device_put(batch, batch_sharding))
        for leaf, sharding in zip(jax.tree.leaves((params, state)), jax.tree.leaves(given), strict=True):
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (leaf.shape, leaf.sharding, sharding)
    assert params["layer_1"]["kernel"].sharding.is_fully_replicated
    _check_sparse(params, state, algorithm)
