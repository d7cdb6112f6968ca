"""LeNet-5: two convolutions (6 and 16 filters of size 5) and three dense layers (120, 84, classes).

The layer sizes are LeCun et al.'s (1998). As in most modern uses we take ReLU and max pooling
instead of the original scaled tanh and trainable sub-sampling, and "same" padding in both
convolutions, so that inputs as small as 8x8 (scikit-learn's digits) still leave a 2x2 map after
the two 2x pools; the original pads only its 32x32 input. With one spatial dimension (MNIST-1D)
the convolutions and pools are 1-D.

References:
  LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
  Proc. IEEE 1998.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxsparse.models._spatial import spatial_dims

__all__ = ["LeNet5"]

_POOLS = 2
_MIN_SIZE = 2**_POOLS  # each 2x pool halves the map; at least one position must survive both


class LeNet5(nn.Module):
    """``[conv 5 -> ReLU -> max-pool 2] x (6, 16)``, then dense 120 -> 84 -> ``num_classes``.

    Attributes:
      num_classes: the number of logits.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model, x = LeNet5(num_classes=10), jnp.ones((2, 8, 8, 1))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
      (2, 10)
    """

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout or batch norm
        dims = spatial_dims(x.shape[1:], "lenet5")
        if min(x.shape[1:-1]) < _MIN_SIZE:
            raise ValueError(
                f"lenet5 pools twice by 2, so every spatial size must be at least {_MIN_SIZE}; got input "
                f"shape {tuple(x.shape[1:])}."
            )
        window = (2,) * dims
        for features in (6, 16):
            x = nn.relu(nn.Conv(features, (5,) * dims, padding="SAME")(x))
            x = nn.max_pool(x, window, strides=window)
        x = x.reshape(x.shape[0], -1)
        for width in (120, 84):
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)
