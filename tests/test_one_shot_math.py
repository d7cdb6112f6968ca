"""SparseGPT and WoodFisher/OBS math against plain numpy references (float64), on tiny layers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsparse.one_shot._sparsegpt import sparsegpt_prune
from jaxsparse.one_shot._woodfisher import fisher_inverse_init, obs_saliency, obs_update, woodbury_update

# --------------------------------------------------------------------------------------------------
# SparseGPT


def reference_sparsegpt(weight, hessian, *, kept=None, nm=None, mask_block=128, damping=0.01):
    """Algorithm 1 of SparseGPT without lazy batching: one input at a time, float64."""
    w = np.array(weight, np.float64)
    h = np.array(hessian, np.float64)
    d_in, d_out = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[dead] = 0
    h += damping * np.mean(np.diag(h)) * np.eye(d_in)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper, u.T @ u = inv(h)
    mask = np.zeros(w.shape, bool)
    for j in range(d_in):
        if kept is not None and j % mask_block == 0:
            end = min(j + mask_block, d_in)
            pruned = d_in * d_out - kept
            count = pruned * end // d_in - pruned * j // d_in
            scores = (w[j:end] / np.diag(u)[j:end, None]) ** 2
            slab = np.ones(scores.shape, bool)
            slab.flat[np.argsort(scores, axis=None)[:count]] = False
            mask[j:end] = slab
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            scores = (w[j : j + m] / np.diag(u)[j : j + m, None]) ** 2
            slab = np.ones(scores.shape, bool)
            np.put_along_axis(slab, np.argsort(scores, axis=0)[: m - n], False, axis=0)
            mask[j : j + m] = slab
        row = w[j].copy()
        kept_row = np.where(mask[j], row, 0)
        error = (row - kept_row) / u[j, j]
        w[j:] -= np.outer(u[j, j:], error)
        w[j] = kept_row
    return w, mask


def _layer(seed, d_in, d_out, samples=40, dead=()):
    """Correlated calibration inputs, a random kernel and the Hessian ``X^T X`` (float32)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, d_in)) @ rng.normal(size=(d_in, d_in))
    x[:, list(dead)] = 0
    w = rng.normal(size=(d_in, d_out))
    x, w = x.astype(np.float32), w.astype(np.float32)
    return x, w, x.T @ x


def _output_error(x, w, new_w):
    x = x.astype(np.float64)
    return float(np.sum((x @ w - x @ np.asarray(new_w, np.float64)) ** 2))


def _magnitude(w, kept):
    mask = np.zeros(w.size, bool)
    mask[np.argsort(-np.abs(w), axis=None)[:kept]] = True
    return w * mask.reshape(w.shape)


def _magnitude_nm(w, n, m):
    groups = np.abs(w).reshape(w.shape[0] // m, m, w.shape[1])
    rank = np.argsort(np.argsort(-groups, axis=1), axis=1)
    return w * (rank < n).reshape(w.shape)


@pytest.mark.parametrize(
    "d_in, d_out, block_size, mask_block, kept, nm, dead",
    [
        (12, 5, 4, 4, 30, None, ()),
        (13, 6, 4, 6, 40, None, ()),  # d_in a multiple of neither; slabs straddle lazy blocks
        (10, 4, 8, 3, 17, None, (2, 7)),  # dead inputs
        (9, 3, 128, 128, 10, None, ()),  # one padded block, one slab
        (12, 5, 6, 128, None, (2, 4), ()),  # 2:4 groups straddle lazy blocks
        (16, 3, 5, 128, None, (1, 4), (0,)),
    ],
)
def test_sparsegpt_matches_plain_algorithm_1(d_in, d_out, block_size, mask_block, kept, nm, dead):
    x, w, h = _layer(0, d_in, d_out, dead=dead)
    new_w, mask = sparsegpt_prune(w, h, kept=kept, nm=nm, block_size=block_size, mask_block=mask_block)
    ref_w, ref_mask = reference_sparsegpt(w, h, kept=kept, nm=nm, mask_block=mask_block)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(new_w), ref_w, rtol=1e-4, atol=1e-4 * np.abs(ref_w).max())


@pytest.mark.parametrize("kept, nm, mask_block", [(31, None, 5), (None, (2, 4), 128)])
def test_sparsegpt_block_size_does_not_change_the_result(kept, nm, mask_block):
    _, w, h = _layer(1, 12, 4)
    results = [
        sparsegpt_prune(w, h, kept=kept, nm=nm, block_size=block_size, mask_block=mask_block)
        for block_size in (1, 5, 12)
    ]
    for new_w, mask in results[1:]:
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(results[0][1]))
        np.testing.assert_allclose(np.asarray(new_w), np.asarray(results[0][0]), rtol=1e-5, atol=1e-5)


