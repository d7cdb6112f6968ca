"""Data sets and batch streams: shapes, dtypes, determinism, epoch and test-split coverage.

The TFDS path is tested on real, tiny ArrayRecord data sets written in a temporary directory by the
real MNIST and CIFAR-10 builders, with their download replaced by generated images.
``tfds.testing.mock_data`` does mock ``tfds.data_source`` without TensorFlow, but it redirects the
builder to a non-existent directory, so the "is it prepared?" check could not be tested with it,
and its fake examples skip decoding the stored PNGs, which is exactly what needs checking here.
"""

import io
import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxsparse.data import DATASETS, Dataset, DatasetNotPreparedError, eval_batches, load_dataset, train_batches

# Pixel value of example i is 5 + 20 * i, so each decoded image names its example.
TFDS_SIZES = {"train": 12, "test": 5}
# The published per-channel statistics the loader must standardise with, in [0, 1] units.
TFDS_STATS = {
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
}


def _toy(num_train: int, num_test: int = 7) -> Dataset:
    """Inputs of example i are all i, so a batch's inputs name its examples."""
    x_train = np.broadcast_to(np.arange(num_train, dtype=np.float32)[:, None, None], (num_train, 2, 3))
    x_test = np.broadcast_to(np.arange(num_test, dtype=np.float32)[:, None, None], (num_test, 2, 3))
    return Dataset.from_arrays(
        "toy", train=(x_train, np.arange(num_train) % 3), test=(x_test, np.arange(num_test) % 3), num_classes=3
    )


def _ids(batch: dict[str, np.ndarray]) -> list[int]:
    return [int(i) for i in batch["inputs"][:, 0, 0]]


def _tfds_ids(name: str, inputs: np.ndarray) -> list[int]:
    """Undoes the standardisation of a batch of fake TFDS images and reads off each one's example."""
    mean, std = (np.array(stat, np.float32) for stat in TFDS_STATS[name])
    pixels = inputs * std + mean
    ids = np.round((pixels[:, 0, 0, 0] * 255 - 5) / 20).astype(int)
    np.testing.assert_allclose(
        pixels, np.broadcast_to(((5 + 20 * ids) / 255)[:, None, None, None], pixels.shape), atol=1e-6
    )
    return ids.tolist()


def test_unknown_name_lists_every_data_set():
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'") as error:
        load_dataset("imagenet")
    assert all(name in str(error.value) for name in DATASETS)


