"""Movement pruning: scores, the hard and soft masks, dense storage, jit, errors and the command line.

Expected scores, counts and masks are computed here with numpy from the documented rules (Sanh,
Wolf, Rush 2020), never with the library's own selection.
"""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsparse as jsp
from jaxsparse.algorithms import MovementPruning, MovementState
from jaxsparse.masks import NM, OutputChannels
from jaxsparse.training import Config, ConfigError, main
from tests.helpers import make_batch, make_mlp, make_train_step

SIZES = (8, 6, 4)  # kernels (8, 6) and (6, 4)
LAYERS = ("layer_0", "layer_1")


def _grads(key, params):
    """Dense random gradients shaped like ``params`` (every position, as the wrapper receives them)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves, strict=True)]
    )


def _ramp(t: int, begin: int, end: int) -> float:
    """Zhu & Gupta's cubic ramp ``1 - (1 - (t - b) / (e - b))^3``, clipped to ``[0, 1]`` (float64)."""
    progress = min(max((t - begin) / (end - begin), 0.0), 1.0)
    return 1.0 - (1.0 - progress) ** 3


def _kernels(tree) -> dict[str, np.ndarray]:
    return {layer: np.asarray(tree[layer]["kernel"]) for layer in LAYERS}


# ----- scores ------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", [None, OutputChannels()], ids=["unstructured", "channel"])
def test_hard_scores_accumulate_minus_the_sum_of_gradient_times_weight(structure):
    """``S_T = -sum_{t<T} dL/dW'_t * W_t`` with the dense gradient and the stored (dense) weights; groups sum."""
    params = make_mlp(jax.random.key(0), SIZES)
    layout = {} if structure is None else {"structure": structure}
    algo = jsp.movement(0.5, distribution="uniform", end_step=3, **layout)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(1))
    state = tx.init(params)
    update = jax.jit(tx.update)
    expected = {layer: 0.0 for layer in LAYERS}
    for t in range(5):
        grads = _grads(jax.random.key(10 + t), params)
        for layer in LAYERS:
            movement = np.asarray(grads[layer]["kernel"], np.float64) * np.asarray(params[layer]["kernel"], np.float64)
            expected[layer] = expected[layer] - (movement if structure is None else movement.sum(0))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        scores = _kernels(state.algorithm_state.scores)
        for layer in LAYERS:
            np.testing.assert_allclose(scores[layer], expected[layer], rtol=1e-5, atol=1e-6, err_msg=f"{layer} {t}")
    assert isinstance(state.algorithm_state, MovementState)
    assert jsp.masks_of(state)["layer_0"]["kernel"].shape == (8, 6)


def test_soft_scores_take_the_sigmoid_penalty_on_the_ramp():
    """``S <- S - alpha (g W + lambda r_t sigma(S)(1 - sigma(S)))``, ``r_t`` the cubic ramp."""
    params = make_mlp(jax.random.key(0), SIZES)
    penalty, rate, begin, end = 0.7, 0.5, 1, 4
    algo = jsp.movement(0.5, variant="soft", penalty=penalty, score_learning_rate=rate, begin_step=begin, end_step=end)
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(1))
    state = tx.init(params)
    update = jax.jit(tx.update)
    expected = {layer: np.zeros(params[layer]["kernel"].shape) for layer in LAYERS}
    for t in range(6):
        grads = _grads(jax.random.key(20 + t), params)
        for layer in LAYERS:
            movement = np.asarray(grads[layer]["kernel"], np.float64) * np.asarray(params[layer]["kernel"], np.float64)
            gate = 1.0 / (1.0 + np.exp(-expected[layer]))
            strength = penalty * _ramp(t, begin, end)
            expected[layer] = expected[layer] - rate * (movement + strength * gate * (1.0 - gate))
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        scores = _kernels(state.algorithm_state.scores)
        for layer in LAYERS:
            np.testing.assert_allclose(scores[layer], expected[layer], rtol=1e-5, atol=1e-6, err_msg=f"{layer} {t}")