def test_sparsegpt_keeps_exact_count_with_zeros_off_mask():
    _, w, h = _layer(2, 13, 6)
    for kept in (0, 1, 37, 13 * 6 - 1, 13 * 6):
        new_w, mask = sparsegpt_prune(w, h, kept=kept, block_size=4, mask_block=5)
        assert mask.dtype == jnp.bool_ and mask.shape == w.shape
        assert int(mask.sum()) == kept
        assert bool(jnp.all(new_w[~mask] == 0))
        assert bool(jnp.all(jnp.isfinite(new_w)))
    np.testing.assert_allclose(np.asarray(new_w), w)  # nothing pruned: nothing to compensate


def test_sparsegpt_keeps_the_weight_dtype():
    _, w, h = _layer(3, 8, 4)
    new_w, mask = sparsegpt_prune(jnp.asarray(w, jnp.bfloat16), h, kept=16)
    assert new_w.dtype == jnp.bfloat16
    assert int(mask.sum()) == 16 and bool(jnp.all(new_w[~mask] == 0))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8)])
def test_sparsegpt_nm_groups_are_exact(n, m):
    _, w, h = _layer(4, 16, 5)
    new_w, mask = sparsegpt_prune(w, h, nm=(n, m), block_size=6)
    per_group = np.asarray(mask).reshape(16 // m, m, 5).sum(axis=1)
    np.testing.assert_array_equal(per_group, n)
    assert bool(jnp.all(new_w[~mask] == 0))


@pytest.mark.parametrize("seed", range(4))
def test_sparsegpt_output_error_beats_magnitude_pruning(seed):
    x, w, h = _layer(seed, 32, 16, samples=256)
    kept = w.size // 2
    new_w, _ = sparsegpt_prune(w, h, kept=kept, block_size=16, mask_block=8)
    assert _output_error(x, w, new_w) <= _output_error(x, w, _magnitude(w, kept))
    new_w, _ = sparsegpt_prune(w, h, nm=(2, 4), block_size=16)
    assert _output_error(x, w, new_w) <= _output_error(x, w, _magnitude_nm(w, 2, 4))


def test_sparsegpt_hessian_scale_only_matters_through_damping():
    x, w, h = _layer(5, 12, 4)
    new_w, mask = sparsegpt_prune(w, h, kept=20, block_size=4, mask_block=6)
    scaled_w, scaled_mask = sparsegpt_prune(w, 2 * h / x.shape[0], kept=20, block_size=4, mask_block=6)
    np.testing.assert_array_equal(np.asarray(scaled_mask), np.asarray(mask))
    np.testing.assert_allclose(np.asarray(scaled_w), np.asarray(new_w), rtol=1e-4, atol=1e-4)


def test_sparsegpt_zeroes_dead_inputs_and_damps_after_reviving_them():
    _, w, h = _layer(6, 12, 4, dead=(0, 5, 11))
    assert np.all(np.diag(h)[[0, 5, 11]] == 0)
    # Live mean diagonal 1 and strong damping: the dead inputs' H_jj = 1 must count in mean(diag H).
    h = h * (9 / np.trace(h))
    new_w, mask = sparsegpt_prune(w, h, kept=24, block_size=4, mask_block=6, damping=0.5)
    assert bool(jnp.all(jnp.isfinite(new_w)))
    assert bool(jnp.all(new_w[jnp.array([0, 5, 11])] == 0))
    assert int(mask.sum()) == 24
    ref_w, ref_mask = reference_sparsegpt(w, h, kept=24, mask_block=6, damping=0.5)
    np.testing.assert_array_equal(np.asarray(mask), ref_mask)
    np.testing.assert_allclose(np.asarray(new_w), ref_w, rtol=1e-4, atol=1e-5)


def test_sparsegpt_under_jit_is_identical_and_does_not_retrace():
    _, w, h = _layer(7, 13, 6)
    _, w2, h2 = _layer(8, 13, 6)

    def prune(weight, hessian, seed):
        return sparsegpt_prune(weight, hessian, kept=20, block_size=4, mask_block=6, tie_seed=seed)

    jitted = jax.jit(chex.assert_max_traces(prune, n=1))
    for weight, hessian, seed in ((w, h, 0), (w2, h2, 3)):
        new_w, mask = jitted(weight, hessian, seed)
        eager_w, eager_mask = prune(weight, hessian, seed)
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(eager_mask))
        np.testing.assert_array_equal(np.asarray(new_w), np.asarray(eager_w))


