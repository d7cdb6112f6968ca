"""Conformance matrix: ``jsp.sparsify(inner, algo, key=...)`` works with any optax optimizer.

For every (optimizer, algorithm) pair a small MLP is trained for a few jitted steps, and after
every step we check that

* parameters are exactly ``+0`` off the forward mask (masked algorithms: off ``masks_of(state)``;
  Top-KAST: the *forward* params are 0 off ``A`` and stored weights outside ``B`` do not move),
* the per-layer active counts never change from those right after ``init``,
* after a mask-update step every parameter-shaped optimizer slot of a kernel is exactly 0 at the
  newly grown positions (slots are found by an independent walk over the inner state),
* the jitted step compiled exactly once, across normal and mask-update steps.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as jsp
from jaxsparse.masks import MaskPair

SIZES = (8, 16, 4)
N_STEPS = 6
# Mask updates at steps 2 and 4; steps 0, 1, 3, 5 are normal steps. So the run covers two normal
# steps, then a mask update, then normal steps again (one compilation must serve all of them), and
# optimizer moments are non-trivial before the first update.
BEGIN, EVERY, END = 2, 2, 10_000


@pytest.fixture(autouse=True)
def _fast_compiles():
    """Compile with most XLA optimisations off: ~40% faster compiles of these tiny programs.

    Every assertion here is about exact zeros, masks and dtypes, which fusion cannot change.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# --------------------------------------------------------------------------------------------
# Helpers (written independently of jaxsparse internals).
# --------------------------------------------------------------------------------------------


def make_mlp(key, sizes=SIZES, dtype=jnp.float32):
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, k_w, k_b = jax.random.split(key, 3)
        params[f"layer_{i}"] = {
            "kernel": (jax.random.normal(k_w, (n_in, n_out)) / math.sqrt(n_in)).astype(dtype),
            "bias": (0.1 * jax.random.normal(k_b, (n_out,))).astype(dtype),
        }
    return params


def mlp_apply(params, x):
    n = len(params)
    for i in range(n):
        layer = params[f"layer_{i}"]
        x = x @ layer["kernel"] + layer["bias"][None, :]
        if i < n - 1:
            x = jnp.tanh(x)
    return x


def make_data(key, sizes=SIZES, batch=32, dtype=jnp.float32):
    k_x, k_y = jax.random.split(key)
    x = jax.random.normal(k_x, (batch, sizes[0]), dtype)
    y = jax.random.normal(k_y, (batch, sizes[-1]), dtype)
    return x, y


def kernel_paths(params):
    """Key paths and shapes of the rank >= 2 leaves (the ones the default filter sparsifies)."""
    return [(path, leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(params) if leaf.ndim >= 2]


def leaf_at(tree, path, is_leaf=None):
    for p, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf):
        if p == path:
            return leaf
    raise KeyError(jax.tree_util.keystr(path))


def mask_at(masks, path):
    return leaf_at(masks, path, is_leaf=lambda x: x is None)


def moment_leaves(inner_state, param_path, shape):
    """Every optimizer-state leaf that is a per-parameter slot of the parameter at ``param_path``.

    A slot has the parameter's shape and a key path ending with the parameter's key path
    (``mu['layer_0']['kernel']``, ``inner_opt_state[0].nu['layer_0']['kernel']``, ...).
    """
    n = len(param_path)
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(inner_state):
        if not hasattr(leaf, "shape") or tuple(leaf.shape) != tuple(shape):
            continue
        if len(path) >= n and tuple(path[len(path) - n :]) == tuple(param_path):
            found.append((jax.tree_util.keystr(path), leaf))
    return found


def active_counts(masks):
    """``{path: number of True}`` for every masked leaf."""
    return {
        jax.tree_util.keystr(path): int(np.asarray(m).sum())
        for path, m in jax.tree_util.tree_leaves_with_path(masks, is_leaf=lambda x: x is None)
        if m is not None
    }


def assert_exact_plus_zero_off_mask(params, masks):
    """Off the mask, params are bit-exactly ``+0`` (not merely small, not ``-0``)."""
    checked = 0
    for (path, p), m in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(masks, is_leaf=lambda x: x is None),
        strict=True,
    ):
        if m is None:
            continue
        p, m = np.asarray(p.astype(jnp.float32)), np.asarray(m)
        off = p[~m]
        assert np.all(off == 0), f"{jax.tree_util.keystr(path)}: {np.count_nonzero(off)} nonzero weights off mask"
        assert not np.any(np.signbit(off)), f"{jax.tree_util.keystr(path)}: -0 off mask"
        checked += 1
    assert checked > 0