def test_import_loads_no_optional_dependency():
    code = (
        "import sys, jaxsparse.data\n"
        "print(sorted(m for m in ('tensorflow_datasets', 'sklearn', 'mnist1d') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_digits_split_shapes_and_classes():
    ds = load_dataset("digits")
    assert (ds.name, ds.input_shape, ds.num_classes) == ("digits", (8, 8, 1), 10)
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    train_labels = np.array([ds.train[i]["labels"] for i in range(len(ds.train))])
    test_labels = np.array([ds.test[i]["labels"] for i in range(len(ds.test))])
    # Stratified: each class is split in the overall proportion 360 / 1,797, up to rounding.
    test_counts, train_counts = np.bincount(test_labels, minlength=10), np.bincount(train_labels, minlength=10)
    assert np.all(np.abs(test_counts - (test_counts + train_counts) * 360 / 1797) < 1)
    inputs = np.stack([ds.test[i]["inputs"] for i in range(len(ds.test))])
    assert inputs.dtype == np.float32 and inputs.min() == 0.0 and inputs.max() == 1.0
    # The split is fixed: a second load gives the same test set.
    assert np.array_equal(load_dataset("digits").test[17]["inputs"], ds.test[17]["inputs"])


def test_mnist1d_shapes_cache_and_global_rng(tmp_path, monkeypatch):
    from jaxsparse.data import _mnist1d

    _mnist1d._generate.cache_clear()  # so that this test really generates, under a seeded global RNG
    # mnist1d reseeds the legacy global generators (to 42); the loader must leave the caller's alone.
    numpy_keys, python_state = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    ds = load_dataset("mnist1d", data_dir=tmp_path)
    assert np.array_equal(np.random.get_state()[1], numpy_keys) and random.getstate() == python_state  # noqa: NPY002

    assert (ds.name, ds.input_shape, ds.num_classes) == ("mnist1d", (40, 1), 10)
    assert (len(ds.train), len(ds.test)) == (4000, 1000)
    inputs = np.stack([ds.train[i]["inputs"] for i in range(len(ds.train))])
    labels = np.array([ds.train[i]["labels"] for i in range(len(ds.train))])
    assert inputs.dtype == np.float32 and labels.dtype == np.int32
    assert set(labels.tolist()) == set(range(10))
    assert abs(inputs.mean()) < 0.05 and abs(inputs.std() - 1.0) < 0.05  # standardised

    from_memory = load_dataset("mnist1d")
    assert len(list((tmp_path / "mnist1d").glob("*.npz"))) == 1
    monkeypatch.setattr(_mnist1d, "_generate", lambda: pytest.fail("the disk cache was not used"))
    from_disk = load_dataset("mnist1d", data_dir=tmp_path)
    for i in (0, 999):
        assert np.array_equal(from_disk.test[i]["inputs"], ds.test[i]["inputs"])
        assert np.array_equal(from_memory.test[i]["inputs"], ds.test[i]["inputs"])


@pytest.mark.parametrize("num_train, batch_size", [(24, 4), (26, 4)])
def test_train_batches_visit_each_example_once_per_epoch(num_train, batch_size):
    batches = train_batches(_toy(num_train), batch_size=batch_size, seed=3)
    per_epoch = num_train // batch_size
    epochs = [[i for step in range(e * per_epoch, (e + 1) * per_epoch) for i in _ids(batches[step])] for e in range(3)]
    for seen in epochs:
        assert len(seen) == len(set(seen)) == per_epoch * batch_size  # no repeats, remainder dropped
        assert set(seen) <= set(range(num_train))
        if num_train % batch_size == 0:
            assert sorted(seen) == list(range(num_train))
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch


def test_train_batches_are_a_pure_function_of_the_step():
    ds = _toy(40)
    first = train_batches(ds, batch_size=8, seed=7)
    for step in (0, 5, 1234):
        again = train_batches(_toy(40), batch_size=8, seed=7)[step]  # a fresh pipeline, as after a restart
        batch = first[step]
        assert np.array_equal(batch["inputs"], again["inputs"]) and np.array_equal(batch["labels"], again["labels"])
        assert batch["inputs"].shape == (8, 2, 3) and batch["inputs"].dtype == np.float32
        assert batch["labels"].shape == (8,) and batch["labels"].dtype == np.int32
        assert np.array_equal(batch["labels"], batch["inputs"][:, 0, 0].astype(np.int32) % 3)  # pairs kept
    assert _ids(first[0]) != _ids(train_batches(ds, batch_size=8, seed=8)[0])
    # Neighbouring seeds are not the same orders shifted by one epoch, as a seed of s + e would give.
    assert _ids(first[5]) != _ids(train_batches(ds, batch_size=8, seed=8)[0])


def test_any_sequence_of_examples_is_a_source():
    examples = [{"inputs": np.full((2,), i, np.float32), "labels": np.int32(i % 2)} for i in range(9)]
    ds = Dataset("list", train=examples, test=examples, num_classes=2, input_shape=(2,))
    epoch = [train_batches(ds, batch_size=3, seed=0)[step] for step in range(3)]
    assert sorted(int(i) for b in epoch for i in b["inputs"][:, 0]) == list(range(9))
    assert [b["labels"].tolist() for b in eval_batches(ds, batch_size=4)] == [[0, 1, 0, 1], [0, 1, 0, 1], [0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0, seed=0), "batch_size must be an int >= 1"),
        (dict(batch_size=2.0, seed=0), "batch_size must be an int >= 1"),
        (dict(batch_size=41, seed=0), "batch_size=41 is larger than the 40 training examples"),
        (dict(batch_size=4, seed=-1), "seed must be a non-negative int"),
    ],
)
def test_train_batches_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_batches(_toy(40), **kwargs)


def test_eval_batches_cover_the_test_split_in_order():
    batches = list(eval_batches(_toy(10, num_test=7), batch_size=3))
    assert [len(b["labels"]) for b in batches] == [3, 3, 1]
    assert [i for b in batches for i in _ids(b)] == list(range(7))
    assert batches[0]["inputs"].dtype == np.float32 and batches[0]["labels"].dtype == np.int32
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        eval_batches(_toy(10), batch_size=0)


