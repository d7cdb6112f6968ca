"""The CIFAR ResNets of He et al. (2016, Section 4.2), ResNet-20 by default.

A ``6n + 2``-layer network: a 3x3 convolution with 16 filters, three stages of ``n`` basic blocks
with 16, 32 and 64 filters (the first block of stages 2 and 3 halves the spatial size with stride
2), global average pooling and a linear classifier. ``n = 3`` gives ResNet-20 (0.27M parameters).
Every convolution is followed by batch norm; convolutions carry no bias, as batch norm's shift
replaces it.

**Shortcuts are option A**, the paper's choice for CIFAR: identity shortcuts everywhere, and where
a block changes shape the input is subsampled with the block's stride and zero-padded to the new
number of channels. Option A adds no parameters, so every sparsifiable leaf is a 3x3 convolution
or the classifier.

With one spatial dimension (MNIST-1D) the kernels, strides and pooling are 1-D.

Layers are named in network order, ``input_conv``, ``layer_0`` ... ``layer_{3n-1}`` (each with
``conv_0``/``norm_0``/``conv_1``/``norm_1``) and ``output``, so the natural order of the names is the
network's and ``dense_first_layer`` / ``dense_last_layer`` keep the stem and the classifier dense.

References:
  He, Zhang, Ren, Sun, "Deep residual learning for image recognition", CVPR 2016, Section 4.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsparse.models._spatial import spatial_dims

__all__ = ["BasicBlock", "ResNet"]

# PyTorch's BatchNorm momentum of 0.1, the usual CIFAR recipe: running statistics settle within
# tens of steps, which short CPU runs need.
_BATCH_NORM_MOMENTUM = 0.9
_BATCH_NORM_EPSILON = 1e-5


def _norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=_BATCH_NORM_MOMENTUM, epsilon=_BATCH_NORM_EPSILON, name=name
    )


def _conv(features: int, dims: int, strides: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (3,) * dims,
        strides=(strides,) * dims,
        padding="SAME",
        use_bias=False,
        kernel_init=nn.initializers.he_normal(),  # He et al. 2015, as the paper uses
        name=name,
    )


def _shortcut_a(x: jax.Array, features: int, strides: int) -> jax.Array:
    """Option A: subsample by ``strides`` and zero-pad the channels up to ``features``."""
    dims = x.ndim - 2
    x = x[(slice(None),) + (slice(None, None, strides),) * dims]
    return jnp.pad(x, ((0, 0),) * (dims + 1) + ((0, features - x.shape[-1]),))


class BasicBlock(nn.Module):
    """``relu(x' + BN(conv(relu(BN(conv(x))))))`` with the option-A shortcut ``x'``.

    Attributes:
      features: output channels.
      strides: the stride of the first convolution and of the shortcut's subsampling.
    """

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dims = x.ndim - 2
        y = _conv(self.features, dims, self.strides, "conv_0")(x)
        y = nn.relu(_norm(train, "norm_0")(y))
        y = _conv(self.features, dims, 1, "conv_1")(y)
        y = _norm(train, "norm_1")(y)
        return nn.relu(y + _shortcut_a(x, self.features, self.strides))


class ResNet(nn.Module):
    """A CIFAR ResNet (He et al. 2016, Section 4.2): ResNet-20 with the default attributes.

    Call it with ``train=True, mutable=["batch_stats"]`` to train (batch statistics, and the
    running averages are updated) and with ``train=False`` to evaluate (running averages).

    Attributes:
      num_classes: the number of logits.
      stage_sizes: blocks per stage (``n`` each for a ``6n + 2``-layer network).
      widths: the channels of each stage (the stem has ``widths[0]``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model, x = ResNet(num_classes=10), jnp.ones((2, 32, 32, 3))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> train_step = lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])
      >>> logits, updates = jax.eval_shape(train_step, variables)
      >>> logits.shape, sorted(updates)
      ((2, 10), ['batch_stats'])
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 3, 3)
    widths: Sequence[int] = (16, 32, 64)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dims = spatial_dims(x.shape[1:], "resnet")
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(f"stage_sizes={self.stage_sizes} and widths={self.widths} must have the same length.")
        if list(self.widths) != sorted(self.widths):
            raise ValueError(f"widths={self.widths} must not decrease: option-A shortcuts can only add channels.")
        x = _conv(self.widths[0], dims, 1, "input_conv")(x)
        x = nn.relu(_norm(train, "input_norm")(x))
        block = 0
        for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for index in range(size):
                strides = 2 if stage > 0 and index == 0 else 1
                x = BasicBlock(width, strides, name=f"layer_{block}")(x, train=train)
                block += 1
        x = x.mean(axis=tuple(range(1, dims + 1)))
        return nn.Dense(self.num_classes, name="output")(x)
