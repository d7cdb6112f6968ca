"""Structure: the unit a mask selects, from single weights to whole output channels.

A :class:`Structure` partitions a parameter into *groups* and the layer's mask holds one entry per
group, stored at group size: an output-channel mask of a ``(3, 3, 64, 128)`` conv kernel is a
``(128,)`` array, 128 bytes instead of 73,728. Three pure functions of shapes and arrays define a
structure:

* ``mask_shape(shape)``: the shape of the group-level mask (raises when the structure does not fit);
* ``group_scores(scores)``: element scores reduced to one score per group;
* ``expand(mask, shape)``: the group-level mask broadcast back to the parameter's shape, where it is
  applied (forward pass, optimizer projection, slot resets).

Exact counts then hold at group level: a layer planned to keep ``k`` groups keeps exactly ``k``
whole groups, and the exact radix select of :mod:`jaxsparse.selection` runs unchanged on the
group scores.

**Group scores.** A floating score is reduced to the group's L2 norm,
``s_g = (sum_{i in g} s_i^2)^(1/2)``: for ``|theta|`` that is the L2 norm of the group's weights
(the group-lasso norm of Wen et al. 2016), for ``|g|`` the norm of its gradients. An integer score
(the uniform ``uint32`` draws of random selection) is reduced to the group's maximum; maxima of
i.i.d. uniform draws are i.i.d., so random selection stays uniform over groups. NaN in a group makes
its norm NaN, which ranks lowest.

References:
  Hoefler, Alistarh, Ben-Nun, Dryden, Peste, "Sparsity in Deep Learning", JMLR 2021, Section 2.3
  (structured sparsity).
  Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
"""

from __future__ import annotations

import abc
import dataclasses
import typing

import jax
import jax.numpy as jnp

__all__ = ["OutputChannels", "Structure", "Unstructured"]


class Structure(abc.ABC):
    """Abstract: how a parameter is cut into groups, each group one entry of the mask.

    Implementations are frozen dataclasses (hashable values: a plan holds one).
    """

    name: typing.ClassVar[str]

    @abc.abstractmethod
    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The group-level mask's shape for a parameter of ``shape``.

        Raises:
          ValueError: the structure does not fit ``shape``; the message says why and how to fix it
            (the layout adds the leaf's name).
        """

    @abc.abstractmethod
    def group_scores(self, scores: jax.Array) -> jax.Array:
        """Element scores of the parameter's shape, reduced to ``mask_shape`` (see the module docstring)."""

    @abc.abstractmethod
    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The group-level ``mask`` broadcast to the parameter's ``shape``."""


@typing.final
@dataclasses.dataclass(frozen=True)
class Unstructured(Structure):
    """Every weight is its own group: the mask has the parameter's shape (the default)."""

    name: typing.ClassVar[str] = "unstructured"

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return scores

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return mask


def _reduce(scores: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """One score per group: the L2 norm of floating scores, the maximum of integer scores."""
    if jnp.issubdtype(scores.dtype, jnp.floating):
        return jnp.sqrt(jnp.sum(jnp.square(scores.astype(jnp.float32)), axis=axes))
    return jnp.max(scores, axis=axes)


@typing.final
@dataclasses.dataclass(frozen=True)
class OutputChannels(Structure):
    """Whole output channels: the columns of a ``(in, out)`` dense kernel, the filters of an HWIO conv.

    A group is one index of the last axis, so the mask of a ``(..., C)`` kernel has shape ``(C,)``
    and removing a group removes a neuron (dense) or a filter (conv).

    Example:
      >>> import jax.numpy as jnp
      >>> OutputChannels().mask_shape((3, 3, 16, 32))
      (32,)
      >>> OutputChannels().expand(jnp.array([True, False]), (3, 2)).tolist()
      [[True, False], [True, False], [True, False]]
    """

    name: typing.ClassVar[str] = "output_channels"

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2:
            raise ValueError(
                f"output-channel structure needs a kernel of rank >= 2 (inputs ..., outputs), got shape {shape}; "
                "keep this leaf dense (keep_dense=...) or use the unstructured default."
            )
        return (shape[-1],)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return _reduce(scores, tuple(range(scores.ndim - 1)))

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jnp.broadcast_to(mask, shape)