def make_step(tx, loss_fn):
    def step(params, state, batch):
        def objective(p):
            return loss_fn(jsp.forward_params(p, state), batch)

        loss, grads = jax.value_and_grad(objective)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates, loss

    # assert_max_traces raises on a second trace; _cache_size() is checked after the run too.
    # chex keys its counter by the function's source and definition stack, which every test
    # shares, so start each new step function from a clean counter.
    chex.clear_trace_counter()
    return jax.jit(chex.assert_max_traces(step, n=1))


def mse(params, batch):
    x, y = batch
    return jnp.mean((mlp_apply(params, x) - y) ** 2)


# --------------------------------------------------------------------------------------------
# The matrix.
# --------------------------------------------------------------------------------------------


def only_kernels(params):
    return jax.tree.map(lambda x: x.ndim >= 2, params)


# name -> (factory, number of parameter-shaped slots per kernel)
OPTIMIZERS = {
    "sgd": (lambda: optax.sgd(1e-2), 0),
    "sgd_momentum": (lambda: optax.sgd(1e-2, momentum=0.9), 1),
    "sgd_nesterov": (lambda: optax.sgd(1e-2, momentum=0.9, nesterov=True), 1),
    "adam": (lambda: optax.adam(1e-2), 2),
    # Decoupled weight decay adds -lr * wd * theta everywhere: it must not revive pruned weights.
    "adamw": (lambda: optax.adamw(1e-2, weight_decay=0.1), 2),
    "rmsprop": (lambda: optax.rmsprop(1e-2), 1),
    # Adagrad's accumulator starts at 0.1 everywhere, so off-mask slots are *not* zero before
    # growth: this is the optimizer where the reset is observable.
    "adagrad": (lambda: optax.adagrad(1e-2), 1),
    "lion": (lambda: optax.lion(1e-3), 1),
    "lamb": (lambda: optax.lamb(1e-2), 2),
    "lars": (lambda: optax.lars(1e-2), 1),
    # Adafactor with min_dim_size_to_factor=4 factors both kernels (8x16, 16x4): its second
    # moment is kept as v_row (shape (rows,)) and v_col (shape (cols,)) plus a (1,) placeholder
    # v. Those are row/column statistics shared by many weights, not parameter-shaped, so they are
    # NOT reset when a weight grows (and the helper does not find them). The momentum EMA
    # (momentum=0.9) is parameter-shaped and IS reset: that is the one slot asserted here.
    "adafactor": (lambda: optax.adafactor(1e-2, min_dim_size_to_factor=4, momentum=0.9), 1),
    # Default adafactor on these small kernels is unfactored: v is parameter-shaped and reset.
    "adafactor_unfactored": (lambda: optax.adafactor(1e-2), 1),
    "inject_hyperparams_adam": (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), 2),
    # mu, nu of the inner adam plus MultiSteps' accumulated gradients.
    "multisteps_adam": (lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2), 3),
    "masked_adam": (lambda: optax.masked(optax.adam(1e-2), only_kernels), 2),
    "clip_adamw": (lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2)), 2),
}

ALGORITHMS = {
    "rigl": lambda: jsp.rigl(0.6, update_every=EVERY, begin_step=BEGIN, end_step=END, drop_fraction=0.5),
    "set": lambda: jsp.set_(0.6, update_every=EVERY, begin_step=BEGIN, end_step=END, drop_fraction=0.5),
    "static": lambda: jsp.static(0.6),
    # skip_optimizer_on_update=True so that grown slots are still exactly 0 right after the update.
    "top_kast": lambda: jsp.top_kast(
        0.7, 0.4, update_every=EVERY, begin_step=BEGIN, end_step=END, skip_optimizer_on_update=True
    ),
    # The paper's default: recompute every step and take the optimizer step too.
    "top_kast_default": lambda: jsp.top_kast(0.7, 0.4),
}

