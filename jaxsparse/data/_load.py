"""Loading a data set by name."""

from __future__ import annotations

import os

from jaxsparse.data._dataset import Dataset
from jaxsparse.data._digits import load_digits
from jaxsparse.data._mnist1d import load_mnist1d
from jaxsparse.data._tfds import TFDS_DATASETS, load_tfds

__all__ = ["DATASETS", "load_dataset"]

DATASETS: tuple[str, ...] = ("digits", "mnist1d", *TFDS_DATASETS)
"""Names :func:`load_dataset` accepts: two small in-memory sets, then the TFDS image sets."""


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Loads one of :data:`DATASETS`.

    ``"digits"`` (scikit-learn's bundled 8x8 digits) and ``"mnist1d"`` (generated) need no files.
    ``"mnist"``, ``"fashion_mnist"`` and ``"cifar10"`` are read from TFDS ArrayRecord files that
    must already be in ``data_dir``; nothing is ever downloaded.

    Args:
      name: one of :data:`DATASETS`.
      data_dir: the TFDS data directory for the image sets (``None``: TFDS's default), and where
        MNIST-1D is cached if given. Digits ignore it.

    Returns:
      The :class:`Dataset`.

    Raises:
      ValueError: ``name`` is not in :data:`DATASETS`.
      DatasetNotPreparedError: a TFDS data set is not prepared in ``data_dir``.

    Example:
      >>> ds = load_dataset("digits")
      >>> ds.input_shape, ds.num_classes, len(ds.train), len(ds.test)
      ((8, 8, 1), 10, 1437, 360)
    """
    if name == "digits":
        return load_digits()
    if name == "mnist1d":
        return load_mnist1d(data_dir)
    if name in TFDS_DATASETS:
        return load_tfds(name, data_dir)
    raise ValueError(f"Unknown data set {name!r}; choose one of {DATASETS}.")
