"""The flax models: shapes on every harness input, determinism, batch norm, layouts, one sparse step.

Compiling is what costs on CPU: every distinct parameter shape compiles its own random draw at
init, and every sparsified leaf its own exact selection in ``sparsify(...).init``. So:

* the checks over every input shape run the default (full-size) models on weights drawn with
  NumPy, which compile nothing but the forward pass;
* the layout checks read shapes only (``jax.eval_shape``), on the full-size models;
* real (jitted) initialisation, ``sparsify(...).init`` and the jitted training step run once per
  model on a small configuration of the same architecture, shared through a module fixture, with
  ``rbg`` keys: the models never look at the key's implementation, and RBG's generator compiles
  much faster than threefry on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from jaxsparse.models import MODELS, ViT, create_model

# The inputs the harness feeds: digits, MNIST-1D, MNIST / Fashion-MNIST, CIFAR-10.
INPUT_SHAPES = [(8, 8, 1), (40, 1), (28, 28, 1), (32, 32, 3)]
DIGITS = INPUT_SHAPES[0]
NUM_CLASSES = 10
BATCH = 3
# Small configurations of each architecture for the tests that compile per parameter leaf; the
# ResNet keeps a stride-2 stage, so the option-A shortcut with channel padding is exercised.
SMALL = {
    "mlp": dict(hidden_sizes=(16,)),
    "lenet300_100": {},
    "lenet5": {},
    "resnet20": dict(stage_sizes=(1, 1), widths=(4, 8)),
    "vit": dict(dim=8, depth=1, num_heads=2, mlp_dim=16),
}
# The first and last layers in network order, which dense_first_layer / dense_last_layer keep dense.
FIRST_LAST = {
    "mlp": ("Dense_0/kernel", "Dense_2/kernel"),
    "lenet300_100": ("Dense_0/kernel", "Dense_2/kernel"),
    "lenet5": ("Conv_0/kernel", "Dense_2/kernel"),
    "resnet20": ("input_conv/kernel", "output/kernel"),
    "vit": ("embedding/patches/kernel", "output/kernel"),
}


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _inputs(shape: tuple[int, ...], batch: int = BATCH, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, *shape)), jnp.float32)


def _abstract_variables(model, shape: tuple[int, ...]) -> dict:
    return jax.eval_shape(lambda: model.init(_key(0), jnp.zeros((1, *shape)), train=False))


def _numpy_variables(model, shape: tuple[int, ...]) -> dict:
    """Variables of the model's shapes, filled by NumPy: fan-in-scaled normal weights, unit BN stats."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = jsp.masks.leaf_name(path)
        if name.endswith("var") or name.endswith("scale"):
            return jnp.ones(leaf.shape, leaf.dtype)
        fan_in = math.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 1
        return jnp.asarray(rng.normal(size=leaf.shape) / math.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, shape))


def _names(tree) -> list[str]:
    return [jsp.masks.leaf_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


ALGORITHM = jsp.static(0.9)


@pytest.fixture(scope="module")
def small():
    """``small(name) -> (model, init, variables, tx, state)``, built once per model and shared.

    ``init(key)`` is the model's jitted initialisation on digits-shaped inputs (one compilation
    for every key, where running flax's init op by op compiles each random draw separately).
    """
    cache = {}

    def build(name):
        if name not in cache:
            model = create_model(name, num_classes=NUM_CLASSES, input_shape=DIGITS, **SMALL[name])
            init = jax.jit(lambda key: model.init(key, jnp.zeros((1, *DIGITS)), train=False))
            variables = init(_key(0))
            tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), ALGORITHM, key=_key(0))
            cache[name] = model, init, variables, tx, tx.init(variables["params"])
        return cache[name]

    return build


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_every_input(name, shape):
    model = create_model(name, num_classes=NUM_CLASSES, input_shape=shape)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(_numpy_variables(model, shape), _inputs(shape))
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    # Different examples give different logits: the output depends on the input.
    assert not np.allclose(logits[0], logits[1])