@pytest.mark.parametrize(
    "train, message",
    [
        ((np.zeros((3, 2)), np.zeros(4)), "need inputs"),
        ((np.zeros((3, 2)), np.array([0, 1, 3])), r"labels must lie in \[0, 3\)"),
        ((np.zeros((3, 5)), np.zeros(3)), "train inputs have shape"),
    ],
)
def test_from_arrays_validation(train, message):
    with pytest.raises(ValueError, match=message):
        Dataset.from_arrays("bad", train=train, test=(np.zeros((2, 2)), np.zeros(2)), num_classes=3)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="png")
    return buffer.getvalue()


def _fake_example(features, split: str, i: int) -> dict:
    example = {"image": _png(np.full(features["image"].shape, 5 + 20 * i, np.uint8)), "label": i % 10}
    if "id" in features:  # CIFAR-10 records also carry an id
        example["id"] = f"{split}_{i}"
    return example


def _prepare_fake_tfds(name: str, data_dir) -> None:
    """Runs the real builder of ``name`` with its download replaced by generated examples."""
    import tensorflow_datasets as tfds

    def split_generators(self, dl_manager):
        del dl_manager
        return {
            split: [(i, _fake_example(self.info.features, split, i)) for i in range(size)]
            for split, size in TFDS_SIZES.items()
        }

    namespace = {"name": name, "_split_generators": split_generators}
    fake = type(f"Fake_{name}", (tfds.builder_cls(name),), namespace, skip_registration=True)
    fake(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tensorflow_datasets")
    for name in TFDS_STATS:
        _prepare_fake_tfds(name, data_dir)
    return data_dir


@pytest.mark.parametrize(
    "name, input_shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))]
)
def test_tfds_data_set_is_decoded_and_standardised(tfds_dir, name, input_shape):
    ds = load_dataset(name, data_dir=tfds_dir)
    assert (ds.name, ds.input_shape, ds.num_classes) == (name, input_shape, 10)
    assert (len(ds.train), len(ds.test)) == (TFDS_SIZES["train"], TFDS_SIZES["test"])
    example = ds.train[0]
    assert example["inputs"].shape == input_shape and example["inputs"].dtype == np.float32
    assert example["labels"].shape == () and example["labels"].dtype == np.int32

    # One epoch of training batches holds every training image once, each with its own label.
    epoch = [train_batches(ds, batch_size=4, seed=0)[step] for step in range(3)]
    ids = [i for b in epoch for i in _tfds_ids(name, b["inputs"])]
    assert sorted(ids) == list(range(TFDS_SIZES["train"]))
    assert [i % 10 for i in ids] == [int(label) for b in epoch for label in b["labels"]]
    test = list(eval_batches(ds, batch_size=2))
    assert [len(b["labels"]) for b in test] == [2, 2, 1]
    assert sorted(i for b in test for i in _tfds_ids(name, b["inputs"])) == list(range(TFDS_SIZES["test"]))


def test_missing_tfds_data_set_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as error:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert "'fashion_mnist' is not prepared" in message and f"data_dir={str(tmp_path)!r}" in message
    assert "tfds build fashion_mnist" in message and "--file_format=array_record" in message


def test_tfrecord_data_set_says_to_rebuild_as_array_record(tfds_dir, tmp_path):
    # ``tfds build`` writes TFRecord by default, which a data source cannot read.
    shutil.copytree(tfds_dir / "mnist", tmp_path / "mnist")
    (info_path,) = (tmp_path / "mnist").glob("*/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetNotPreparedError, match="stored as tfrecord, which has no random access") as error:
        load_dataset("mnist", data_dir=tmp_path)
    assert "--file_format=array_record" in str(error.value)


def test_generate_mnist1d_leaves_the_global_generators_alone_and_names_a_bad_argument():
    import random

    from jaxsparse.data import generate_mnist1d

    random.seed(3)
    np.random.seed(3)  # noqa: NPY002
    expected = (random.random(), np.random.rand())  # noqa: NPY002
    random.seed(3)
    np.random.seed(3)  # noqa: NPY002
    data = generate_mnist1d(num_samples=200, seed=7)
    assert (random.random(), np.random.rand()) == expected  # noqa: NPY002
    assert data["x"].shape[0] + data["x_test"].shape[0] == 200
    with pytest.raises(ValueError, match="no dataset argument 'sead'"):
        generate_mnist1d(sead=7)
