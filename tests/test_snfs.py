"""SNFS (sparse momentum): the momentum, the prune step, the redistribution, regrowth, exact totals, structures.

Expected masks and counts are computed here with numpy from the documented rule, never with the
library's own selection.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxsparse as jsp
from jaxsparse.algorithms import SparseMomentumState, prune_count, regrowth_counts, snfs
from jaxsparse.masks import NM, Blocks, FanIn, OutputChannels
from tests.helpers import make_batch, make_mlp, make_train_step


def _state(params, momenta):
    return SparseMomentumState(jax.tree.map(jnp.asarray, momenta))


def _layout_masks(algo, mlp, rng):
    """Uniformly random masks of an MLP with exactly each plan's count (numpy, nothing to compile)."""
    masks = {}
    for layer, plan in zip(sorted(mlp), [p for p in algo.plan(mlp) if p is not None], strict=True):
        mask = np.zeros(plan.size, bool)
        mask[rng.permutation(plan.size)[: plan.active]] = True
        masks[layer] = {"kernel": jnp.asarray(mask.reshape(plan.mask_shape)), "bias": None}
    return masks


def _rate_from_step(step):
    """A prune-rate schedule that reads p from the step, so one compilation serves every rate.

    ``p = t / 1024`` is exact in float32, and so is ``p n``: XLA may reassociate ``(t / c) n``, which
    for other ``c`` moves ``ceil(p n)`` by one where ``p n`` is within rounding of an integer.
    """
    return jnp.asarray(step, jnp.float32) / 1024


_HAND = snfs(0.5, distribution="uniform", update_every=1, end_step=1024, prune_rate=_rate_from_step,
             prune_rate_decay="constant", layer_sparsity={"^c$": 0.0})  # fmt: skip
_HAND_UPDATE = jax.jit(_HAND.update_rule)
HALF, ONE = 512, 1024  # steps at which p = 0.5 and p = 1


def _two_layers(active_a: int, active_b: int):
    """Layers ``a`` (2 x 10) and ``b`` (10 x 10); the first ``active`` flat entries of each are on.

    ``|theta|`` grows with the flat index (distinct), so magnitude pruning keeps the highest indices
    of the active ones. Momentum: 3 on a's active entries, 1 on b's, and distinct values in
    ``(1.5, 2.5)`` on every inactive entry, so that the shares are exactly 3 : 1. A third layer
    ``c`` is dense by the layout (sparsity 0) and has no momentum: taking part, it would lose
    entries to the others; it must stay dense.
    """
    rng = np.random.default_rng(0)
    shapes = {"a": (2, 10), "b": (10, 10)}
    params, masks, momenta = {}, {}, {}
    for name, active in (("a", active_a), ("b", active_b)):
        size = math.prod(shapes[name])
        sign = rng.choice([-1.0, 1.0], size)
        params[name] = (sign * np.arange(1, size + 1) / size).reshape(shapes[name]).astype(np.float32)
        mask = np.arange(size) < active
        masks[name] = mask.reshape(shapes[name])
        m = rng.permutation(np.linspace(1.5, 2.5, size)) * rng.choice([-1.0, 1.0], size)
        m[mask] = 3.0 if name == "a" else -1.0
        momenta[name] = m.reshape(shapes[name]).astype(np.float32)
    params["c"], masks["c"], momenta["c"] = np.ones((4, 4), np.float32), np.ones((4, 4), bool), np.zeros((4, 4))
    return params, masks, momenta


def _expected_update(params, masks, momenta, rate, regrow):
    """numpy: keep the top n - ceil(p n) by |theta| of each layer, grow regrow[l] by |M| among the rest."""
    expected = {}
    for name, r in zip(("a", "b"), regrow, strict=True):
        w, m, mom = (np.asarray(x).ravel() for x in (params[name], masks[name], momenta[name]))
        active = np.flatnonzero(m)
        n_keep = active.size - min(math.ceil(rate * active.size), active.size - 1)
        kept = active[np.argsort(-np.abs(w[active]))[:n_keep]]
        rest = np.setdiff1d(np.arange(m.size), kept)
        grown = rest[np.argsort(-np.abs(mom[rest]))[:r]]
        new = np.zeros(m.size, bool)
        new[kept] = new[grown] = True
        expected[name] = new.reshape(masks[name].shape)
    return expected


