"""The training harness: config, builders, metrics log and one small end-to-end run."""

from __future__ import annotations

import csv
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as jsp
from jaxsparse.training import (
    COLUMNS,
    Config,
    ConfigError,
    MetricsLog,
    _loop,
    compilation_cache,
    learning_rate_schedule,
    make_algorithm,
    make_optimizer,
    mask_change,
    train,
)

# A run small enough to train in seconds: 40 steps of RigL on digits, masks updated every 5 steps
# up to end_step 30, evaluated every 10 steps and saved every 20. test_checkpoint and test_cli train
# with the same settings, so all of them share one set of compiled programs through the cache.
SMALL = dict(dataset="digits", model="mlp", steps=40, batch_size=32, update_every=5, eval_every=10, checkpoint_every=20)


@pytest.fixture(scope="module", autouse=True)
def _shared_compilations(tmp_path_factory):
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache"):
        yield


# --- config -------------------------------------------------------------------------------------


def test_defaults_are_the_bare_run():
    config = Config()
    assert (config.method, config.sparsity, config.distribution, config.dataset) == ("rigl", 0.9, "erk", "mnist1d")
    assert config.mask_end_step == int(0.75 * config.steps)


def test_dense_records_zero_sparsity():
    assert Config(method="dense", sparsity=0.9).sparsity == 0.0


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(sparsity=1.0), "sparsity=1.0 is invalid: must be in [0, 1)"),
        (dict(method="rigel"), "did you mean 'rigl'"),
        (dict(distribution="erdos"), "choose one of uniform, er, erk"),
        (dict(steps=0), "steps=0 is invalid"),
        (dict(method="top_kast", sparsity=0.8, options={"backward_sparsity": 0.9}), "backward_sparsity=0.9 is invalid"),
        (dict(options={"drop_fraktion": 0.1}), "unknown method option 'drop_fraktion' (did you mean 'drop_fraction'?)"),
        (dict(end_step=200, steps=100), "end_step=200 is invalid: must be at most steps=100"),
        (dict(begin_step=80, steps=100), "begin_step=80 is invalid: must be >= 0 and before the last mask-update"),
        (dict(warmup_steps=100, steps=100), "warmup_steps=100 is invalid"),
        (dict(seed=-1), "seed=-1 is invalid: must be a non-negative integer"),
    ],
)
def test_bad_values_name_the_field_and_the_fix(changes, message):
    with pytest.raises(ConfigError) as error:
        Config(**changes)
    assert message in str(error.value)


def test_from_dict_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown setting 'sparsty' \\(did you mean 'sparsity'\\?\\)"):
        Config.from_dict({"sparsty": 0.5})
    with pytest.raises(ConfigError, match="steps='10' must be of type int, got str"):
        Config.from_dict({"steps": "10"})
    with pytest.raises(ConfigError, match="steps=True must be of type int"):
        Config.from_dict({"steps": True})
    assert Config.from_dict({"sparsity": 0, "end_step": None}).sparsity == 0.0  # TOML/JSON ints for floats


