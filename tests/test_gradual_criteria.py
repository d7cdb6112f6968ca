"""Gradual pruning by magnitude, first-order Taylor importance or OBD: the averaged state, the pruned set, counts.

Every expectation is computed here with numpy from the documented formulas (Molchanov et al. 2019;
LeCun, Denker, Solla 1990; Zhu & Gupta 2017), never with the library's own selection.
"""

import math

import chex
import jax
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from jaxsparse.algorithms import GRADUAL_CRITERIA, GradualState
from jaxsparse.masks import OutputChannels
from jaxsparse.training import Config, ConfigError, make_algorithm
from tests.helpers import make_batch, make_mlp, make_train_step

SIZES = (8, 6, 4)  # kernels (8, 6) and (6, 4)
LAYERS = ("layer_0", "layer_1")
SPARSITY, BEGIN, END, EVERY = 0.5, 2, 8, 3  # prunes at steps 2, 5 and 8


def _grads(key, params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves, strict=True)]
    )


def _groups(values: np.ndarray, channels: bool) -> np.ndarray:
    """Sums over each group: the kernel's columns (output channels), or the weights themselves."""
    return values.sum(0) if channels else values


def _term(criterion: str, theta: np.ndarray, g: np.ndarray, channels: bool) -> np.ndarray:
    """One step's term: Taylor ``(sum_G g theta)^2`` per group, OBD's ``g^2`` per weight."""
    return _groups(g * theta, channels) ** 2 if criterion == "taylor" else g**2


def _score(criterion: str, theta: np.ndarray, average, channels: bool) -> np.ndarray:
    """The pruning score: ``|theta|`` (a group's L2 or L1 norm), the averaged Taylor term, or ``sum_G F theta^2/2``."""
    if criterion == "magnitude":
        return np.sqrt(_groups(theta**2, channels)) if channels else np.abs(theta)
    if criterion == "l1":
        return _groups(np.abs(theta), channels)
    if criterion == "taylor":
        return average
    return _groups(0.5 * average * theta**2, channels)


def _scheduled(t: int) -> float:
    """Zhu & Gupta's ``s_t = S (1 - (1 - (t - t_0) / (t_end - t_0))^3)`` from ``s_i = 0``, in float64."""
    progress = min(max((t - BEGIN) / (END - BEGIN), 0.0), 1.0)
    return SPARSITY * (1.0 - (1.0 - progress) ** 3)


