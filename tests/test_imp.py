"""Iterative magnitude pruning with rewinding (lottery tickets): rounds, exact counts, each rewind, cost, resume.

The shared conformance tests (tests/test_protocol.py and the structure matrix) run IMP too; these
check what is IMP's own.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from jaxsparse.algorithms import imp, imp_sparsity, parse_rewind
from jaxsparse.training import Config, ConfigError, compilation_cache
from tests.helpers import killed_and_resumed, leaf_bytes, make_batch, make_mlp, make_train_step

SIZES = (8, 16, 16, 4)  # kernels of 128, 256 and 64 weights


@pytest.fixture(scope="module", autouse=True)
def _shared_compilations(tmp_path_factory):
    """The reference, killed and resumed runs compile the same programs once."""
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache-imp"):
        yield


def _kernels(tree):
    return [tree[f"layer_{i}"]["kernel"] for i in range(len(SIZES) - 1)]


@functools.cache
def _run(algo):
    """The whole run with Adam on random batches: the params and state before and after every step."""
    params = make_mlp(jax.random.key(0), SIZES)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(1))
    state = tx.init(params)
    step = jax.jit(make_train_step(tx))
    history = [(params, state)]
    for t in range(algo.total_steps(algo.round_steps)):
        params, state = step(params, state, make_batch(jax.random.key(100 + t), 16, SIZES[0], SIZES[-1]))
        history.append((params, state))
    return history


def _count(state) -> int:
    """The inner optimizer's step counter."""
    return int(optax.tree_utils.tree_get(state.inner_state, "count"))


def test_rounds_prune_a_fraction_of_the_remaining_smallest_weights_per_layer_exactly():
    algo = imp(0.875, round_steps=4, rounds=3, fraction=0.5, rewind="lr")
    assert algo.total_steps(4) == 4 + 3 * 5
    history = _run(algo)
    prune_steps = [4, 9, 14]
    assert [t for t in range(19) if bool(algo.is_update_step(t))] == prune_steps
    for r, t in enumerate(prune_steps, start=1):
        before_params, before_state = history[t]
        after_params, after_state = history[t + 1]
        old, new = _kernels(jsp.masks_of(before_state)), _kernels(jsp.masks_of(after_state))
        for size, o, n, w in zip((128, 256, 64), old, new, _kernels(before_params), strict=True):
            keep = size - int(np.floor(min(0.875, imp_sparsity(r, 0.5)) * size))
            assert int(n.sum()) == keep  # exactly (1 - p)^r of the layer, the last round the plan's count
            assert not bool((n & ~o).any())  # nothing regrows
            magnitude = np.abs(np.asarray(w))
            assert magnitude[np.asarray(n)].min() >= magnitude[np.asarray(o & ~n)].max()
    assert [algo.round_of(t) for t in (3, 4, 8, 9, 18)] == [0, 1, 1, 2, 3]


def test_global_scope_keeps_the_total_with_one_threshold():
    algo = imp(0.75, round_steps=3, rounds=2, fraction=0.5, rewind="lr", scope="global")
    history = _run(algo)
    params, state = history[3]
    masks = _kernels(jsp.masks_of(history[4][1]))
    assert sum(int(m.sum()) for m in masks) == 448 - int(np.floor(0.5 * 448))
    magnitude = [np.abs(np.asarray(w)) for w in _kernels(params)]
    kept = min(m[np.asarray(k)].min() for m, k in zip(magnitude, masks, strict=True))
    dropped = max(m[~np.asarray(k)].max() for m, k in zip(magnitude, masks, strict=True))
    assert kept >= dropped
    assert sum(int(m.sum()) for m in _kernels(jsp.masks_of(history[-1][1]))) == 448 - int(np.floor(0.75 * 448))