def test_files_round_trip(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nmethod = "set"\nsparsity = 0.8\nsteps = 100\nlearning_rate = 1\n')
    config = Config.from_file(toml)
    assert (config.method, config.sparsity, config.steps, config.learning_rate) == ("set", 0.8, 100, 1.0)
    config.save(tmp_path / "config.json")
    assert Config.from_file(tmp_path / "config.json") == config
    assert hash(config) == hash(Config.from_file(tmp_path / "config.json"))
    (tmp_path / "run.yaml").write_text("method: set")
    with pytest.raises(ConfigError, match="must end in .toml or .json"):
        Config.from_file(tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_file(tmp_path / "missing.toml")


def test_mismatches_ignore_bookkeeping_fields():
    config = Config(steps=100)
    assert config.mismatches(config.replace(eval_every=7, out_dir="elsewhere", checkpoint_every=3)) == []
    assert config.mismatches(config.replace(method="set", sparsity=0.5, seed=1)) == ["method", "sparsity", "seed"]


# --- builders -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, kind", [("static", "static"), ("set", "set"), ("rigl", "rigl"), ("gradual_magnitude", "gradual_magnitude")]
)
def test_make_algorithm(method, kind):
    algorithm = make_algorithm(
        Config(method=method, steps=200, update_every=20, distribution="uniform", dense_first_layer=True)
    )
    assert algorithm.name == kind
    assert (algorithm.layout.distribution, algorithm.layout.dense_first_layer) == ("uniform", True)
    if method != "static":
        assert (algorithm.schedule.update_every, algorithm.schedule.end_step) == (20, 150)


def test_make_algorithm_dense_and_top_kast():
    assert make_algorithm(Config(method="dense")) is None
    top_kast = make_algorithm(Config(method="top_kast", sparsity=0.9))
    assert (top_kast.layout.sparsity, top_kast.backward_layout.sparsity) == (0.9, pytest.approx(0.8))
    assert (
        make_algorithm(
            Config.from_dict({"method": "top_kast", "sparsity": 0.9, "backward_sparsity": 0.5})
        ).backward_layout.sparsity
        == 0.5
    )


def test_learning_rate_schedules():
    steps = jnp.array([0, 5, 10, 110])
    cosine = learning_rate_schedule(Config(learning_rate=2.0, steps=110, warmup_steps=10))
    np.testing.assert_allclose(cosine(steps), [0.0, 1.0, 2.0, 0.0], atol=1e-6)
    constant = learning_rate_schedule(Config(learning_rate=2.0, steps=110, warmup_steps=10, lr_schedule="constant"))
    np.testing.assert_allclose(constant(steps), [0.0, 1.0, 2.0, 2.0], atol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_reaches_kernels_only(optimizer):
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    tx = make_optimizer(Config(optimizer=optimizer, weight_decay=0.1, learning_rate=0.5, lr_schedule="constant"))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    assert np.all(np.asarray(updates["kernel"]) < 0)
    assert np.all(np.asarray(updates["bias"]) == 0)


# --- metrics ------------------------------------------------------------------------------------


def test_mask_change_counts_dropped_active_weights():
    old = {"a": np.array([True, True, True, True]), "b": None, "c": np.array([True, False])}
    new = {"a": np.array([True, False, False, True]), "b": None, "c": np.array([False, True])}
    assert mask_change(old, new) == pytest.approx(3 / 5)
    assert mask_change(old, old) == 0.0


def _row(step):
    return dict(zip(COLUMNS, [step, 1.0, 2.0, 0.5, 0.9, 0.1, 3.0], strict=True))


def test_metrics_log_truncates_to_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path, keep_until=None)
    for step in (10, 20, 30):
        log.append(_row(step))
    resumed = MetricsLog(tmp_path, keep_until=20)
    resumed.append(_row(30))
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    with (tmp_path / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in jsonl] == [10, 20, 30]
    assert [int(row["step"]) for row in rows] == [10, 20, 30]
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"step": 40, "train_')  # a row cut short by a kill
    assert [row["step"] for row in MetricsLog(tmp_path, keep_until=30).rows] == [10, 20, 30]
    assert MetricsLog(tmp_path, keep_until=None).rows == []  # a fresh run starts an empty log
    with pytest.raises(ValueError, match="exactly the columns"):
        log.append({"step": 1})


# --- one run end to end -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rigl_run(tmp_path_factory):
    return train(Config(**SMALL, out_dir=str(tmp_path_factory.mktemp("rigl"))), progress=False)


def test_run_writes_every_result_file(rigl_run):
    folder = rigl_run.out_dir
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "summary.json"):
        assert (folder / name).is_file(), name
    for name in ("curves.png", "layer_sparsity.png", "mask_change.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert Config.from_file(folder / "config.json") == rigl_run.config
    assert sorted(int(p.name) for p in (folder / "checkpoints").iterdir()) == [20, 40]


def test_run_metrics(rigl_run):
    rows = rigl_run.metrics
    assert [row["step"] for row in rows] == [10, 20, 30, 40]
    assert [json.loads(line) for line in (rigl_run.out_dir / "metrics.jsonl").read_text().splitlines()] == rows
    for row in rows:
        assert row["sparsity"] == pytest.approx(0.9, abs=1e-3)
        assert 0.0 <= row["test_accuracy"] <= 1.0 and np.isfinite(row["train_loss"])
    # Masks change every 5 steps up to end_step = 30, and never after.
    assert all(row["mask_change"] > 0 for row in rows[:3]) and rows[3]["mask_change"] == 0.0
    assert rows[-1]["test_accuracy"] > 0.5  # 10 classes: training did learn
    assert [row["wall_time"] for row in rows] == sorted(row["wall_time"] for row in rows)


def test_run_is_exactly_sparse(rigl_run):
    algorithm = make_algorithm(rigl_run.config)
    params, masks = rigl_run.params, rigl_run.masks
    for plan, mask, leaf in zip(
        algorithm.plan(params),
        jax.tree.leaves(masks, is_leaf=lambda x: x is None),
        jax.tree.leaves(params),
        strict=True,
    ):
        if plan is None:
            assert mask is None
            continue
        assert int(mask.sum()) == plan.active
        assert not np.any(np.asarray(leaf)[~mask])


def test_run_summary(rigl_run):
    summary = json.loads((rigl_run.out_dir / "summary.json").read_text())
    assert summary == rigl_run.report
    assert summary["final"] == rigl_run.metrics[-1]
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-3)
    kernels = [layer for layer in summary["layers"] if layer["sparsified"]]
    assert len(kernels) == 3 and all(layer["nonzero"] <= layer["active"] for layer in kernels)
    assert summary["summary_table"] == jsp.summary(rigl_run.params, rigl_run.masks)
    flops = summary["flops"]
    # ERK keeps the small layers denser, so the FLOPs ratio is near, not at, the 10% density.
    assert 0.05 < flops["inference_ratio"] < 0.2
    assert flops["inference_ratio"] < flops["training_ratio"] < 1.0  # RigL's dense-gradient steps cost extra
    assert set(summary["versions"]) >= {"python", "jax", "jaxsparse", "optax", "orbax-checkpoint"}
    assert summary["wall_time"] > 0


