"""A classification data set: two random-access splits plus the metadata a model needs.

Every split is an :class:`ExampleSource` whose element ``i`` is
``{"inputs": float32 array of input_shape, "labels": int32 scalar}``. Random access (``len`` and
``__getitem__``) is what lets :func:`jaxsparse.data.train_batches` make batch ``t`` a pure function
of ``t``, so a run resumes bit-identically from nothing but its step. A split is also a grain
``RandomAccessDataSource``: ``grain.MapDataset.source(split)`` wraps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["Dataset", "ExampleSource"]


class ExampleSource(Protocol):
    """Random access to examples: ``source[i] = {"inputs": float32 array, "labels": int32 scalar}``.

    A source may also define ``__getitems__(indices)``, returning the examples of a list of
    indices in one call; the batch readers use it when present (in-memory sources gather with one
    fancy index, TFDS sources read the records in one request).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True, eq=False)  # arrays have no truth value, so compare by identity
class _ArraySource:
    """Random-access source over in-memory arrays: ``source[i] = {"inputs": x[i], "labels": y[i]}``."""

    inputs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"inputs": self.inputs[index], "labels": self.labels[index]}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
        inputs, labels = self.inputs[indices], self.labels[indices]  # one gather instead of len(indices)
        return [{"inputs": x, "labels": y} for x, y in zip(inputs, labels, strict=True)]


def _read_only(array: np.ndarray, dtype: type) -> np.ndarray:
    # The arrays may be shared (e.g. an in-process cache), so nobody downstream may write to them.
    array = np.array(array, dtype=dtype)
    array.flags.writeable = False
    return array


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification data set with a training and a test split.

    Attributes:
      name: the data set's name, e.g. ``"digits"``.
      train: random-access training split; element ``i`` is ``{"inputs": float32 array of shape
        input_shape, "labels": int32 scalar}``.
      test: the test split, with the same elements.
      num_classes: labels lie in ``[0, num_classes)``.
      input_shape: the shape of one example's ``inputs`` (channels last).
    """

    name: str
    train: ExampleSource
    test: ExampleSource
    num_classes: int
    input_shape: tuple[int, ...]

    @classmethod
    def from_arrays(
        cls,
        name: str,
        *,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        num_classes: int,
    ) -> Dataset:
        """Builds an in-memory data set from ``(inputs, labels)`` pairs, one per split.

        Inputs are stored as ``float32`` and labels as ``int32``, both read-only.

        Args:
          name: the data set's name.
          train: ``(inputs [N, *input_shape], labels [N])`` of the training split.
          test: the same for the test split; its input shape must match ``train``'s.
          num_classes: every label must lie in ``[0, num_classes)``.

        Returns:
          A :class:`Dataset` whose splits read from the arrays.

        Example:
          >>> import numpy as np
          >>> ds = Dataset.from_arrays("toy", train=(np.zeros((4, 2)), np.arange(4)),
          ...                          test=(np.ones((2, 2)), np.arange(2)), num_classes=4)
          >>> ds.input_shape, len(ds.train), ds.test[1]["labels"]
          ((2,), 4, np.int32(1))
        """
        splits = {}
        for split, (inputs, labels) in (("train", train), ("test", test)):
            inputs, labels = _read_only(inputs, np.float32), _read_only(labels, np.int32)
            if labels.ndim != 1 or len(inputs) != len(labels):
                raise ValueError(
                    f"{name} {split}: need inputs [N, ...] and labels [N], got {inputs.shape} and {labels.shape}."
                )
            if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
                raise ValueError(
                    f"{name} {split}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]."
                )
            splits[split] = _ArraySource(inputs, labels)
        input_shape = splits["train"].inputs.shape[1:]
        if splits["test"].inputs.shape[1:] != input_shape:
            raise ValueError(
                f"{name}: train inputs have shape {input_shape} per example but test inputs have "
                f"{splits['test'].inputs.shape[1:]}."
            )
        return cls(
            name=name, train=splits["train"], test=splits["test"], num_classes=num_classes, input_shape=input_shape
        )
