"""P-GaP on 8 CPU devices (4 replicas x 2-way data parallel) against a serial emulation.

The emulation trains the 4 copies one after another on the same batches, with plain SGD with
momentum written out by hand, and assembles them in Python: partition ``r`` (and the biases beside
it) from copy ``r``, every layer magnitude-pruned to its target, the own partition regrown dense
from zero, momentum restarted. The sharded run's gradients are all-reduced over the 2 data shards,
so their float sums are taken in another order: params agree to float tolerance, masks exactly.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsparse as jsp
from jaxsparse.algorithms import parallel_gap, replica_axes
from jaxsparse.masks import mask_leaves, random_masks
from jaxsparse.selection import top_k_mask
from tests.helpers import make_batch, make_mlp, mlp_loss

SIZES = (16, 32, 32, 32, 8)  # 4 kernels: one partition each
KAPPA, T, R, FINE_TUNE = 4, 3, 2, 2
STEPS = R * (T + 1) + FINE_TUNE
LR, MOMENTUM = 0.1, 0.9


def _algorithm():
    return parallel_gap(0.75, partitions=KAPPA, steps_per_round=T, rounds=R)


def _tx():
    return jsp.sparsify(optax.sgd(LR, momentum=MOMENTUM), _algorithm(), key=jax.random.key(3))


def _batches():
    return [make_batch(jax.random.key(100 + t), 16, SIZES[0], SIZES[-1]) for t in range(STEPS)]


def _step(tx):
    def step(params, state, batch):
        updates, state = tx.update(jax.grad(mlp_loss)(params, batch), state, params)
        return optax.apply_updates(params, updates), state

    return step


def _parallel_run():
    mesh = jax.make_mesh((KAPPA, 2), ("replica", "data"), axis_types=(AxisType.Auto, AxisType.Auto))
    tx = _tx()
    params = make_mlp(jax.random.key(0), SIZES)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (KAPPA, *x.shape)), params)
    vmap = dict(axis_name="replica", spmd_axis_name="replica")
    with jax.set_mesh(mesh):
        stacked = jax.device_put(stacked, NamedSharding(mesh, P("replica")))
        axes = replica_axes(jax.eval_shape(jax.vmap(tx.init, axis_name="replica"), stacked))
        state = jax.jit(jax.vmap(tx.init, out_axes=axes, **vmap))(stacked)
        stacked = jax.vmap(jsp.apply_masks, axis_name="replica")(stacked, jsp.masks_of(state))
        pinned = jax.tree.map(lambda x: x.sharding, (stacked, state))  # the README's recipe against drift
        step = jax.jit(
            jax.vmap(chex.assert_max_traces(_step(tx), n=1), in_axes=(0, axes, None), out_axes=(0, axes), **vmap),
            out_shardings=pinned,
        )
        history = []
        for batch in _batches():
            stacked, state = step(stacked, state, jax.device_put(batch, NamedSharding(mesh, P("data"))))
            history.append((stacked, state))
    return history


def _emulated_run():
    """The 4 copies trained one after another, then assembled by hand, round after round."""
    algo = _algorithm()
    params = make_mlp(jax.random.key(0), SIZES)
    plans, owners = algo.plan(params), algo.partition_of(params)
    structure = jax.tree.structure(params)
    # sparsify draws the initial masks with the first half of its key.
    target = mask_leaves(params, random_masks(jax.random.split(jax.random.key(3))[0], params, plans))
    # A bias goes with the kernel beside it.
    kernel_owner = {plan.name.rsplit("/", 1)[0]: o for plan, o in zip(plans, owners, strict=True) if plan}
    leaf_owner = [
        kernel_owner[jax.tree_util.keystr(p, simple=True, separator="/").rsplit("/", 1)[0]]
        for p, _ in jax.tree_util.tree_leaves_with_path(params)
    ]

    def own_masks(masks, r, final):
        return [
            None if m is None else (jnp.ones_like(m) if o == r and not final else m)
            for m, o in zip(masks, owners, strict=True)
        ]

    def train(leaves, masks, steps):
        trace = [jnp.zeros_like(x) for x in leaves]
        for t in steps:
            grads = jax.tree.leaves(jax.grad(mlp_loss)(jax.tree.unflatten(structure, leaves), _batches()[t]))
            grads = [g if m is None else jnp.where(m, g, 0.0) for g, m in zip(grads, masks, strict=True)]
            trace = [g + MOMENTUM * tr for g, tr in zip(grads, trace, strict=True)]
            leaves = [x - LR * tr for x, tr in zip(leaves, trace, strict=True)]
            leaves = [x if m is None else jnp.where(m, x, 0.0) for x, m in zip(leaves, masks, strict=True)]
        return leaves

    start = jax.tree.leaves(params)
    copies = [
        [x if m is None else jnp.where(m, x, 0.0) for x, m in zip(start, own_masks(target, r, False), strict=True)]
        for r in range(KAPPA)
    ]
    masks = [own_masks(target, r, False) for r in range(KAPPA)]
    rounds = []
    for round_ in range(R):
        first = round_ * (T + 1)
        trained = [train(copies[r], masks[r], range(first, first + T)) for r in range(KAPPA)]
        assembled = [trained[o][i] for i, o in enumerate(leaf_owner)]
        pruned = [
            None if plan is None else top_k_mask(jnp.abs(x), plan.active, tie_seed=0)
            for x, plan in zip(assembled, plans, strict=True)
        ]
        assembled = [x if m is None else jnp.where(m, x, 0.0) for x, m in zip(assembled, pruned, strict=True)]
        final = round_ == R - 1
        copies = [list(assembled) for _ in range(KAPPA)]
        masks = [own_masks(pruned, r, final) for r in range(KAPPA)]
        rounds.append((trained, masks))
    final_params = train(assembled, masks[0], range(R * (T + 1), STEPS))
    return rounds, jax.tree.unflatten(structure, final_params), masks[0]


@pytest.fixture(scope="module")
def runs():
    return _parallel_run(), _emulated_run()


def test_replicas_keep_their_own_partition_dense_and_the_rest_at_exact_targets(runs):
    history, _ = runs
    algo = _algorithm()
    params = make_mlp(jax.random.key(0), SIZES)
    owners = [o for o in algo.partition_of(params) if o is not None]
    targets = [plan.active for plan in algo.plan(params) if plan is not None]
    for t, (stacked, state) in enumerate(history):
        masks = [m for m in jax.tree.leaves(jsp.masks_of(state))]
        final = t >= algo.final_step
        for r in range(KAPPA):
            counts = [int(m[r].sum()) for m in masks]
            assert counts == [
                m[r].size if o == r and not final else n for m, o, n in zip(masks, owners, targets, strict=True)
            ]
            for m, w in zip(masks, [stacked[f"layer_{i}"]["kernel"] for i in range(4)], strict=True):
                assert not np.any(np.asarray(w[r])[~np.asarray(m[r])])
    stacked, state = history[-1]
    for leaf in jax.tree.leaves((stacked, jsp.masks_of(state))):
        for r in range(1, KAPPA):  # after the last assembly every replica fine-tunes the same model
            np.testing.assert_array_equal(np.asarray(leaf[r]), np.asarray(leaf[0]))


def test_sharded_p_gap_matches_the_serial_emulation(runs):
    history, (rounds, final_params, final_masks) = runs
    for round_, (trained, masks) in enumerate(rounds):
        boundary = round_ * (T + 1) + T
        before, _ = history[boundary - 1]
        _, state = history[boundary]
        for r in range(KAPPA):
            np.testing.assert_allclose(
                np.concatenate([np.ravel(x[r]) for x in jax.tree.leaves(before)]),
                np.concatenate([np.ravel(x) for x in trained[r]]),
                rtol=1e-5,
                atol=1e-6,
            )
            got = [np.asarray(m[r]) for m in jax.tree.leaves(jsp.masks_of(state))]
            want = [np.asarray(m) for m in masks[r] if m is not None]
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
    stacked, state = history[-1]
    for r in range(KAPPA):
        for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(final_params), strict=True):
            np.testing.assert_allclose(np.asarray(a[r]), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_replica_count_must_match_the_partitions():
    tx = _tx()
    params = make_mlp(jax.random.key(0), SIZES)
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (2, *x.shape)), params)
    with pytest.raises(ValueError, match="4 partitions but the 'replica' axis has 2 replicas"):
        jax.vmap(tx.init, axis_name="replica")(stacked)