# Every optimizer with both drop-and-grow algorithms; static and Top-KAST on a subset chosen to
# cover momentum, decoupled decay, a non-zero initial accumulator and each wrapper kind.
CASES = (
    [(o, a) for o in OPTIMIZERS for a in ("rigl", "set")]
    + [(o, "static") for o in ("sgd_momentum", "adamw", "adagrad", "multisteps_adam", "masked_adam")]
    + [(o, "top_kast") for o in ("adamw", "adagrad", "multisteps_adam", "clip_adamw")]
    + [(o, "top_kast_default") for o in ("adam", "masked_adam")]
)


def run_and_check(opt_name, algo_name, n_steps=N_STEPS):
    make_opt, n_slots = OPTIMIZERS[opt_name]
    algo = ALGORITHMS[algo_name]()
    if opt_name.startswith("multisteps") and algo.skip_optimizer_on_update:
        # sparsify(MultiSteps(...)) refuses skipped steps, which would drop micro-batches
        # (tests/test_multisteps.py); the slots are still found and reset.
        algo = dataclasses.replace(algo, skip_optimizer_on_update=False)
    tx = jsp.sparsify(make_opt(), algo, key=jax.random.key(1))
    params = make_mlp(jax.random.key(0))
    batch = make_data(jax.random.key(2))
    state = tx.init(params)
    is_pair = isinstance(state.masks, MaskPair)
    if not is_pair:
        params = jsp.apply_masks(params, jsp.masks_of(state))

    kernels = kernel_paths(params)
    assert len(kernels) == 2
    fwd_counts0 = active_counts(jsp.masks_of(state))
    assert set(fwd_counts0) == {jax.tree_util.keystr(p) for p, _ in kernels}
    trainable0 = state.masks.backward if is_pair else state.masks
    train_counts0 = active_counts(trainable0)
    # The slot finder must find exactly the slots this optimizer keeps (else the check is vacuous).
    for path, shape in kernels:
        assert len(moment_leaves(state.inner_state, path, shape)) == n_slots, opt_name

    if algo.schedule is not None:
        schedule = [bool(algo.is_update_step(t)) for t in range(n_steps)]
        if algo.schedule.update_every == EVERY:
            assert schedule == [False, False, True, False, True, False]
        else:
            assert all(schedule)

    step = make_step(tx, mse)
    grown_total = 0
    losses = []
    for t in range(n_steps):
        old_params, old_state = params, state
        is_update = bool(algo.is_update_step(t))
        params, state, updates, loss = step(params, state, batch)
        losses.append(float(loss))
        assert int(state.step) == t + 1

        # Structure and dtypes are preserved.
        chex.assert_trees_all_equal_shapes_and_dtypes(params, old_params)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, old_params)

        fwd = jsp.masks_of(state)
        trainable = state.masks.backward if is_pair else state.masks
        old_trainable = old_state.masks.backward if is_pair else old_state.masks

        # Exact counts, every step.
        assert active_counts(fwd) == fwd_counts0, (opt_name, algo_name, t)
        assert active_counts(trainable) == train_counts0, (opt_name, algo_name, t)
        if not is_update:
            chex.assert_trees_all_equal(state.masks, old_state.masks)

        if is_pair:
            # Forward params are exactly +0 off A; A is inside B; weights outside B never move.
            assert_exact_plus_zero_off_mask(jsp.forward_params(params, state), fwd)
            for path, _ in kernels:
                a, b = np.asarray(mask_at(fwd, path)), np.asarray(mask_at(trainable, path))
                assert not np.any(a & ~b)
                new_p, old_p = np.asarray(leaf_at(params, path)), np.asarray(leaf_at(old_params, path))
                np.testing.assert_array_equal(new_p[~b], old_p[~b])
        else:
            assert_exact_plus_zero_off_mask(params, fwd)
            # The weights the optimizer produced never exceed the mask.
            for path, _ in kernels:
                assert (
                    int(np.count_nonzero(np.asarray(leaf_at(params, path)))) <= fwd_counts0[jax.tree_util.keystr(path)]
                )

        if is_update and algo.skip_optimizer_on_update:
            # No optimizer step was taken, so every kernel slot must be exactly its old value
            # with the positions whose mask changed reset to a fresh optimizer's value (0 for
            # moments, 0.1 for adagrad's accumulator), untouched wherever the mask did not change.
            fresh_state = make_opt().init(params)
            for path, shape in kernels:
                old_m, new_m = np.asarray(mask_at(old_trainable, path)), np.asarray(mask_at(trainable, path))
                grown = new_m & ~old_m
                grown_total += int(grown.sum())
                new_slots = moment_leaves(state.inner_state, path, shape)
                old_slots = moment_leaves(old_state.inner_state, path, shape)
                assert [w for w, _ in new_slots] == [w for w, _ in old_slots]
                fresh_slots = moment_leaves(fresh_state, path, shape)
                for (where, slot), (_, old_slot), (_, fresh) in zip(new_slots, old_slots, fresh_slots, strict=True):
                    slot, old_slot, fresh = np.asarray(slot), np.asarray(old_slot), np.asarray(fresh)
                    assert np.all(slot[grown] == fresh[grown]), f"{opt_name}/{algo_name} step {t}: {where} not reset"
                    np.testing.assert_array_equal(slot, np.where(old_m != new_m, fresh, old_slot), err_msg=where)

    if algo_name in ("rigl", "set") and algo.skip_optimizer_on_update:
        assert grown_total > 0, "no weight was grown: the slot-reset check was vacuous"
    assert all(np.isfinite(losses))
    # One compilation for normal and mask-update steps alike.
    assert step._cache_size() == 1
    return params, state


