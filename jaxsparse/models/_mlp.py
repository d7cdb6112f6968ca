"""Multi-layer perceptrons: a configurable MLP and LeNet-300-100.

LeNet-300-100 is the fully connected network of LeCun et al. (1998), 784-300-100-10, and the
classic benchmark of magnitude pruning (Han et al. 2015) and of dynamic sparse training (Dettmers
& Zettlemoyer 2019). We use ReLU, as Han et al. do. Any input is flattened first, so both models
accept every input shape.

References:
  LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
  Proc. IEEE 1998.
  Han, Pool, Tran, Dally, "Learning both weights and connections for efficient neural networks",
  NeurIPS 2015.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

__all__ = ["LENET_300_100", "MLP"]

LENET_300_100 = (300, 100)
"""The hidden widths of LeNet-300-100."""


class MLP(nn.Module):
    """``Dense -> ReLU`` for each hidden width, then a linear classifier.

    Layers are named ``Dense_0``, ``Dense_1``, ..., the classifier last, so their natural order is
    the network's order (``dense_first_layer`` / ``dense_last_layer`` pick the right ones).

    Attributes:
      num_classes: the number of logits.
      hidden_sizes: the hidden widths, input side first.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model, x = MLP(num_classes=3, hidden_sizes=(5,)), jnp.ones((2, 4, 1))
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
      (2, 3)
    """

    num_classes: int
    hidden_sizes: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout or batch norm: training and evaluation compute the same function
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_sizes:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)