@pytest.mark.parametrize(
    ("active_a", "active_b", "regrow"),
    [
        # 8 + 16 active, 4 + 8 pruned, shares 3 : 1 of 12: 9 and 3 (a has room for 16).
        (8, 16, (9, 3)),
        # a keeps 8 of 16: room 12 < 3/4 of 8 + 10 = 13.5, so a fills up and the 1.5 it cannot
        # take goes to b: 4.5 + 1.5 = 6.
        (16, 20, (12, 6)),
    ],
    ids=["proportional", "capacity_overflow"],
)
def test_hand_made_redistribution_prune_and_regrowth(active_a, active_b, regrow, fast_compiles):
    params, masks, momenta = _two_layers(active_a, active_b)
    new, _ = _HAND_UPDATE(params, masks, None, jnp.int32(HALF), jax.random.key(0), _state(params, momenta))
    expected = _expected_update(params, masks, momenta, 0.5, regrow)
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.asarray(new[name]), expected[name], err_msg=name)
    assert int(new["a"].sum()) + int(new["b"].sum()) == active_a + active_b  # the total is unchanged
    assert bool(new["c"].all())


def test_minimum_one_weight_per_layer_at_prune_rate_one(fast_compiles):
    """p = 1 prunes all but one entry per layer; a layer with no momentum keeps exactly its largest |theta|."""
    params, masks, momenta = _two_layers(16, 20)
    momenta["a"] = np.zeros_like(momenta["a"])  # share 0: a regrows nothing
    new, _ = _HAND_UPDATE(params, masks, None, jnp.int32(ONE), jax.random.key(0), _state(params, momenta))
    expected = _expected_update(params, masks, momenta, 1.0, (0, 15 + 19))
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.asarray(new[name]), expected[name], err_msg=name)
    assert int(new["a"].sum()) == 1 and bool(new["a"].ravel()[15])  # the largest |theta| of entries 0..15
    assert int(prune_count(1, 1.0)) == 0 and int(prune_count(0, 0.7)) == 0


_COMPILED_COUNTS = jax.jit(regrowth_counts)


def _regrowth_counts(shares, pruned, capacity) -> list[int]:
    """``regrowth_counts`` padded to 6 layers (full, nothing pruned), so every case shares one compilation."""
    pad = 6 - len(shares)
    shares, pruned, capacity = (np.concatenate([np.asarray(x), np.zeros(pad, np.asarray(x).dtype)])
                                for x in (shares, pruned, capacity))  # fmt: skip
    counts = _COMPILED_COUNTS(jnp.asarray(shares, jnp.float32), jnp.asarray(pruned), jnp.asarray(capacity))
    return np.asarray(counts)[: 6 - pad].tolist()


def test_regrowth_counts_numbers_and_reference():
    assert _regrowth_counts([3.0, 1.0], [8, 10], [12, 90]) == [12, 6]
    # Largest remainder: 10 split 1 : 1 : 1 is 3.33 each, the extra one to the lowest index.
    assert _regrowth_counts([1.0, 1.0, 1.0], [4, 3, 3], [50, 50, 50]) == [4, 3, 3]
    # No usable share (zeros, NaN): every layer regrows what it pruned.
    for shares in ([0.0, 0.0], [np.nan, 0.0]):
        assert _regrowth_counts(shares, [5, 2], [9, 9]) == [5, 2]
    # A NaN share counts as 0: its layer regrows nothing, the other takes everything.
    assert _regrowth_counts([np.nan, 2.0], [5, 2], [9, 9]) == [0, 7]


def _water_filling(shares, total, capacity):
    """float64 reference: x_l = min(c_l, lambda s_l) with sum x = total, lambda by bisection."""
    shares, capacity = np.asarray(shares, np.float64), np.asarray(capacity, np.float64)
    lo, hi = 0.0, 1.0
    while np.minimum(capacity, hi * shares).sum() < total:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(capacity, mid * shares).sum() < total else (lo, mid)
    return np.minimum(capacity, hi * shares)


