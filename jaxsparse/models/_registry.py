"""The models by name, for the training harness and its command line."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsparse.models._lenet import LeNet5
from jaxsparse.models._mlp import LENET_300_100, MLP
from jaxsparse.models._resnet import ResNet
from jaxsparse.models._vit import ViT

__all__ = ["MODELS", "create_model"]

_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet300_100": functools.partial(MLP, hidden_sizes=LENET_300_100),
    "lenet5": LeNet5,
    "resnet20": ResNet,
    "vit": ViT,
}

MODELS: tuple[str, ...] = tuple(_FACTORIES)
"""The names :func:`create_model` accepts."""


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int], **options) -> nn.Module:
    """The model called ``name``, checked against inputs of shape ``[batch, *input_shape]``.

    Every model is applied as ``model.apply(variables, x, train=...)`` to a float32 ``x`` of shape
    ``[batch, *input_shape]`` and returns logits ``[batch, num_classes]``; ``resnet20`` has batch
    norm, so train it with ``mutable=["batch_stats"]``.

    ============== ============================================================================
    name           model
    ============== ============================================================================
    mlp            :class:`MLP`, hidden widths (256, 256); any input, flattened
    lenet300_100   :class:`MLP` with hidden widths (300, 100) (LeCun et al. 1998)
    lenet5         :class:`LeNet5`: conv 6/16, dense 120/84 (LeCun et al. 1998)
    resnet20       :class:`ResNet`: ResNet-20, option-A shortcuts (He et al. 2016)
    vit            :class:`ViT`: dim 64, depth 2, 4 heads (Dosovitskiy et al. 2021)
    ============== ============================================================================

    The convolutional models take channels-last ``(length, channels)`` or
    ``(height, width, channels)`` and use 1-D or 2-D convolutions (or patches) accordingly.

    Args:
      name: one of :data:`MODELS`.
      num_classes: the number of logits.
      input_shape: the shape of one example, without the batch axis.
      **options: attributes overriding the model's defaults (e.g. ``hidden_sizes=(512, 512)`` for
        ``mlp``, ``depth=4`` for ``vit``).

    Returns:
      The (unbound) flax module.

    Raises:
      ValueError: for an unknown name, a bad ``num_classes``, or an input the model cannot take.

    Example:
      >>> model = create_model("lenet5", num_classes=10, input_shape=(40, 1))
      >>> type(model).__name__
      'LeNet5'
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(map(repr, MODELS))}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    input_shape = tuple(input_shape)
    if not input_shape or not all(isinstance(n, int) and n >= 1 for n in input_shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}.")
    model = _FACTORIES[name](num_classes=num_classes, **options)
    # Tracing init on abstract inputs runs every shape check the model makes, without computing
    # anything, so an unsupported combination fails here and not in the middle of a training job.
    jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False), jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    )
    return model