def test_out_dir_with_a_run_needs_resume(rigl_run):
    with pytest.raises(ConfigError, match="already holds a run .*resume"):
        train(rigl_run.config)


def test_resume_with_other_settings_names_them(rigl_run):
    changed = rigl_run.config.replace(method="set", sparsity=0.8, eval_every=5)
    with pytest.raises(ConfigError, match="these settings differ from the checkpointed run") as error:
        train(changed, resume=True)
    assert "method (checkpoint 'rigl', requested 'set'), sparsity (checkpoint 0.9, requested 0.8)." in str(error.value)


class _BatchNormMLP(nn.Module):
    """A model with a ``batch_stats`` collection that compiles in a fraction of ResNet-20's time."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(self.num_classes)(nn.relu(x))


def test_dense_run_with_batch_norm(tmp_path, monkeypatch):
    """Dense training uses the plain optimizer; batch statistics train, are saved and resume."""
    monkeypatch.setattr(_loop, "create_model", lambda name, *, num_classes, input_shape: _BatchNormMLP(num_classes))
    config = Config(method="dense", dataset="digits", steps=4, eval_every=4, batch_size=16, out_dir=str(tmp_path))
    result = train(config, progress=False)
    assert result.masks is None and not isinstance(result.opt_state, jsp.SparsifyState)
    assert result.report["flops"]["inference_ratio"] == 1.0 and result.metrics[-1]["sparsity"] == 0.0
    stats = result.model_state["batch_stats"]
    means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(stats) if "mean" in jax.tree_util.keystr(path)]
    assert means and all(np.any(np.asarray(mean) != 0) for mean in means)  # running means moved off their zero init
    again = train(config, resume=True, progress=False)  # a finished run: restored, not retrained
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(again.model_state["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.metrics == result.metrics