@pytest.mark.parametrize(("opt_name", "algo_name"), CASES, ids=[f"{o}-{a}" for o, a in CASES])
def test_sparsify_conformance(opt_name, algo_name):
    run_and_check(opt_name, algo_name)


def test_training_reduces_loss_with_adam_rigl():
    """Sanity: the wrapped optimizer actually trains (loss goes down) while staying sparse."""
    tx = jsp.sparsify(optax.adam(3e-2), ALGORITHMS["rigl"](), key=jax.random.key(1))
    params = make_mlp(jax.random.key(0))
    batch = make_data(jax.random.key(2))
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = make_step(tx, mse)
    first = float(mse(params, batch))
    for _ in range(30):
        params, state, _, _ = step(params, state, batch)
    assert float(mse(params, batch)) < first
    assert_exact_plus_zero_off_mask(params, jsp.masks_of(state))


def test_adamw_decay_does_not_revive_pruned_weights():
    """Strong decoupled decay + dense (unmasked) starting params: off-mask weights end at +0."""
    tx = jsp.sparsify(optax.adamw(0.5, weight_decay=10.0), jsp.static(0.8), key=jax.random.key(3))
    params = make_mlp(jax.random.key(4))  # deliberately NOT projected onto the mask first
    batch = make_data(jax.random.key(5))
    state = tx.init(params)
    step = make_step(tx, mse)
    for _ in range(3):
        params, state, updates, _ = step(params, state, batch)
        assert_exact_plus_zero_off_mask(params, jsp.masks_of(state))
    # Dense leaves (biases) still train: the wrapper did not freeze them.
    assert not np.allclose(
        np.asarray(params["layer_0"]["bias"]), np.asarray(make_mlp(jax.random.key(4))["layer_0"]["bias"])
    )


def test_slots_get_fresh_gradient_when_optimizer_runs_on_update():
    """skip_optimizer_on_update=False: grown slots are reset, then see exactly one gradient.

    With SGD momentum the fresh trace after one step is exactly the (restricted) gradient, so at
    grown positions ``trace == grad`` and nowhere there a stale value survives.
    """
    algo = jsp.rigl(0.6, update_every=2, begin_step=1, end_step=100, drop_fraction=0.5, skip_optimizer_on_update=False)
    tx = jsp.sparsify(optax.sgd(1e-2, momentum=0.9), algo, key=jax.random.key(0))
    params = make_mlp(jax.random.key(0))
    batch = make_data(jax.random.key(1))
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = make_step(tx, mse)
    params, state, _, _ = step(params, state, batch)  # step 0: normal
    old_masks = jsp.masks_of(state)
    grads = jax.grad(lambda p: mse(jsp.forward_params(p, state), batch))(params)
    params, state, _, _ = step(params, state, batch)  # step 1: mask update + optimizer step
    new_masks = jsp.masks_of(state)
    n_grown = n_dropped = 0
    for path, shape in kernel_paths(params):
        old_m, new_m = np.asarray(mask_at(old_masks, path)), np.asarray(mask_at(new_masks, path))
        grown, dropped = new_m & ~old_m, old_m & ~new_m
        n_grown, n_dropped = n_grown + int(grown.sum()), n_dropped + int(dropped.sum())
        ((_, trace),) = moment_leaves(state.inner_state, path, shape)
        trace = np.asarray(trace)
        np.testing.assert_allclose(trace[grown], np.asarray(leaf_at(grads, path))[grown], rtol=1e-6)
        # Dropped weights lose their momentum (reset, and no gradient reaches them any more).
        np.testing.assert_array_equal(trace[dropped], 0)
    assert n_grown > 0 and n_dropped > 0