@pytest.mark.parametrize("rewind", ["init", "step:2", "lr", "none"])
def test_each_rewind_sets_the_weights_and_the_optimizer_it_names(rewind):
    algo = imp(0.875, round_steps=4, rounds=3, fraction=0.5, rewind=rewind)
    history = _run(algo)
    trained, before = history[4]  # the weights after round 0, before the pruning step
    after, state = history[5]  # after the pruning step
    masks = jsp.masks_of(state)
    expected = {"init": history[0][0], "step:2": history[2][0], "lr": trained, "none": trained}[rewind]
    for got, want, mask in zip(_kernels(after), _kernels(expected), _kernels(masks), strict=True):
        np.testing.assert_allclose(np.where(mask, got, 0), np.where(mask, want, 0), rtol=1e-6, atol=1e-7)
        assert not np.asarray(got)[~np.asarray(mask)].any()  # exactly zero off the mask
    counter = {"init": 0, "step:2": 2, "lr": 0, "none": 5}[rewind]  # the pruning step is step 4
    assert _count(state) == counter
    moments = optax.tree_utils.tree_get(state.inner_state, "mu")
    fresh = rewind != "none"
    assert (not any(np.asarray(m).any() for m in jax.tree.leaves(moments))) == fresh
    assert len(history) - 1 == algo.total_steps(4) == 4 + 3 * (1 + 4 - (2 if rewind == "step:2" else 0))


def test_parse_rewind_and_the_errors_that_name_the_fix():
    assert parse_rewind("step:7") == ("step", 7)
    with pytest.raises(ValueError, match="step:K"):
        parse_rewind("epoch:3")
    with pytest.raises(ValueError, match="at least 11 rounds, a fraction of at least 0.2502"):
        imp(0.9, round_steps=10, rounds=8, fraction=0.2)
    with pytest.raises(ValueError, match="rewind step 10 is not within the 10 steps"):
        imp(round_steps=10, rewind="step:10")
    with pytest.raises(ConfigError, match="rewind='step:600' is invalid: init, step:K with 0 <= K < steps"):
        Config(method="imp", steps=500, options={"rewind": "step:600"})
    assert Config(method="imp", steps=10).sparsity == pytest.approx(imp_sparsity(8, 0.2))


def test_training_flops_count_every_round_against_one_dense_training():
    algo = imp(0.75, round_steps=4, rounds=2, fraction=0.5, rewind="lr", distribution="uniform")
    masks = {"w": jnp.arange(64).reshape(8, 8) < 16}
    # A pruning step trains at the masks it replaces: steps 0-4 dense, 5-9 at 50%, 10-13 at 75%.
    expected = (5 * 1.0 + 5 * 0.5 + 4 * 0.25) / 4
    assert jsp.inspection.training_flops_ratio(algo, {"w": 64}, masks, total_steps=4) == pytest.approx(expected)


def test_cli_run_killed_in_a_later_round_resumes_bit_identical(tmp_path, monkeypatch):
    """``jaxsparse train --method imp``, rounds of 10 steps, killed at step 27 (round 2, after its rewind)."""
    run = dict(method="imp", dataset="digits", model="mlp", steps=10, batch_size=32, eval_every=5)
    run |= dict(checkpoint_every=7, options=(("imp_rounds", 2), ("imp_fraction", 0.5), ("rewind", "step:2")))
    reference, resumed = killed_and_resumed(run, tmp_path, monkeypatch, kill_at=27)
    assert leaf_bytes((resumed.params, resumed.opt_state)) == leaf_bytes((reference.params, reference.opt_state))
    # 10 dense steps, then two rounds of a pruning step and 8 steps; each round's end is evaluated.
    rows = resumed.metrics
    assert rows[-1]["step"] == 28 and [row["round"] for row in rows if row["step"] in (10, 19, 28)] == [0, 1, 2]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert [r["step"] for r in summary["rounds"]] == [10, 19, 28]
    assert [round(r["sparsity"], 2) for r in summary["rounds"]] == [0.0, 0.5, 0.75]
    assert (tmp_path / "resumed" / "rounds.png").stat().st_size > 0
    header = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith(",round")
