"""MNIST-1D: 5,000 procedurally generated 1-D signals of 10 digit templates (Greydanus 2020).

Each signal is one of ten hand-drawn 12-point templates, randomly padded, scaled and translated,
with correlated noise around it and i.i.d. noise on top, then sheared and resampled to 40 points.
Generation is deterministic (the package seeds it with 42) and takes about two seconds, so the
arrays are cached in-process and, when a ``data_dir`` is given, on disk.

References:
  Greydanus, "Scaling down deep learning", arXiv:2011.14439, 2020.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import pathlib
import random

import numpy as np

from jaxsparse.data._dataset import Dataset

__all__ = ["generate_mnist1d", "load_mnist1d"]

_KEYS = ("x", "y", "x_test", "y_test")


def generate_mnist1d(**settings) -> dict[str, np.ndarray]:
    """``mnist1d``'s ``make_dataset`` with its default arguments overridden by ``settings``, e.g. ``seed=43``.

    ``make_dataset`` reseeds Python's and NumPy's legacy global generators; a library must not change
    the caller's random streams, so their states are restored afterwards.

    Returns:
      The generated arrays (``x``, ``y``, ``x_test``, ``y_test`` and the generator's other keys).
    """
    # Imported here: mnist1d pulls in matplotlib and requests. Only ``make_dataset`` is used, never
    # ``get_dataset``, which may download a pickle.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for name, value in settings.items():
        if not hasattr(args, name):
            raise ValueError(f"mnist1d has no dataset argument {name!r}; its arguments: {sorted(vars(args))}.")
        setattr(args, name, value)
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        return make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


@functools.cache
def _generate() -> dict[str, np.ndarray]:
    """The package's default data set: 4,000 train / 1,000 test signals of length 40."""
    data = generate_mnist1d()
    return {key: data[key] for key in _KEYS}


def _cached_on_disk(data_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    # The file name carries the package version: a new release may generate different signals.
    path = pathlib.Path(data_dir) / "mnist1d" / f"mnist1d-{importlib.metadata.version('mnist1d')}.npz"
    if path.exists():
        with np.load(path) as saved:
            return {key: saved[key] for key in _KEYS}
    arrays = _generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never sees a half-written file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as file:
        np.savez(file, **arrays)
    os.replace(partial, path)
    return arrays


def load_mnist1d(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """MNIST-1D with inputs of shape ``(40, 1)``: 4,000 train and 1,000 test examples, 10 classes.

    The inputs are standardised as the package generates them: all 5,000 signals are centred and
    divided by their global standard deviation, so the data match the published data set.

    Args:
      data_dir: if given, the arrays are cached in ``data_dir/mnist1d/`` and read from there next
        time; otherwise they are generated (once per process).

    Returns:
      The ``"mnist1d"`` :class:`Dataset`.

    References:
      Greydanus, "Scaling down deep learning", arXiv:2011.14439, 2020.
    """
    arrays = _generate() if data_dir is None else _cached_on_disk(data_dir)
    return Dataset.from_arrays(
        "mnist1d",
        train=(arrays["x"][..., None], arrays["y"]),
        test=(arrays["x_test"][..., None], arrays["y_test"]),
        num_classes=10,
    )
