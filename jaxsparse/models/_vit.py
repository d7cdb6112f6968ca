"""A small Vision Transformer (Dosovitskiy et al. 2021) for images and 1-D signals.

The input is cut into non-overlapping patches by a convolution whose kernel and stride are the
patch size (1-D patches for a 1-D signal), a learned position embedding is added, ``depth``
pre-norm encoder blocks follow (``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP), and
a final LayerNorm. The tokens are then averaged (global average pooling instead of the paper's
class token, as in Beyer et al. 2022's plain ViT baselines; it adds no token parameter) and a
linear head gives the logits.

Attention is :class:`flax.linen.MultiHeadDotProductAttention`, whose ``query``/``key``/``value``
kernels have shape ``(dim, heads, head_dim)`` and whose ``out`` kernel has shape
``(heads, head_dim, dim)``: all rank 3, so the default layout sparsifies them. The position
embedding ``embedding/pos_embedding`` has shape ``(tokens, dim)`` and is sparsified by default too;
keep it dense with ``keep_dense=("pos_embedding",)``.

Names follow the network's order: ``embedding/patches`` (the patch convolution),
``embedding/pos_embedding``, ``layer_0`` ... ``layer_{depth-1}`` (each ``norm_0``, ``attention``,
``norm_1``, ``mlp_in``, ``mlp_out``), ``norm`` and ``output``, so ``dense_first_layer`` keeps the
patch embedding dense and ``dense_last_layer`` the head.

References:
  Dosovitskiy et al., "An image is worth 16x16 words: Transformers for image recognition at
  scale", ICLR 2021.
  Beyer, Zhai, Kolesnikov, "Better plain ViT baselines for ImageNet-1k", 2022.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxsparse.models._spatial import spatial_dims

__all__ = ["EncoderBlock", "PatchEmbedding", "ViT", "default_patch_size"]

_PATCH_SIZES = (4, 2)
_MIN_TOKENS = 16


def default_patch_size(spatial_shape: Sequence[int]) -> int:
    """The largest of 4, 2 that divides every spatial size and leaves >= 16 tokens, else 1.

    Digits (8x8) get 2 (16 tokens), MNIST (28x28) 4 (49), CIFAR-10 (32x32) 4 (64) and MNIST-1D
    (40) 2 (20).

    Example:
      >>> default_patch_size((8, 8)), default_patch_size((28, 28)), default_patch_size((40,))
      (2, 4, 2)
    """
    for size in _PATCH_SIZES:
        divides = all(n % size == 0 for n in spatial_shape)
        if divides and math.prod(spatial_shape) // size ** len(spatial_shape) >= _MIN_TOKENS:
            return size
    return 1


class PatchEmbedding(nn.Module):
    """Non-overlapping patches projected to ``dim``, flattened to tokens, plus a position embedding.

    Attributes:
      dim: the token width.
      patch_size: the patch side (every spatial size must be a multiple of it).
    """

    dim: int
    patch_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dims = x.ndim - 2
        if self.patch_size < 1 or any(n % self.patch_size for n in x.shape[1:-1]):
            raise ValueError(
                f"vit: patch_size={self.patch_size} must divide every spatial size of the input "
                f"{tuple(x.shape[1:])}; pass patch_size=None for a default that fits."
            )
        window = (self.patch_size,) * dims
        x = nn.Conv(self.dim, window, strides=window, padding="VALID", name="patches")(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        position = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), x.shape[1:], x.dtype)
        return x + position[None, :, :]


class EncoderBlock(nn.Module):
    """A pre-norm Transformer encoder block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    Attributes:
      num_heads: attention heads (they split the token width).
      mlp_dim: the hidden width of the GELU MLP.
    """

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(name="norm_0")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attention")(y)
        y = nn.LayerNorm(name="norm_1")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_in")(y))
        return x + nn.Dense(x.shape[-1], name="mlp_out")(y)


class ViT(nn.Module):
    """A small ViT: patches, position embedding, ``depth`` encoder blocks, mean pooling, head.

    Attributes:
      num_classes: the number of logits.
      patch_size: the patch side; ``None`` picks :func:`default_patch_size` from the input.
      dim: the token width (divisible by ``num_heads``).
      depth: the number of encoder blocks.
      num_heads: attention heads.
      mlp_dim: the hidden width of each block's MLP.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model, x = ViT(num_classes=10), jnp.ones((2, 40, 1))  # a 1-D signal: 20 patches of 2
      >>> variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
      >>> variables["params"]["embedding"]["pos_embedding"].shape
      (20, 64)
      >>> jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape
      (2, 10)
    """

    num_classes: int
    patch_size: int | None = None
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout
        spatial_dims(x.shape[1:], "vit")
        if self.dim % self.num_heads:
            raise ValueError(f"vit: dim={self.dim} must be divisible by num_heads={self.num_heads}.")
        patch_size = default_patch_size(x.shape[1:-1]) if self.patch_size is None else self.patch_size
        x = PatchEmbedding(self.dim, patch_size, name="embedding")(x)
        for index in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"layer_{index}")(x)
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(self.num_classes, name="output")(x.mean(axis=1))