# adafactor(momentum=0.9) keeps its momentum in float32 and so returns float32 updates for
# bfloat16 params: the wrapper must still hand back bfloat16 updates (and must trace at all).
BF16_CASES = [("adam", "rigl"), ("sgd_momentum", "top_kast"), ("adafactor", "rigl"), ("adafactor", "top_kast")]


@pytest.mark.parametrize(("opt_name", "algo_name"), BF16_CASES, ids=[f"{o}-{a}" for o, a in BF16_CASES])
def test_bfloat16_params_stay_bfloat16(opt_name, algo_name):
    tx = jsp.sparsify(OPTIMIZERS[opt_name][0](), ALGORITHMS[algo_name](), key=jax.random.key(0))
    params = make_mlp(jax.random.key(0), dtype=jnp.bfloat16)
    batch = make_data(jax.random.key(1), dtype=jnp.bfloat16)
    state = tx.init(params)
    is_pair = isinstance(state.masks, MaskPair)
    if not is_pair:
        params = jsp.apply_masks(params, jsp.masks_of(state))
    step = make_step(tx, mse)
    for _ in range(4):
        params, state, updates, _ = step(params, state, batch)
        for leaf in jax.tree.leaves(params) + jax.tree.leaves(updates):
            assert leaf.dtype == jnp.bfloat16
        for masks in (state.masks.forward, state.masks.backward) if is_pair else (state.masks,):
            leaves = [m for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None) if m is not None]
            assert leaves and all(m.dtype == jnp.bool_ for m in leaves)
        view = jsp.forward_params(params, state) if is_pair else params
        assert_exact_plus_zero_off_mask(view, jsp.masks_of(state))
    assert step._cache_size() == 1


@settings(max_examples=6, deadline=None, database=None)
@given(
    sparsity=st.floats(0.05, 0.95),
    drop_fraction=st.floats(0.0, 1.0),
    distribution=st.sampled_from(["uniform", "er", "erk"]),
    grow=st.sampled_from(["rigl", "set"]),
    opt_name=st.sampled_from(["adamw", "sgd_momentum", "adagrad", "lion"]),
)
def test_counts_and_zeros_hold_for_any_sparsity(sparsity, drop_fraction, distribution, grow, opt_name):
    """Every step is a mask update *and* an optimizer step here, at any sparsity and drop fraction."""
    factory = jsp.rigl if grow == "rigl" else jsp.set_
    algo = factory(
        sparsity,
        distribution=distribution,
        update_every=1,
        end_step=100,
        drop_fraction=drop_fraction,
        drop_fraction_decay="constant",
        skip_optimizer_on_update=False,
    )
    tx = jsp.sparsify(OPTIMIZERS[opt_name][0](), algo, key=jax.random.key(0))
    params = make_mlp(jax.random.key(0))
    batch = make_data(jax.random.key(1))
    state = tx.init(params)
    counts0 = active_counts(jsp.masks_of(state))
    sizes = {jax.tree_util.keystr(p): math.prod(shape) for p, shape in kernel_paths(params)}
    assert set(counts0) == set(sizes)
    if distribution == "uniform":
        # Exactly N - floor(S * N) active weights in every layer.
        assert counts0 == {k: n - math.floor(sparsity * n) for k, n in sizes.items()}
    else:
        # Non-uniform layouts move density between layers but keep the global budget (up to the
        # per-layer floors) and at least one weight per layer.
        total = sum(sizes.values())
        assert all(1 <= c <= sizes[k] for k, c in counts0.items())
        assert total * (1 - sparsity) - 1 <= sum(counts0.values()) <= total * (1 - sparsity) + 2 * len(sizes)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = make_step(tx, mse)
    for _ in range(3):
        params, state, _, _ = step(params, state, batch)
        assert active_counts(jsp.masks_of(state)) == counts0
        assert_exact_plus_zero_off_mask(params, jsp.masks_of(state))
    assert step._cache_size() == 1