@settings(max_examples=60, deadline=None, database=None)
@given(
    layers=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_regrowth_counts_are_exact_capped_and_within_one_of_water_filling(layers, seed):
    rng = np.random.default_rng(seed)
    on = np.arange(6) < layers  # always 6 layers (one compilation); the others are full and pruned nothing
    pruned = rng.integers(0, 50, 6) * on
    capacity = pruned + rng.integers(0, 60, 6) * on  # c_l >= d_l, so the total always fits
    shares = rng.random(6) * (rng.random(6) < 0.8)
    if not shares[on].any():
        shares[0] = 1.0
    counts = np.asarray(_COMPILED_COUNTS(jnp.asarray(shares, jnp.float32), jnp.asarray(pruned), jnp.asarray(capacity)))
    assert counts.sum() == pruned.sum()
    assert (counts >= 0).all() and (counts <= capacity).all()
    if capacity[shares > 0].sum() < pruned.sum():  # the layers with a share fill up, the rest take the remainder
        assert (counts[shares > 0] == capacity[shares > 0]).all()
        return
    reference = _water_filling(shares, pruned.sum(), capacity)
    assert (np.abs(counts - reference) < 1 + 1e-3).all(), (counts, reference)


_MLP = make_mlp(jax.random.key(0), (12, 32, 16, 4))
_GLOBAL = snfs(0.8, update_every=1, end_step=1024, prune_rate=_rate_from_step, prune_rate_decay="constant")
_GLOBAL_UPDATE = jax.jit(_GLOBAL.update_rule)


@settings(max_examples=10, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    densities=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
    steps=st.lists(st.integers(0, 1024), min_size=3, max_size=3),
    poison=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_global_count_is_exact_and_no_layer_falls_below_its_post_prune_count(
    densities, steps, poison, seed, fast_compiles
):
    """Any per-layer counts (not only the layout's), any rate: the total holds, no layer ends below its post-prune."""
    plans = [p for p in _GLOBAL.plan(_MLP) if p is not None]
    rng = np.random.default_rng(seed)
    masks = {k: {"kernel": rng.random(v["kernel"].shape) < d, "bias": None}
             for (k, v), d in zip(sorted(_MLP.items()), densities, strict=True)}  # fmt: skip
    for layer in masks:  # at least one active entry per layer, as every update leaves it
        masks[layer]["kernel"].flat[0] = True
    total = sum(int(m.sum()) for m in jax.tree.leaves(masks))
    for t in steps:  # consecutive updates from moved per-layer counts
        params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), _MLP)
        momenta = {k: {"kernel": rng.normal(size=v["kernel"].shape).astype(np.float32) ** 3, "bias": None}
                   for k, v in _MLP.items()}  # fmt: skip
        if poison:  # non-finite momentum ranks lowest (NaN) or highest (inf), counts stay exact
            momenta["layer_1"]["kernel"][0] = np.nan
            momenta["layer_1"]["kernel"][1, :3] = np.inf
        new, _ = _GLOBAL_UPDATE(params, masks, None, jnp.int32(t), jax.random.key(t), _state(params, momenta))
        before = [int(m.sum()) for m in jax.tree.leaves(masks)]
        after = [int(m.sum()) for m in jax.tree.leaves(new)]
        assert sum(after) == total, (t, before, after)
        for n, m, plan in zip(before, after, plans, strict=True):
            post_prune = n - min(math.ceil(t / 1024 * n), n - 1)
            assert post_prune <= m <= plan.size, (n, m, t)
        masks = jax.tree.map(np.asarray, new)


def test_momentum_is_the_sgd_buffer_of_the_dense_gradient():
    params = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.zeros(6, jnp.bfloat16)}
    algo = snfs(0.5, end_step=10, momentum=0.8)
    masks = {"w": jnp.ones((4, 6), bool), "b": None}  # observe does not read them
    state = algo.init_state(params, masks)
    assert state.momentum["b"] is None  # dense leaves keep no momentum
    assert state.momentum["w"].dtype == jnp.float32 and not bool(state.momentum["w"].any())
    g1, g2 = (jax.random.normal(jax.random.key(k), (4, 6)) for k in (1, 2))
    for g in (g1, g2):
        grads = {"w": g.astype(jnp.bfloat16), "b": jnp.ones(6, jnp.bfloat16)}
        state = jax.jit(algo.observe)(params, masks, grads, jnp.int32(0), state)
    expected = 0.8 * g1.astype(jnp.bfloat16).astype(jnp.float32) + g2.astype(jnp.bfloat16).astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(state.momentum["w"]), np.asarray(expected), rtol=1e-6)
    with pytest.raises(ValueError, match="snfs keeps the momentum of the dense gradient"):
        algo.observe(params, masks, None, jnp.int32(0), state)


def test_cosine_prune_rate_schedule():
    algo = snfs(0.9, begin_step=100, end_step=300, prune_rate=0.5)
    for t, expected in [(0, 0.5), (100, 0.5), (150, 0.25 * (1 + math.cos(math.pi / 4))), (200, 0.25), (300, 0.0)]:
        assert float(algo.prune_rate(t)) == pytest.approx(expected, abs=1e-6), t
    assert float(algo.prune_rate(10_000)) == pytest.approx(0.0, abs=1e-7)
    constant = snfs(0.9, end_step=10, prune_rate=0.3, prune_rate_decay="constant")
    assert float(constant.prune_rate(12345)) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("structure", "name"),
    [(NM(2, 4), "NM"), (FanIn(), "FanIn"), ({"layer_0": NM(2, 4), "": OutputChannels()}, "NM")],
    ids=["2:4", "fan_in", "per_layer"],
)
def test_row_wise_structures_are_refused_with_the_fix(structure, name):
    with pytest.raises(ValueError, match=rf"snfs moves counts between layers, but the structure .*{name}.*use rigl"):
        snfs(None if isinstance(structure, NM) else 0.5, structure=structure, end_step=10)