# ----- the hard variant --------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_hard_variant_keeps_exactly_the_scheduled_counts_of_the_top_scores(scope):
    """The forward pass of step ``t`` keeps the ``N - floor(S r_t N)`` highest scores after step ``t - 1``."""
    params = make_mlp(jax.random.key(0), SIZES)
    sparsity, begin, end = 0.75, 2, 9
    algo = jsp.movement(sparsity, distribution="uniform", begin_step=begin, end_step=end, scope=scope)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(1))
    state = tx.init(params)
    step = jax.jit(make_train_step(tx))
    plans = [plan for plan in algo.plan(params) if plan is not None]
    total = sum(plan.size for plan in plans)
    for t in range(13):
        assert int(state.step) == t
        masks, scores = _kernels(jsp.masks_of(state)), _kernels(state.algorithm_state.scores)
        s = sparsity * _ramp(t, begin, end)
        if scope == "layer":
            for plan, layer in zip(plans, LAYERS, strict=True):
                count = plan.active if t >= end else plan.size - math.floor(s * plan.size)
                assert masks[layer].sum() == count, (t, layer)
                if t > 0:  # the kept ones are the top scores (distinct: random gradients)
                    order = np.argsort(-scores[layer].ravel())
                    np.testing.assert_array_equal(np.flatnonzero(masks[layer].ravel()), np.sort(order[:count]))
        else:
            count = total - math.floor((sparsity if t >= end else s) * total)
            assert sum(m.sum() for m in masks.values()) == count, t
            if t > 0:
                pooled = np.concatenate([scores[layer].ravel() for layer in LAYERS])
                kept = np.concatenate([masks[layer].ravel() for layer in LAYERS])
                np.testing.assert_array_equal(np.flatnonzero(kept), np.sort(np.argsort(-pooled)[:count]))
        if t <= begin:
            assert all(m.all() for m in masks.values())  # the warm-up is dense
        params, state = step(params, state, make_batch(jax.random.key(100 + t), 16, SIZES[0], SIZES[-1]))


