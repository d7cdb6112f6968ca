"""How many spatial dimensions an input has, checked once for every convolutional model.

Inputs are channels-last: ``(batch, length, channels)`` for 1-D signals such as MNIST-1D and
``(batch, height, width, channels)`` for images. The convolutional models build their kernels,
pooling windows and patches from this count, so one definition serves both kinds of input.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SPATIAL_DIMS", "spatial_dims"]

SPATIAL_DIMS = (1, 2)
"""The supported numbers of spatial dimensions: 1-D signals and 2-D images."""


def spatial_dims(input_shape: Sequence[int], model: str) -> int:
    """The number of spatial dimensions of a channels-last ``input_shape`` (without the batch).

    Raises:
      ValueError: unless ``input_shape`` is ``(length, channels)`` or ``(height, width, channels)``.
    """
    count = len(input_shape) - 1
    if count not in SPATIAL_DIMS:
        raise ValueError(
            f"{model} needs channels-last inputs of shape (length, channels) or (height, width, channels), "
            f"got input_shape={tuple(input_shape)}; add a trailing channel axis to a flat or 1-D signal "
            "(e.g. (40,) -> (40, 1)), or use the 'mlp' model, which flattens any input."
        )
    return count
