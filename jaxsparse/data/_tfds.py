"""Image data sets read from TensorFlow Datasets' files with ``tfds`` data sources, never downloaded.

A TFDS data source reads single records from ArrayRecord files, which gives the batches random
access, and it needs no TensorFlow. It cannot read the TFRecord files that ``tfds build`` writes by
default, and it never downloads or prepares anything here: data sets are prepared elsewhere and
copied in, and a missing one raises :class:`DatasetNotPreparedError` that says how.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsparse.data._dataset import Dataset

__all__ = ["TFDS_DATASETS", "DatasetNotPreparedError", "load_tfds"]

# Per-channel mean and standard deviation of each training split's pixels, in [0, 1] units: the
# widely used values (MNIST: 0.1307 and 0.3081, as in PyTorch's MNIST example; Fashion-MNIST:
# 72.9 / 255 and 90.0 / 255; CIFAR-10: (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255).
# Fixed constants, so loading never has to read a whole split first.
_PIXEL_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

TFDS_DATASETS: tuple[str, ...] = tuple(_PIXEL_STATS)
"""The TFDS data sets :func:`load_tfds` reads: MNIST (LeCun et al. 1998), Fashion-MNIST (Xiao et al.
2017) and CIFAR-10 (Krizhevsky 2009)."""

_SPLITS = ("train", "test")


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS data set is missing from ``data_dir``, or is there in a format without random access."""


def _how_to_prepare(name: str, data_dir_root: str) -> str:
    return (
        f"Prepare it on a machine with internet access and TensorFlow, in the ArrayRecord format:\n"
        f"  pip install tensorflow tensorflow-datasets\n"
        f"  tfds build {name} --data_dir=/path/to/tensorflow_datasets --file_format=array_record\n"
        f"then copy /path/to/tensorflow_datasets/{name} to {data_dir_root}/{name} on this machine "
        f"(or pass data_dir= the directory that holds {name}/)."
    )


class _StandardizedImages:
    """A TFDS data source whose records become ``float32`` ``(p / 255 - mean) / std`` and ``int32`` labels."""

    def __init__(self, source: Any, mean: np.ndarray, std: np.ndarray):
        self._source, self._mean, self._std = source, mean, std

    def __len__(self) -> int:
        return len(self._source)

    def _standardize(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        pixels = np.asarray(record["image"], np.float32) / np.float32(255.0)
        return {"inputs": (pixels - self._mean) / self._std, "labels": np.int32(record["label"])}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._standardize(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        # One request for the whole list of records; the TFDS source needs Python ints.
        return [self._standardize(record) for record in self._source.__getitems__([int(i) for i in indices])]


def load_tfds(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Reads a prepared TFDS image data set and standardises its pixels per channel.

    Each example's ``uint8`` image ``p`` becomes ``float32`` inputs ``(p / 255 - mu_c) / sigma_c``,
    with ``mu_c`` and ``sigma_c`` the channel's mean and standard deviation over the training split
    (fixed published values), so the inputs have roughly zero mean and unit variance.

    Args:
      name: one of :data:`TFDS_DATASETS`.
      data_dir: the TFDS data directory holding ``name/<version>/``; ``None`` means TFDS's default
        (``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).

    Returns:
      The :class:`Dataset`, whose splits decode records lazily.

    Raises:
      DatasetNotPreparedError: the data set is not prepared under ``data_dir``, or is prepared in a
        format without random access (TFRecord); the message says how to prepare it.

    References:
      LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition",
      Proc. IEEE, 1998. Xiao, Rasul & Vollgraf, "Fashion-MNIST", arXiv:1708.07747, 2017.
      Krizhevsky, "Learning multiple layers of features from tiny images", 2009.
    """
    if name not in _PIXEL_STATS:
        raise ValueError(f"Unknown TFDS data set {name!r}; choose one of {TFDS_DATASETS}.")
    # Imported here: tensorflow_datasets is an optional extra, and only these data sets need it.
    import tensorflow_datasets as tfds

    # What ``tfds.data_source(name, download=False)`` does, with a readable error in between: it
    # would otherwise fail deep inside TFDS complaining about TFRecord support.
    builder = tfds.builder(name, data_dir=data_dir)
    root, variant_dir = os.fspath(builder.data_dir_root), os.fspath(builder.data_dir)
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"TFDS data set {name!r} is not prepared under data_dir={root!r} "
            f"(no dataset_info.json in {variant_dir}).\n{_how_to_prepare(name, root)}"
        )
    file_format = builder.info.file_format
    if file_format not in tfds.core.FileFormat.with_random_access():
        raise DatasetNotPreparedError(
            f"TFDS data set {name!r} in {variant_dir} is stored as {file_format.value}, which has no "
            f"random access; it must be rebuilt as array_record.\n{_how_to_prepare(name, root)}"
        )
    mean, std = (np.asarray(stat, np.float32) for stat in _PIXEL_STATS[name])
    train, test = (_StandardizedImages(builder.as_data_source(split=split), mean, std) for split in _SPLITS)
    features = builder.info.features
    return Dataset(
        name=name,
        train=train,
        test=test,
        num_classes=features["label"].num_classes,
        input_shape=tuple(features["image"].shape),
    )