def test_a_pruned_weight_whose_score_overtakes_a_kept_one_comes_back_with_its_stored_value():
    """Weights are stored densely: a pruned weight keeps its value, its score moves on, and it returns."""
    w = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    params = {"w": w}
    algo = jsp.movement(0.5, distribution="uniform", end_step=1)  # 2 of 4 from step 1 on
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(0))
    state = tx.init(params)
    assert bool(jsp.masks_of(state)["w"].all())

    def movement_of(target):  # gradients whose movement -g * W is ``target``
        return {"w": -jnp.asarray(target) / params["w"]}

    updates, state = tx.update(movement_of([[1.0, 1.0], [0.0, 0.0]]), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(jsp.masks_of(state)["w"], [[True, True], [False, False]])
    np.testing.assert_array_equal(params["w"][1], [3.0, 4.0])  # pruned, stored, untouched
    np.testing.assert_array_equal(jsp.forward_params(params, state)["w"][1], [0.0, 0.0])
    after_first = np.asarray(params["w"])

    updates, state = tx.update(movement_of([[0.5, -3.0], [5.0, 0.0]]), state, params)
    params = optax.apply_updates(params, updates)
    # Scores [[1.5, -2], [5, 0]]: the pruned (1, 0) overtakes the kept (0, 1), which leaves.
    np.testing.assert_allclose(state.algorithm_state.scores["w"], [[1.5, -2.0], [5.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(jsp.masks_of(state)["w"], [[True, False], [True, False]])
    assert float(params["w"][0, 1]) == after_first[0, 1]  # the leaver keeps its value
    assert float(params["w"][1, 1]) == 4.0  # never back: never moved
    assert float(jsp.forward_params(params, state)["w"][1, 0]) == float(params["w"][1, 0]) != 0.0


def test_forward_params_are_zero_off_the_mask_while_storage_stays_dense():
    """Top-KAST's invariant: ``forward_params`` exactly 0 off the mask; stored weights and the optimizer off it."""
    params = make_mlp(jax.random.key(0), SIZES)
    algo = jsp.movement(0.8, distribution="uniform", end_step=5)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(1))
    state = tx.init(params)
    step = jax.jit(make_train_step(tx))
    held = {}
    for t in range(9):
        params, state = step(params, state, make_batch(jax.random.key(t), 16, SIZES[0], SIZES[-1]))
        masks, forward, stored = (
            _kernels(jsp.masks_of(state)),
            _kernels(jsp.forward_params(params, state)),
            _kernels(params),
        )
        mu = _kernels(state.inner_state[0].mu)
        for layer in LAYERS:
            off = ~masks[layer]
            assert (forward[layer][off] == 0).all() and (forward[layer][~off] == stored[layer][~off]).all()
            assert (mu[layer][off] == 0).all()  # the inner optimizer never saw a gradient off the mask
            if layer in held:  # off the mask on consecutive steps: exactly where it was
                both = off & held[layer][0]
                np.testing.assert_array_equal(stored[layer][both], held[layer][1][both])
            held[layer] = (off, stored[layer])
    assert all((stored[layer][~masks[layer]] != 0).any() for layer in LAYERS)  # dense storage
    stats = jsp.layer_stats(params, state)
    assert [s.sparsity for s in stats if s.sparsified] == pytest.approx([0.8, 0.8], abs=0.02)


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_runs_under_jit_without_retracing(variant):
    params = make_mlp(jax.random.key(0), SIZES)
    soft = dict(penalty=0.5, score_learning_rate=1.0) if variant == "soft" else {}
    algo = jsp.movement(0.5, variant=variant, update_every=2, end_step=4, **soft)
    tx = jsp.sparsify(optax.adam(1e-2), algo, key=jax.random.key(1))
    step = jax.jit(chex.assert_max_traces(make_train_step(tx), n=1))
    chex.clear_trace_counter()
    state = tx.init(params)
    for t in range(6):  # update and non-update steps, ramp and cool-down
        params, state = step(params, state, make_batch(jax.random.key(t), 16, SIZES[0], SIZES[-1]))
    assert step._cache_size() == 1


# ----- the soft variant --------------------------------------------------------------------------


def test_soft_mask_is_exactly_the_scores_above_the_scheduled_threshold():
    params = make_mlp(jax.random.key(0), SIZES)
    begin, end = 1, 6
    algo = jsp.movement(0.5, variant="soft", penalty=0.5, score_learning_rate=1.0, begin_step=begin, end_step=end)
    assert float(algo.threshold_at(begin)) == -math.inf and float(algo.threshold_at(end)) == np.float32(algo.threshold)
    assert algo.threshold == pytest.approx(math.log(0.1 / 0.9)) and algo.scope == "global"
    sigma = 1.0 / (1.0 + np.exp(-algo.threshold))
    tx = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(1))
    state = tx.init(params)
    update = jax.jit(tx.update)
    sparsities = []
    for t in range(10):
        updates, state = update(_grads(jax.random.key(30 + t), params), state, params)
        params = optax.apply_updates(params, updates)
        following = int(state.step)  # these masks serve step t + 1's forward pass
        threshold = float(algo.threshold_at(following))
        r = _ramp(following, begin, end)
        if 0 < r < 1:
            assert threshold == pytest.approx(math.log(sigma * r / (1 - sigma * r)), rel=1e-5)
        masks, scores = _kernels(jsp.masks_of(state)), _kernels(state.algorithm_state.scores)
        for layer in LAYERS:
            np.testing.assert_array_equal(masks[layer], scores[layer] > np.float32(threshold), err_msg=f"{layer} {t}")
        sparsities.append(jsp.total_sparsity(state))
    assert sparsities[0] == 0.0 and 0.0 < sparsities[-1] < 1.0  # counts follow the scores, not a target


# ----- cost model, registration, errors, command line ---------------------------------------------


def test_training_flops_count_the_dense_weight_gradient():
    """``(2 f_S(t) + f_D) / 3 f_D``: one layer, the ramp 0 -> 0.8 over steps 0..4, then 0.8."""
    hard = jsp.movement(0.8, distribution="uniform", end_step=4)
    flops, density = np.array([10.0]), np.array([0.2])
    in_effect = [0.8 * _ramp(t, 0, 4) for t in range(8)]  # masks of step t: set after step t - 1
    expected = np.mean([(2.0 * (1.0 - s) + 1.0) / 3.0 for s in in_effect])
    assert hard.training_flops(flops, density, density, 8, ["w"], [None]) == pytest.approx(expected)
    soft = jsp.movement(0.8, variant="soft", penalty=1.0, score_learning_rate=1.0, end_step=4)
    assert soft.training_flops(flops, density, density, 8, ["w"], [None]) == pytest.approx((2 * 0.2 + 1) / 3)


def test_registered_with_its_options_and_exported():
    method = jsp.algorithms.lookup("movement")
    assert [o.name for o in method.options] == [
        "movement_variant",
        "movement_penalty",
        "movement_score_lr",
        "movement_threshold",
    ]
    assert jsp.movement is jsp.algorithms.movement
    algo = method.make(0.9, update_every=50, begin_step=10, end_step=75, steps=100)
    assert isinstance(algo, MovementPruning) and algo.schedule.update_every == 1  # every step, as the paper
    assert (algo.ramp_end, algo.schedule.begin_step, algo.schedule.end_step) == (75, 10, None)
    soft = method.make(0.9, options={"movement_variant": "soft", "movement_penalty": 2.0, "movement_score_lr": 3.0},
                       end_step=75)  # fmt: skip
    assert (soft.variant, soft.penalty, soft.score_learning_rate) == ("soft", 2.0, 3.0)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: jsp.movement(0.5, variant="medium", end_step=5), ValueError, "unknown movement variant 'medium'"),
        (lambda: jsp.movement(0.5, end_step=5, scope="model"), ValueError, "unknown scope 'model'"),
        (lambda: jsp.movement(0.5, end_step=5, penalty=1.0), ValueError, "only variant='soft' takes penalty"),
        (lambda: jsp.movement(0.5, end_step=5, score_learning_rate=1.0), ValueError, "takes score_learning_rate"),
        (lambda: jsp.movement(0.5, variant="soft", end_step=5), ValueError, "needs penalty .* and score_learning_rate"),
        (
            lambda: jsp.movement(0.5, variant="soft", penalty=-1.0, score_learning_rate=1.0, end_step=5),
            ValueError,
            "penalty must be a finite float >= 0",
        ),
        (
            lambda: jsp.movement(0.5, variant="soft", penalty=1.0, score_learning_rate=0.0, end_step=5),
            ValueError,
            "score_learning_rate must be a finite float > 0",
        ),
        (
            lambda: jsp.movement(0.5, variant="soft", penalty=1.0, score_learning_rate=-2.0, end_step=5),
            ValueError,
            "score_learning_rate must be a finite float > 0",
        ),
        (
            lambda: jsp.movement(
                0.5, variant="soft", penalty=1.0, score_learning_rate=1.0, threshold=math.inf, end_step=5
            ),
            ValueError,
            "threshold must be a finite float",
        ),
        (
            lambda: jsp.movement(0.5, variant="soft", penalty=1.0, score_learning_rate=1.0, scope="layer", end_step=5),
            ValueError,
            "its scope is 'global'",
        ),
        (
            lambda: jsp.movement(
                None, variant="soft", penalty=1.0, score_learning_rate=1.0, structure=NM(2, 4), end_step=5
            ),  # fmt: skip
            ValueError,
            "cannot keep the per-row counts",
        ),
        (lambda: jsp.movement(None, structure=NM(2, 4), scope="global", end_step=5), ValueError, "use scope='layer'"),
        (lambda: jsp.movement(0.5, end_step=0), ValueError, "must be after begin_step"),
        (
            lambda: jsp.movement(0.5, end_step=5, skip_optimizer_on_update=True),
            ValueError,
            "would skip every optimizer step",
        ),
        (
            lambda: jsp.movement(0.5, variant="soft", penalty="big", score_learning_rate=1.0, end_step=5),
            TypeError,
            "penalty must be a float >= 0",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="movement_penalty=-1.0 is invalid: must be a float >= 0"):
        Config(method="movement", options={"movement_penalty": -1.0})
    with pytest.raises(ConfigError, match="movement_variant='medium' is invalid: must be 'hard' or 'soft'"):
        Config(method="movement", options={"movement_variant": "medium"})


def test_trains_from_the_command_line(tmp_path, capsys):
    flags = ["--dataset", "digits", "--model", "mlp", "--steps", "12", "--batch-size", "32", "--end-step", "8"]
    assert main(["train", *flags, "--method", "movement", "--sparsity", "0.8", "--out", str(tmp_path), "--quiet"]) == 0
    assert "movement on digits/mlp" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["method"] == "movement"
    assert summary["sparsity"] == pytest.approx(0.8, abs=1e-3)  # the layout's exact counts after the ramp
    assert 0 < summary["flops"]["inference_ratio"] < summary["flops"]["training_ratio"] < 1
    with pytest.raises(SystemExit) as exit_:
        main(["train", *flags, "--method", "movement", "--movement-variant", "soft", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "soft movement pruning needs penalty (--movement-penalty)" in capsys.readouterr().err