def _keep(score: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` best candidates by ``score`` (brute force: a full sort)."""
    order = [i for i in np.argsort(-score.ravel(), kind="stable") if candidates.ravel()[i]]
    kept = np.zeros(score.size, bool)
    kept[order[:count]] = True
    return kept.reshape(score.shape)


def _run(criterion: str, channels: bool, scope: str = "layer", steps: int = 10):
    """Hand-made gradients through ``sparsify``; yields ``(t, params before, grads, state before, state after)``."""
    params = make_mlp(jax.random.key(0), SIZES)
    layout = {"structure": OutputChannels()} if channels else {}
    algo = jsp.gradual_magnitude(
        SPARSITY, distribution="uniform", begin_step=BEGIN, end_step=END, update_every=EVERY,
        criterion=criterion, scope=scope, **layout,
    )  # fmt: skip
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(1))
    state = tx.init(params)
    params = jsp.apply_masks(params, state)
    update = jax.jit(tx.update)
    for t in range(steps):
        grads = _grads(jax.random.key(50 + t), params)
        updates, after = update(grads, state, params)
        yield t, params, grads, state, after
        params, state = optax.apply_updates(params, updates), after


def _np(tree) -> dict[str, np.ndarray]:
    return {layer: np.asarray(tree[layer]["kernel"], np.float64) for layer in LAYERS}


@pytest.mark.parametrize("channels", [False, True], ids=["unstructured", "channel"])
@pytest.mark.parametrize("criterion", ["taylor", "obd"])
def test_state_is_the_average_of_the_step_terms_since_the_last_prune(criterion, channels, fast_compiles):
    terms = {layer: [] for layer in LAYERS}
    for t, params, grads, _, after in _run(criterion, channels):
        theta, g = _np(params), _np(grads)
        for layer in LAYERS:
            terms[layer].append(_term(criterion, theta[layer], g[layer], channels))
        state = after.algorithm_state
        assert isinstance(state, GradualState)
        if bool(after.algorithm.is_update_step(t)):  # pruned: the average restarts
            terms = {layer: [] for layer in LAYERS}
            assert int(state.count) == 0
            assert all((a == 0).all() for a in _np(state.average).values())
            continue
        assert int(state.count) == len(terms["layer_0"])
        for layer, average in _np(state.average).items():
            np.testing.assert_allclose(average, np.mean(terms[layer], axis=0), rtol=1e-5, atol=1e-7, err_msg=f"{t}")


@pytest.mark.parametrize(
    ("criterion", "channels", "scope"),
    [(c, False, "layer") for c in GRADUAL_CRITERIA]
    + [(c, True, "layer") for c in GRADUAL_CRITERIA]
    + [(c, False, "global") for c in ("taylor", "obd")],
)
def test_pruned_set_is_the_brute_force_ranking_at_exact_counts(criterion, channels, scope, fast_compiles):
    """At each prune step the kept set is the top of the criterion among the active entries, at ``s_t``'s count."""
    terms = {layer: [] for layer in LAYERS}
    prunes = 0
    for t, params, grads, before, after in _run(criterion, channels, scope):
        theta, g = _np(params), _np(grads)
        for layer in LAYERS:
            terms[layer].append(_term(criterion, theta[layer], g[layer], channels))
        old, new = _np(before.masks), _np(after.masks)  # group level
        if not bool(after.algorithm.is_update_step(t)):
            assert all((old[layer] == new[layer]).all() for layer in LAYERS)
            continue
        prunes += 1
        scores = {layer: _score(criterion, theta[layer], np.mean(terms[layer], axis=0), channels) for layer in LAYERS}
        terms = {layer: [] for layer in LAYERS}
        s = SPARSITY if t >= END else _scheduled(t)
        if scope == "layer":
            for layer in LAYERS:
                size = new[layer].size
                count = size - math.floor(s * size)
                assert new[layer].sum() == count, (t, layer)
                np.testing.assert_array_equal(new[layer], _keep(scores[layer], old[layer] > 0, count), err_msg=f"{t}")
        else:
            total = sum(new[layer].size for layer in LAYERS)
            count = total - math.floor(s * total)
            pooled = np.concatenate([scores[layer].ravel() for layer in LAYERS])
            candidates = np.concatenate([old[layer].ravel() > 0 for layer in LAYERS])
            kept = np.concatenate([new[layer].ravel() > 0 for layer in LAYERS])
            assert kept.sum() == count, t
            np.testing.assert_array_equal(kept, _keep(pooled, candidates, count), err_msg=f"{t}")
    assert prunes == 3


@pytest.mark.parametrize("criterion", ["taylor", "obd"])
def test_gradient_criteria_train_under_jit_to_the_exact_final_counts(criterion, fast_compiles):
    params = make_mlp(jax.random.key(0), SIZES)
    algo = jsp.gradual_magnitude(0.75, end_step=6, update_every=2, criterion=criterion)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(1))
    state = tx.init(params)
    step = jax.jit(chex.assert_max_traces(make_train_step(tx), n=1))
    chex.clear_trace_counter()
    for t in range(8):
        params, state = step(params, state, make_batch(jax.random.key(t), 16, SIZES[0], SIZES[-1]))
    assert step._cache_size() == 1
    plans = [plan for plan in algo.plan(params) if plan is not None]
    masks = _np(jsp.masks_of(state))
    assert [int(masks[layer].sum()) for layer in LAYERS] == [plan.active for plan in plans]
    for layer in LAYERS:
        assert (np.asarray(params[layer]["kernel"])[masks[layer] == 0] == 0).all()


def test_the_default_criterion_is_magnitude_and_unchanged():
    """Magnitude keeps its stateless form (``()``); the default's masks are the brute-force ranking (above)."""
    default = jsp.gradual_magnitude(0.8, end_step=10)
    assert default.criterion == "magnitude"
    assert default == jsp.gradual_magnitude(0.8, end_step=10, criterion="magnitude")
    params = make_mlp(jax.random.key(0), SIZES)
    assert default.init_state(params, jax.jit(default.init_masks)(params, jax.random.key(0))) == ()
    assert jsp.algorithms.lookup("gradual_magnitude").make(0.8, end_step=10) == default
    assert make_algorithm(Config(method="gradual_magnitude", steps=100)).criterion == "magnitude"
    assert (
        make_algorithm(Config(method="gradual_magnitude", steps=100, options={"criterion": "obd"})).criterion == "obd"
    )


def test_bad_criteria_raise_clear_errors():
    with pytest.raises(ValueError, match=r"'wanda'; choose one of magnitude, l1, taylor, obd.*one_shot"):
        jsp.gradual_magnitude(0.8, end_step=10, criterion="wanda")
    with pytest.raises(ValueError, match="step 0 does not have"):
        jsp.gradual_magnitude(0.8, end_step=10, criterion="taylor", initial_sparsity=0.5)
    with pytest.raises(ConfigError, match="criterion='wanda' is invalid: must be one of magnitude, l1, taylor, obd"):
        Config(method="gradual_magnitude", options={"criterion": "wanda"})
    algo = jsp.gradual_magnitude(0.8, end_step=10, criterion="taylor")
    params = make_mlp(jax.random.key(0), SIZES)
    masks = jax.jit(algo.init_masks)(params, jax.random.key(0))
    with pytest.raises(ValueError, match="averages the training gradients: pass grads"):
        algo.update_with_state(params, masks, None, 0, jax.random.key(0), algo.init_state(params, masks))
