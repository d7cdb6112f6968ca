"""GaP (scheduled grow-and-prune, Ma et al. 2022): partitions, the phase schedule, exact counts, cost, resume.

The shared conformance tests (tests/test_protocol.py) run GaP too; these check what is GaP's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from jaxsparse.algorithms import gap_partitions
from jaxsparse.training import Config, ConfigError, compilation_cache, train
from tests.helpers import killed_and_resumed, make_mlp


@pytest.fixture(scope="module", autouse=True)
def _shared_compilations(tmp_path_factory):
    """The reference, killed and resumed runs compile the same programs once (as test_cli does)."""
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache-gap"):
        yield


SIZES = (16, 32, 32, 32, 8)  # kernels of 512, 1024, 1024 and 256 weights


def _params():
    return make_mlp(jax.random.key(0), SIZES)


def _kernels(tree):
    return [tree[f"layer_{i}"]["kernel"] for i in range(len(SIZES) - 1)]


def test_partitions_are_consecutive_layers_of_near_equal_size():
    algo = jsp.gap(0.8, partitions=2, steps_per_phase=3, rounds=1)
    # 512 + 1024 = 1536 is nearer half of 2816 than 512: the cut falls after layer_1.
    assert [p for p in algo.partition_of(_params()) if p is not None] == [0, 0, 1, 1]
    three = jsp.gap(0.8, partitions=3, steps_per_phase=3, rounds=1)
    assert [p for p in three.partition_of(_params()) if p is not None] == [0, 1, 2, 2]


def test_partitions_by_pattern_and_their_errors():
    params = _params()
    algo = jsp.gap(0.8, partitions=[["layer_3", "layer_0"], ["layer_1", "layer_2"]], steps_per_phase=3, rounds=1)
    assert [p for p in algo.partition_of(params) if p is not None] == [0, 1, 1, 0]
    plans = algo.plan(params)
    with pytest.raises(ValueError, match=r"'layer_2/kernel' matches partitions \[0, 1\]"):
        gap_partitions(plans, (("layer_[0-2]",), ("layer_[23]",)))
    with pytest.raises(ValueError, match=r"'layer_3/kernel' matches no partition"):
        gap_partitions(plans, (("layer_[01]",), ("layer_2",)))
    with pytest.raises(ValueError, match=r"partitions \[2\].*match no sparsified layer"):
        gap_partitions(plans, (("layer_[01]",), ("layer_[23]",), ("embed",)))
    with pytest.raises(ValueError, match="5 partitions, but only 4 sparsified layers.*at most 4"):
        gap_partitions(plans, 5)


@pytest.mark.parametrize(("argument", "value"), [("steps_per_phase", 0), ("rounds", 0), ("partitions", 0)])
def test_zero_lengths_are_refused(argument, value):
    settings = dict(partitions=2, steps_per_phase=3, rounds=1) | {argument: value}
    with pytest.raises(ValueError, match=f"GaP's {argument} must be an int >= 1"):
        jsp.gap(0.8, **settings)


def _run(algo, steps, inner=None):
    """Trains on random gradients under jit; yields (step, params, state) after each step."""
    tx = jsp.sparsify(inner or optax.sgd(0.1, momentum=0.9), algo, key=jax.random.key(1))
    params = _params()
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))
    step = jax.jit(tx.update)
    yield -1, params, state
    for t in range(steps):
        key = jax.random.fold_in(jax.random.key(5), t)
        grads = jax.tree.map(lambda x, key=key: jax.random.normal(key, x.shape), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        yield t, params, state
    assert step._cache_size() == 1


@pytest.mark.parametrize("order", ["cyclic", "random"])
def test_one_partition_dense_at_a_time_with_exact_counts_then_every_layer_at_target(order):
    kappa, T, R = 3, 3, 2
    algo = jsp.gap(0.8, partitions=kappa, steps_per_phase=T, rounds=R, order=order)
    params = _params()
    owners = [p for p in algo.partition_of(params) if p is not None]
    targets = [plan.active for plan in algo.plan(params) if plan is not None]
    dense_sequence = []
    for t, params, state in _run(algo, kappa * R * T + 4):
        dense = int(state.algorithm_state.dense_partition)
        masks = _kernels(jsp.masks_of(state))
        counts = [int(m.sum()) for m in masks]
        expected = [m.size if p == dense else n for m, p, n in zip(masks, owners, targets, strict=True)]
        assert counts == expected, (t, dense)
        for mask, kernel in zip(masks, _kernels(params), strict=True):
            assert not np.any(np.asarray(kernel)[~np.asarray(mask)]), "a weight is non-zero off the mask"
        if t >= kappa * R * T:
            assert dense == -1 and counts == targets  # the final prune: fixed masks for fine-tuning
        if not dense_sequence or dense_sequence[-1] != dense:
            dense_sequence.append(dense)
    if order == "cyclic":
        assert dense_sequence == [0, 1, 2, 0, 1, 2, -1]
    else:
        phases = dense_sequence[:-1]
        assert len(phases) == kappa * R and phases[0] == 0 and dense_sequence[-1] == -1
        assert all(a != b for a, b in zip(phases, phases[1:], strict=False))
        assert phases != [0, 1, 2, 0, 1, 2], "the random order drew the cyclic one (change the key)"


def test_grown_weights_start_at_zero_with_fresh_moments_and_pruning_keeps_the_largest():
    algo = jsp.gap(0.8, partitions=2, steps_per_phase=4, rounds=1, skip_optimizer_on_update=True)
    history = list(_run(algo, 5, inner=optax.adam(1e-2)))
    (_, before, old_state), (_, after, new_state) = history[4], history[5]  # the boundary at step 4
    old, new = _kernels(jsp.masks_of(old_state)), _kernels(jsp.masks_of(new_state))
    mu = _kernels(new_state.inner_state[0].mu)
    for layer in (2, 3):  # partition 1 grew
        grown = np.asarray(new[layer] & ~old[layer])
        assert grown.any()
        np.testing.assert_array_equal(np.asarray(_kernels(after)[layer])[grown], 0.0)
        np.testing.assert_array_equal(np.asarray(mu[layer])[grown], 0.0)
    for layer in (0, 1):  # partition 0 was pruned back to its target by magnitude
        kept = np.abs(np.asarray(_kernels(before)[layer]))[np.asarray(new[layer])]
        dropped = np.abs(np.asarray(_kernels(before)[layer]))[~np.asarray(new[layer])]
        assert kept.min() >= dropped.max()


def test_global_final_prune_keeps_the_total_count_with_one_threshold():
    algo = jsp.gap(0.8, partitions=2, steps_per_phase=2, rounds=1, final_scope="global")
    history = list(_run(algo, 5))
    (_, before, old_state), (_, _, state) = history[4], history[5]  # the final prune at step 4
    assert int(state.algorithm_state.dense_partition) == -1
    old, new = _kernels(jsp.masks_of(old_state)), _kernels(jsp.masks_of(state))
    targets = [plan.active for plan in algo.plan(before) if plan is not None]
    counts = [int(m.sum()) for m in new]
    assert sum(counts) == sum(targets) and counts != targets  # one total, not each layer's own count
    magnitude = [np.abs(np.asarray(k)) for k in _kernels(before)]
    kept = np.concatenate([w[np.asarray(m)] for w, m in zip(magnitude, new, strict=True)])
    dropped = np.concatenate([w[np.asarray(a & ~b)] for w, a, b in zip(magnitude, old, new, strict=True)])
    assert kept.min() >= dropped.max()


def test_training_flops_count_the_dense_partition_dense():
    """Hand count: 2 layers, one per partition, T=2, R=1, 6 steps; density 0.25 off the dense partition."""
    params = {"a": {"kernel": jnp.ones((8, 8))}, "b": {"kernel": jnp.ones((8, 8))}}
    algo = jsp.gap(0.75, partitions=2, steps_per_phase=2, rounds=1, distribution="uniform")
    state = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0)).init(params)
    flops = {"a/kernel": 100, "b/kernel": 300}
    # Steps 0-2 use phase 0 (a dense), steps 3-4 phase 1 (b dense), step 5 the final masks.
    costs = [100 + 75] * 3 + [25 + 300] * 2 + [25 + 75]
    expected = sum(costs) / (6 * 400)
    assert jsp.inspection.training_flops_ratio(algo, flops, state, total_steps=6) == pytest.approx(expected)


@pytest.mark.parametrize("parallel", [False, True], ids=["cyclic", "parallel"])
def test_cli_run_killed_mid_phase_resumes_bit_identical(tmp_path, monkeypatch, parallel):
    """``jaxsparse train --method gap [--gap-parallel]``, T=5, 2 rounds; killed at step 17, mid-phase and mid-round.

    C-GaP has 3 partitions; P-GaP 2 replicas, each 4-way data parallel on the 8 CPU devices.
    """
    run = dict(method="gap", dataset="digits", model="mlp", steps=40, batch_size=32, update_every=5, eval_every=5)
    options = (("gap_steps_per_phase", 5), ("gap_rounds", 2))
    if parallel:
        options += (("gap_partitions", 2), ("gap_parallel", True))
    run |= dict(checkpoint_every=10, options=options)
    reference, resumed = killed_and_resumed(run, tmp_path, monkeypatch, kill_at=17)
    for a, b in ((resumed.params, reference.params), (resumed.opt_state, reference.opt_state)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                x, y = jax.random.key_data(x), jax.random.key_data(y)
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    state = jsp.transform.find_sparsify_state(resumed.opt_state)
    assert np.all(np.asarray(state.algorithm_state.dense_partition) == -1)
    assert abs(resumed.report["sparsity"] - 0.9) < 0.01 and resumed.report["flops"]["training_ratio"] > 0


def test_parallel_gap_refuses_a_device_count_that_fits_neither_way(tmp_path):
    options = (("gap_partitions", 3), ("gap_parallel", True))
    config = Config(method="gap", dataset="digits", model="mlp", options=options, out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="3 replicas, one per partition, but 8 devices.*multiple or a divisor"):
        train(config, progress=False)


def test_gap_runs_at_output_channel_structure_with_exact_group_counts():
    """Whole output channels: the dense partition has every channel, the rest exactly their targets."""
    algo = jsp.gap(0.75, partitions=2, steps_per_phase=2, rounds=1, structure=jsp.masks.OutputChannels())
    params = _params()
    owners = [p for p in algo.partition_of(params) if p is not None]
    targets = [plan.active for plan in algo.plan(params) if plan is not None]
    for t, _, state in _run(algo, 6):
        dense = int(state.algorithm_state.dense_partition)
        groups = [m for m in jax.tree.leaves(state.masks)]
        assert [int(m.sum()) for m in groups] == [
            m.size if p == dense else n for m, p, n in zip(groups, owners, targets, strict=True)
        ], t
        for expanded in _kernels(jsp.masks_of(state)):  # every column all on or all off
            columns = np.asarray(expanded)
            assert np.all(columns.all(axis=0) | ~columns.any(axis=0))