def test_sparsegpt_ties_are_exact_and_follow_the_seed():
    # An identity Hessian decouples the inputs, so equal weights stay tied all the way through.
    weight, hessian = jnp.ones((12, 8)), jnp.eye(12)
    masks = [sparsegpt_prune(weight, hessian, kept=40, mask_block=5, tie_seed=seed)[1] for seed in (0, 0, 1)]
    assert all(int(mask.sum()) == 40 for mask in masks)
    np.testing.assert_array_equal(np.asarray(masks[0]), np.asarray(masks[1]))
    assert not np.array_equal(np.asarray(masks[0]), np.asarray(masks[2]))
    _, mask = sparsegpt_prune(weight, hessian, nm=(2, 4))
    np.testing.assert_array_equal(np.asarray(mask).reshape(3, 4, 8).sum(axis=1), 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kept": 4, "nm": (2, 4)}, "exactly one of kept"),
        ({}, "exactly one of kept"),
        ({"nm": (2, 4)}, "not a multiple of 4"),
        ({"nm": (5, 4)}, "1 <= n <= m"),
        ({"nm": 4}, "pair"),
        ({"kept": 61}, r"\[0, 60\]"),
        ({"kept": -1}, r"\[0, 60\]"),
        ({"kept": 2.5}, "Python int"),
        ({"kept": 4, "block_size": 0}, "block_size"),
        ({"kept": 4, "mask_block": 0}, "mask_block"),
    ],
)
def test_sparsegpt_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sparsegpt_prune(jnp.ones((10, 6)), jnp.eye(10), **kwargs)


def test_sparsegpt_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(10, 10\) Hessian"):
        sparsegpt_prune(jnp.ones((10, 6)), jnp.eye(6), kept=3)
    with pytest.raises(ValueError, match=r"\(d_in, d_out\) kernel"):
        sparsegpt_prune(jnp.ones((3, 3, 4)), jnp.eye(3), kept=3)


# --------------------------------------------------------------------------------------------------
# WoodFisher / OBS


def _fisher_blocks(grads, block_size, damping):
    """Per block, ``damping I + G_b^T G_b / N`` in float64, the gradients zero-padded to whole blocks."""
    examples, size = grads.shape
    blocks = -(-size // block_size)
    padded = np.zeros((examples, blocks * block_size))
    padded[:, :size] = grads
    cut = padded.reshape(examples, blocks, block_size).transpose(1, 0, 2)
    return np.stack([damping * np.eye(block_size) + g.T @ g / examples for g in cut])


def _block_diagonal(blocks, size):
    count, width, _ = blocks.shape
    full = np.zeros((count * width, count * width))
    for b in range(count):
        full[b * width : (b + 1) * width, b * width : (b + 1) * width] = blocks[b]
    return full[:size, :size]


def test_fisher_inverse_init_is_identity_over_damping():
    inverse = fisher_inverse_init(10, 4, 0.5)
    assert inverse.shape == (3, 4, 4) and inverse.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(inverse), np.broadcast_to(2 * np.eye(4), (3, 4, 4)))
    assert fisher_inverse_init(3, 128, 1.0).shape == (1, 3, 3)  # blocks no larger than the leaf
    assert fisher_inverse_init(3, 2, 1.0, jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="damping"):
        fisher_inverse_init(3, 2, 0.0)
    with pytest.raises(ValueError, match="block_size"):
        fisher_inverse_init(3, 0, 1.0)


@pytest.mark.parametrize("chunks", [(7,), (3, 4), (1,) * 7])
def test_woodbury_update_gives_the_inverse_dampened_fisher(chunks):
    rng = np.random.default_rng(0)
    damping, grads = 0.1, rng.normal(size=(7, 10))
    inverse = fisher_inverse_init(10, 4, damping)
    start = 0
    for length in chunks:
        chunk = jnp.asarray(grads[start : start + length], jnp.float32)
        inverse = woodbury_update(inverse, chunk, 7)
        start += length
    expected = np.linalg.inv(_fisher_blocks(grads, 4, damping))
    assert inverse.shape == (3, 4, 4) and inverse.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(inverse), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _kkt_minimiser(theta, fisher, pruned):
    """argmin 1/2 d^T F d subject to theta_Q + d_Q = 0, from the KKT system (float64)."""
    size = theta.size
    constraints = np.eye(size)[pruned]
    kkt = np.block([[fisher, constraints.T], [constraints, np.zeros((len(pruned), len(pruned)))]])
    rhs = np.concatenate([np.zeros(size), -theta.reshape(-1)[pruned]])
    return theta.reshape(-1) + np.linalg.solve(kkt, rhs)[:size]