def test_hyperparameters_are_validated():
    for build, message in [
        (lambda: snfs(0.9, end_step=10, prune_rate=1.5), r"prune_rate must be in \[0, 1\]"),
        (lambda: snfs(0.9, end_step=10, momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: snfs(0.9), "cosine prune-rate decay needs end_step"),
        (lambda: snfs(0.9, end_step=10, prune_rate_decay="linear"), "unknown prune_rate_decay"),
    ]:
        with pytest.raises(ValueError, match=message):
            build()
    method = jsp.algorithms.lookup("snfs")
    algo = method.make(0.8, options={"snfs_prune_rate": 0.4, "snfs_momentum": 0.5}, end_step=50)
    assert (algo.momentum, round(float(algo.prune_rate(0)), 6)) == (0.5, 0.4)


def test_group_structures_keep_the_global_group_count(fast_compiles):
    """Blocks on the first layer, output channels on the others (one compilation): counts are in groups."""
    params = make_mlp(jax.random.key(0), (16, 32, 16, 8))
    structure = {"layer_0": Blocks((4, 4)), "": OutputChannels()}
    algo = snfs(0.5, structure=structure, distribution="uniform", update_every=1, end_step=10)
    plans = [p for p in algo.plan(params) if p is not None]
    rng = np.random.default_rng(0)
    masks = _layout_masks(algo, params, rng)
    # Momentum concentrated on the last layer: its share is largest, so groups move towards it.
    momenta = {k: {"kernel": (10.0 if k == "layer_2" else 1.0) * rng.normal(size=v["kernel"].shape), "bias": None}
               for k, v in params.items()}  # fmt: skip
    new, _ = jax.jit(algo.update_rule)(params, masks, None, jnp.int32(0), jax.random.key(2), _state(params, momenta))
    leaves = jax.tree.leaves(new)
    assert [m.shape for m in leaves] == [(4, 8), (16,), (8,)] == [p.mask_shape for p in plans]
    assert sum(int(m.sum()) for m in leaves) == sum(p.active for p in plans)
    assert int(leaves[-1].sum()) > plans[-1].active


def test_sparsify_keeps_the_total_exact_grows_from_zero_is_deterministic_and_compiles_once(fast_compiles):
    """What the shared conformance test checks, with the total in place of per-layer counts."""
    params = make_mlp(jax.random.key(0), (12, 16, 4))
    batch = make_batch(jax.random.key(1), 16, 12, 4)
    algo = snfs(0.75, update_every=2, end_step=100)
    masks = _layout_masks(algo, params, np.random.default_rng(0))  # handed in: no init_masks to compile
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(3), masks=masks)
    state = start = tx.init(params)
    params = first = jsp.apply_masks(params, jsp.masks_of(state))
    total = sum(p.active for p in algo.plan(params) if p is not None)
    step = jax.jit(make_train_step(tx))
    moved = grown_total = 0
    for t in range(5):
        old_masks, old_counts = state.masks, [int(m.sum()) for m in jax.tree.leaves(state.masks)]
        params, state = step(params, state, batch)
        counts = [int(m.sum()) for m in jax.tree.leaves(state.masks)]
        assert sum(counts) == total, (t, counts)
        moved += counts != old_counts
        for layer in params:
            mask, old = np.asarray(state.masks[layer]["kernel"]), np.asarray(old_masks[layer]["kernel"])
            kernel = np.asarray(params[layer]["kernel"])
            assert (kernel[~mask] == 0).all()
            grown = mask & ~old  # on update steps no optimizer step is taken: grown weights are exactly 0
            grown_total += int(grown.sum())
            mu = np.asarray(state.inner_state[0].mu[layer]["kernel"])
            assert (kernel[grown] == 0).all() and (mu[grown] == 0).all()
    assert moved > 0 and grown_total > 0  # counts did move between layers, and weights did grow
    again, again_state = first, start
    for _ in range(5):
        again, again_state = step(again, again_state, batch)
    for a, b in zip(jax.tree.leaves((params, state.masks)), jax.tree.leaves((again, again_state.masks)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # deterministic
    assert step._cache_size() == 1


def test_training_flops_counts_the_dense_gradient_up_to_the_last_update():
    algo = snfs(0.5, update_every=2, end_step=5)  # updates at 0, 2, 4
    flops, density = np.array([10.0, 30.0]), np.array([0.5, 0.2])  # f_S = 11, f_D = 40
    ratio = algo.training_flops(flops, density, density, 10, ["a", "b"], [None, None])
    assert ratio == pytest.approx(((2 * 11 + 40) * 5 + 3 * 11 * 5) / (3 * 40 * 10))