@pytest.mark.parametrize("name", MODELS)
def test_init_is_finite_and_deterministic_in_the_key(small, name):
    _, init, variables, _, _ = small(name)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(variables))
    jax.tree.map(np.testing.assert_array_equal, variables, init(_key(0)))
    other = init(_key(1))["params"]
    leaves = zip(_names(other), jax.tree.leaves(variables["params"]), jax.tree.leaves(other), strict=True)
    kernels = [(a, b) for leaf, a, b in leaves if leaf.endswith("kernel")]
    assert kernels and all(not np.array_equal(a, b) for a, b in kernels)


def test_resnet_updates_batch_stats_in_train_mode_only(small):
    model, _, variables, _, _ = small("resnet20")
    x = _inputs(DIGITS, batch=4)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, NUM_CLASSES)
    before, after = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
    assert len(before) == len(after) == 2 * 5  # mean and var of the stem's and 2 blocks' batch norms
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    # Evaluation reads the running averages and changes nothing.
    _, unchanged = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], unchanged["batch_stats"])
    # Train mode normalises with the batch's statistics, evaluation with the running ones.
    assert not np.allclose(logits, model.apply(variables, x, train=False))


def test_resnet20_is_the_papers_network():
    model = create_model("resnet20", num_classes=10, input_shape=(32, 32, 3))
    variables = _abstract_variables(model, (32, 32, 3))
    convs = [name for name in _names(variables["params"]) if name.endswith("conv_0/kernel") or "conv_1" in name]
    assert len(convs) + 2 == 20  # 18 convolutions in 9 blocks, plus the stem and the classifier
    assert len(jax.tree.leaves(variables["batch_stats"])) == 2 * 19
    # He et al. 2016, Table 6: 0.27M parameters (option A shortcuts carry none).
    assert round(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])) / 1e6, 2) == 0.27


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("lenet5", (64,), "channels-last"),
        ("resnet20", (4, 4, 4, 1), "channels-last"),
        ("vit", (28,), "channels-last"),
        ("lenet5", (3, 3, 1), "at least 4"),
        ("nope", (8, 8, 1), "unknown model"),
    ],
)
def test_unsupported_combinations_are_rejected(name, shape, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, num_classes=NUM_CLASSES, input_shape=shape)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("mlp", num_classes=0, input_shape=DIGITS)
    with pytest.raises(ValueError, match="patch_size=3"):
        create_model("vit", num_classes=10, input_shape=DIGITS, patch_size=3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        create_model("vit", num_classes=10, input_shape=DIGITS, dim=10)
    with pytest.raises(ValueError, match="must not decrease"):
        create_model("resnet20", num_classes=10, input_shape=DIGITS, widths=(16, 8, 4))


def test_options_override_defaults():
    model = create_model("mlp", num_classes=3, input_shape=(40, 1), hidden_sizes=(7,))
    assert _abstract_variables(model, (40, 1))["params"]["Dense_0"]["kernel"].shape == (40, 7)
    lenet = create_model("lenet300_100", num_classes=10, input_shape=(28, 28, 1))
    params = _abstract_variables(lenet, (28, 28, 1))["params"]
    assert [params[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [(784, 300), (300, 100), (100, 10)]


@pytest.mark.parametrize("shape, patch, tokens", [((8, 8, 1), 2, 16), ((40, 1), 2, 20), ((32, 32, 3), 4, 64)])
def test_vit_patches_follow_the_input(shape, patch, tokens):
    embedding = _abstract_variables(ViT(num_classes=10), shape)["params"]["embedding"]
    assert embedding["patches"]["kernel"].shape == (*(patch,) * (len(shape) - 1), shape[-1], 64)
    assert embedding["pos_embedding"].shape == (tokens, 64)


def _sparsified(plans) -> dict[str, jsp.masks.LayerPlan]:
    return {plan.name: plan for plan in plans if plan is not None}


@pytest.mark.parametrize("shape", [DIGITS, (32, 32, 3)], ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_default_layout_sparsifies_every_kernel_with_sane_erk_densities(name, shape):
    params = _abstract_variables(create_model(name, num_classes=NUM_CLASSES, input_shape=shape), shape)["params"]
    plans = _sparsified(jsp.rigl(sparsity=0.9, end_step=100).plan(params))
    names = _names(params)
    kernels = {n for n in names if n.endswith("kernel") or n.endswith("pos_embedding")}
    assert kernels <= set(plans)
    if name == "vit":  # the attention kernels (rank 3) and both embeddings are sparsified
        for part in ("query", "key", "value", "out"):
            assert f"layer_1/attention/{part}/kernel" in plans
        assert {"embedding/patches/kernel", "embedding/pos_embedding"} <= set(plans)
    for leaf_name, leaf in zip(names, jax.tree.leaves(params), strict=True):
        if leaf.ndim == 1:  # biases and norm scales stay dense
            assert leaf_name not in plans
    # Flax's attention biases have shape (heads, head_dim): rank 2, so the rank filter alone would
    # select them; the default filter excludes every bias by name.
    rank_2_biases = [
        n for n, leaf in zip(names, jax.tree.leaves(params), strict=True) if n.endswith("bias") and leaf.ndim == 2
    ]
    assert bool(rank_2_biases) == (name == "vit")
    assert not [n for n in names if n.endswith("bias") and n in plans]
    # ERK: the global budget is met, no layer is emptied, and density grows with the ERK score
    # sum(shape) / prod(shape) (Evci et al. 2020), so thin layers are denser than wide ones.
    zeros, size = sum(p.zeros for p in plans.values()), sum(p.size for p in plans.values())
    assert abs(zeros / size - 0.9) < 1e-3
    assert all(p.active >= 1 for p in plans.values())
    by_score = sorted(plans.values(), key=lambda p: sum(p.shape) / p.size)
    densities = [1 - p.sparsity for p in by_score]
    assert densities == sorted(densities) and densities[0] < densities[-1]
    # Network order is the names' natural order, so first/last-layer options pick the right layers.
    first, last = FIRST_LAST[name]
    edges = _sparsified(jsp.SparsityLayout(0.9, dense_first_layer=True, dense_last_layer=True).plan(params))
    assert {first, last}.isdisjoint(edges) and len(edges) == len(plans) - 2
    if name == "vit":
        kept = _sparsified(jsp.SparsityLayout(0.9, keep_dense=("pos_embedding",)).plan(params))
        assert set(kept) == set(plans) - {"embedding/pos_embedding"}


@pytest.mark.parametrize("name", MODELS)
def test_one_jitted_sparse_training_step(small, name):
    model, _, variables, tx, state = small(name)
    params = variables["params"]
    plans = _sparsified(ALGORITHM.plan(params))
    # Exact counts after init, on every kernel the layout chose.
    for stats in jsp.layer_stats(params, state):
        assert stats.active == (plans[stats.name].active if stats.name in plans else stats.size)
    assert {n for n in plans if n.endswith("kernel")} == {n for n in _names(params) if n.endswith("kernel")}

    params = jsp.apply_masks(params, jsp.masks_of(state))
    collections = {k: v for k, v in variables.items() if k != "params"}
    x, y = _inputs(DIGITS, batch=4), jnp.arange(4) % NUM_CLASSES

    def loss_fn(p, collections):
        variables = {"params": p, **collections}
        if collections:  # batch norm: train on batch statistics and return the updated averages
            logits, collections = model.apply(variables, x, train=True, mutable=list(collections))
        else:
            logits = model.apply(variables, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), collections

    @jax.jit
    def step(params, state, collections):
        (loss, collections), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            jsp.forward_params(params, state), collections
        )
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, collections, loss

    new_params, new_state, new_collections, loss = step(params, state, collections)
    assert np.isfinite(float(loss))
    masks = jax.tree.leaves(jsp.masks_of(new_state), is_leaf=lambda m: m is None)
    for leaf_name, new, mask in zip(_names(params), jax.tree.leaves(new_params), masks, strict=True):
        new = np.asarray(new)
        assert np.isfinite(new).all(), leaf_name
        if mask is not None:
            np.testing.assert_array_equal(new[~np.asarray(mask)], 0.0, err_msg=leaf_name)
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(new_params), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)  # the step trained
    if collections:  # and batch norm's running averages moved
        assert not np.allclose(jax.tree.leaves(collections)[0], jax.tree.leaves(new_collections)[0])