def _obs_problem(seed, size, block_size, damping=0.1):
    rng = np.random.default_rng(seed)
    fisher = _fisher_blocks(rng.normal(size=(8, size)), block_size, damping)
    theta = rng.normal(size=(2, size // 2))
    return theta, fisher


@pytest.mark.parametrize("block_size", [6, 3])
@pytest.mark.parametrize("pruned", [[4], [1, 4], [0, 2, 5], [3, 4, 5]])
def test_obs_update_is_the_constrained_quadratic_minimiser(block_size, pruned):
    theta, fisher = _obs_problem(1, 6, block_size)
    prune = np.zeros(6, bool)
    prune[pruned] = True
    inverse = jnp.asarray(np.linalg.inv(fisher), jnp.float32)
    updated = obs_update(jnp.asarray(theta, jnp.float32), inverse, jnp.asarray(prune.reshape(2, 3)))
    expected = _kkt_minimiser(theta, _block_diagonal(fisher, 6), pruned)
    assert updated.shape == (2, 3) and updated.dtype == jnp.float32
    assert bool(jnp.all(updated.reshape(-1)[np.asarray(pruned)] == 0))
    np.testing.assert_allclose(np.asarray(updated).reshape(-1), expected, rtol=1e-4, atol=1e-5)


def test_obs_update_single_weight_is_the_closed_form():
    theta, fisher = _obs_problem(2, 6, 6)
    inverse = np.linalg.inv(fisher[0])
    flat = theta.reshape(-1)
    for q in range(6):
        prune = np.zeros(6, bool)
        prune[q] = True
        updated = obs_update(
            jnp.asarray(theta, jnp.float32), jnp.asarray(inverse[None], jnp.float32), prune.reshape(2, 3)
        )
        expected = flat - flat[q] * inverse[:, q] / inverse[q, q]
        np.testing.assert_allclose(np.asarray(updated).reshape(-1), expected, rtol=1e-4, atol=1e-5)
        assert float(updated.reshape(-1)[q]) == 0.0


def test_obs_update_with_woodbury_inverse_and_a_padded_block():
    # 5 weights in blocks of 3: the second block is padded; pruning spans both blocks.
    rng = np.random.default_rng(3)
    grads, theta, damping = rng.normal(size=(9, 5)), rng.normal(size=5), 0.2
    inverse = woodbury_update(fisher_inverse_init(5, 3, damping), jnp.asarray(grads, jnp.float32), 9)
    prune = np.array([False, True, False, True, False])
    updated = obs_update(jnp.asarray(theta, jnp.float32), inverse, jnp.asarray(prune))
    expected = _kkt_minimiser(theta, _block_diagonal(_fisher_blocks(grads, 3, damping), 5), [1, 3])
    np.testing.assert_allclose(np.asarray(updated), expected, rtol=1e-4, atol=1e-5)
    assert float(updated[1]) == 0.0 and float(updated[3]) == 0.0


def test_obs_update_keeps_dtype_and_traces_once():
    theta, fisher = _obs_problem(4, 6, 3)
    inverse = jnp.asarray(np.linalg.inv(fisher), jnp.float32)
    prune = jnp.asarray(np.array([[True, False, False], [False, False, True]]))
    low = obs_update(jnp.asarray(theta, jnp.bfloat16), inverse, prune)
    assert low.dtype == jnp.bfloat16 and bool(jnp.all(low[prune] == 0))
    jitted = jax.jit(chex.assert_max_traces(obs_update, n=1))
    for scale in (1.0, 2.0):
        eager = obs_update(jnp.asarray(scale * theta, jnp.float32), inverse, prune)
        np.testing.assert_allclose(jitted(jnp.asarray(scale * theta, jnp.float32), inverse, prune), eager, rtol=1e-6)


def test_obs_saliency_is_theta_squared_over_twice_the_inverse_diagonal():
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(2, 5))
    inverse = np.linalg.inv(_fisher_blocks(rng.normal(size=(6, 10)), 4, 0.3))
    saliency = obs_saliency(jnp.asarray(theta, jnp.float32), jnp.asarray(inverse, jnp.float32))
    diagonal = np.concatenate([np.diag(block) for block in inverse])[:10]
    assert saliency.shape == (2, 5) and saliency.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(saliency), (theta.reshape(-1) ** 2 / (2 * diagonal)).reshape(2, 5), rtol=1e-5)


def test_woodfisher_rejects_mismatched_shapes():
    inverse = fisher_inverse_init(10, 4, 1.0)
    with pytest.raises(ValueError, match="covers 9 to 12 weights, got 13"):
        obs_saliency(jnp.ones(13), inverse)
    with pytest.raises(ValueError, match="covers 9 to 12 weights, got 8"):
        woodbury_update(inverse, jnp.ones((2, 8)), 2)
    with pytest.raises(ValueError, match=r"\(examples, size\)"):
        woodbury_update(inverse, jnp.ones(10), 1)
    with pytest.raises(ValueError, match="num_examples"):
        woodbury_update(inverse, jnp.ones((1, 10)), 0)
    with pytest.raises(ValueError, match="bool array shaped like theta"):
        obs_update(jnp.ones(10), inverse, jnp.ones(10))
    with pytest.raises(ValueError, match="stack of inverse Fisher blocks"):
        obs_saliency(jnp.ones(4), jnp.eye(4))
