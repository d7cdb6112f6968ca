"""``jaxsparse compact RUN_DIR`` on a real run, and saving and restoring a compacted model."""

from __future__ import annotations

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxsparse.compaction import DamagedCompactedModelError, compact, load_compacted, save_compacted
from jaxsparse.data import eval_batches, load_dataset
from jaxsparse.models import create_model
from jaxsparse.training import Config, compilation_cache, main, train

# A channel-structured run: gradual magnitude pruning removes whole neurons.
SETTINGS = dict(
    method="gradual_magnitude",
    structure="channel",
    sparsity=0.5,
    dataset="digits",
    model="mlp",
    steps=20,
    batch_size=32,
    update_every=5,
    eval_every=20,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run, the ``compact`` command's report on it, and the run's final variables."""
    with compilation_cache(tmp_path_factory.getbasetemp() / "jax-cache"):
        out = tmp_path_factory.mktemp("run")
        result = train(Config(**SETTINGS, out_dir=str(out)), progress=False)
        assert main(["compact", str(out), "--batch-sizes", "1,8"]) == 0
    report = json.loads((out / "compact" / "report.json").read_text())
    return out, report, {"params": result.params, **result.model_state}


def _apply_fn():
    dataset = load_dataset("digits")
    model = create_model("mlp", num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    inputs = jnp.asarray(next(iter(eval_batches(dataset, batch_size=64)))["inputs"])
    return functools.partial(model.apply, train=False), inputs


def _predicted_kept(params) -> dict[str, np.ndarray]:
    """Per hidden layer, the neurons that are not provably dead or unused, from the weights alone.

    Neuron ``i`` of ``Dense_n`` is removable when it is constant (its kernel column is zero over the
    neurons kept before it, the others being constants too: it emits ``relu(b_i)``, which is 0 or is
    folded into the next dense layer as a constant) or nothing uses it (the next kernel's row ``i``
    is zero).
    """
    layers = [params[f"Dense_{n}"] for n in range(3)]
    kept, alive = {}, np.ones(layers[0]["kernel"].shape[0], bool)
    for n in range(2):
        kernel = np.asarray(layers[n]["kernel"])
        dead = np.all(kernel[alive] == 0, axis=0)
        unused = np.all(np.asarray(layers[n + 1]["kernel"]) == 0, axis=1)
        alive = ~(dead | unused)
        kept[f"Dense_{n}"] = np.flatnonzero(alive)
    return kept


def test_report_shapes_shrink_as_the_zero_channels_predict(run):
    out, report, variables = run
    kept = _predicted_kept(variables["params"])
    saved = {leaf["name"]: leaf["kept"] for leaf in json.loads((out / "compact" / "kept.json").read_text())["leaves"]}
    assert saved["params/Dense_0/kernel"] == [None, kept["Dense_0"].tolist()]
    assert saved["params/Dense_1/kernel"] == [kept["Dense_0"].tolist(), kept["Dense_1"].tolist()]
    shapes = {layer["name"]: (tuple(layer["before"]), tuple(layer["after"])) for layer in report["layers"]}
    n0, n1 = len(kept["Dense_0"]), len(kept["Dense_1"])
    assert n0 < 256 and n1 < 256  # the run has whole zero neurons to remove
    assert shapes["params/Dense_0/kernel"] == ((64, 256), (64, n0))
    assert shapes["params/Dense_0/bias"] == ((256,), (n0,))
    assert shapes["params/Dense_1/kernel"] == ((256, 256), (n0, n1))
    assert shapes["params/Dense_1/bias"] == ((256,), (n1,))
    assert shapes["params/Dense_2/kernel"] == ((256, 10), (n1, 10))
    assert shapes["params/Dense_2/bias"] == ((10,), (10,))
    assert report["parameters"]["after"] == 64 * n0 + n0 + n0 * n1 + n1 + n1 * 10 + 10
    assert report["flops_per_example"]["after"] == 2 * (64 * n0 + n0 * n1 + n1 * 10)
    assert report["flops_per_example"]["before"] == 2 * (64 * 256 + 256 * 256 + 256 * 10)


def test_both_accuracies_agree_and_speed_is_measured(run):
    out, report, _ = run
    accuracy = report["test_accuracy"]
    assert accuracy["original"] == accuracy["compacted"] and accuracy["predictions_differing"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert accuracy["original"] == pytest.approx(summary["final"]["test_accuracy"])  # the run's own evaluation
    assert [row["batch_size"] for row in report["speed"]] == [1, 8]
    assert all(row["dense_s"] > 0 and row["compact_s"] > 0 for row in report["speed"])
    text = (out / "compact" / "report.md").read_text()
    assert "params/Dense_1/kernel" in text and "speedup" in text


def test_the_saved_model_restores_with_identical_outputs(run):
    out, _, variables = run
    apply_fn, inputs = _apply_fn()
    restored = load_compacted(out / "compact", apply_fn)
    fresh = compact(apply_fn, variables, inputs[:32])
    assert jax.tree.structure(restored.params) == jax.tree.structure(fresh.params)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(fresh.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(restored(restored.params, inputs), fresh(fresh.params, inputs))
    np.testing.assert_allclose(restored(restored.params, inputs), apply_fn(variables, inputs), rtol=1e-5, atol=1e-5)
    # With a tree of the original shapes: cutting the run's variables gives the saved parameters.
    with_tree = load_compacted(out / "compact", apply_fn, jax.eval_shape(lambda: variables))
    for a, b in zip(
        jax.tree.leaves(with_tree.compact_params(variables)), jax.tree.leaves(restored.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("file, message", [("params.npz", "params.npz changed"), ("kept.json", "kept.json changed")])
def test_a_damaged_file_is_named_with_the_fix(run, tmp_path, file, message):
    out, _, _ = run
    copy = shutil.copytree(out / "compact", tmp_path / "compact")
    data = bytearray((copy / file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / file).write_bytes(bytes(data))
    with pytest.raises(DamagedCompactedModelError, match=message) as error:
        load_compacted(copy, _apply_fn()[0])
    assert "Save it again" in str(error.value) and "jaxsparse compact RUN_DIR" in str(error.value)


def test_save_and_load_keep_dtypes_structure_and_outputs(tmp_path):
    def apply_fn(p, x):
        hidden = jax.nn.relu(x @ p["w1"].astype(jnp.float32))
        return hidden @ p["w2"][0]

    params = {
        "w1": jnp.array([[1.0, 0.0, 2.0, 0.0]], ml_dtypes.bfloat16),
        "w2": [jnp.arange(8.0).reshape(4, 2)],
    }
    x = jnp.ones((3, 1))
    model = compact(apply_fn, params, x)
    assert model.params["w1"].shape == (1, 2)
    restored = load_compacted(save_compacted(model, tmp_path / "m"), apply_fn, tree_like=params)
    assert restored.params["w1"].dtype == ml_dtypes.bfloat16 and isinstance(restored.params["w2"], list)
    assert restored.report == model.report
    np.testing.assert_array_equal(restored(restored.params, x), model(model.params, x))
    save_compacted(model, tmp_path / "m")  # replaces the folder, leaving nothing else behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with pytest.raises(ValueError, match="tree_like does not match"):
        load_compacted(tmp_path / "m", apply_fn, tree_like={"w1": params["w1"]})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "missing", "no such folder"),
        (lambda tmp: tmp, "no config.json there"),
        (lambda tmp: _only_config(tmp), "no checkpoints/ folder"),
    ],
)
def test_bad_run_dirs_exit_2_with_the_problem_and_the_fix(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exit_:
        main(["compact", str(make(tmp_path))])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("jaxsparse compact: error:") and message in error


def _only_config(tmp_path):
    Config(**SETTINGS).save(tmp_path / "config.json")
    return tmp_path


def test_a_run_without_an_intact_checkpoint_exits_2(run, tmp_path, capsys):
    out, _, _ = run
    copy = shutil.copytree(out, tmp_path / "run", ignore=shutil.ignore_patterns("compact"))
    largest = max((p for p in (copy / "checkpoints").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exit_:
        main(["compact", str(copy)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "no checkpoint in" in error and "is intact" in error and "train it again" in error
    assert (copy / "checkpoints" / "20").is_dir() and not (copy / "compact").exists()  # the run is left as it was
