"""Group lasso over the layout's structure, by subgradient or by an exact proximal step.

.. math::

    R_t(\\theta) = \\lambda_t \\sum_l \\sum_{g \\in l} \\lVert \\theta_g \\rVert_2

with the groups of each sparsified leaf's structure (output channels: the columns of a dense kernel,
the filters of a conv), as in Structured Sparsity Learning (Wen et al. 2016, eq. 2, without its
scaling by group size).

* **Subgradient** (``learning_rate=None``): ``grad R = lambda_t theta_g / ||theta_g||`` (0 for a zero
  group) is added to the loss gradient, as SSL's Caffe code does; groups shrink but reach zero only
  approximately.
* **Proximal** (``learning_rate=eta``, the inner optimizer's step size or its schedule): after each
  optimizer step, ``theta_g <- theta_g max(0, 1 - eta_t lambda_t / ||theta_g||)``, group
  soft-thresholding, which sets whole groups exactly to zero (Parikh & Boyd 2014, Section 6.5.4).

References:
  Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
  Yuan & Lin, "Model selection and estimation in regression with grouped variables", JRSS-B 2006.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxsparse.masks import LayerPlan, Masks, Params, Structure
from jaxsparse.regularizers._regularizer import Regularizer, as_schedule
from jaxsparse.schedules import Schedule

__all__ = ["GroupLasso", "inverse_norms", "shrink_factors", "scale_groups"]


def inverse_norms(norms: jax.Array) -> jax.Array:
    """``1 / ||theta_g||`` per group, 0 for a zero group: the subgradient ``theta_g / ||theta_g||`` is then 0 there."""
    return jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)


def shrink_factors(norms: jax.Array, threshold: jax.typing.ArrayLike) -> jax.Array:
    """Group soft-thresholding's factor ``max(0, 1 - tau / ||theta_g||)`` per group (0 for a zero group)."""
    return jnp.maximum(0.0, 1.0 - threshold / jnp.where(norms > 0, norms, 1.0)) * (norms > 0)


def scale_groups(param: jax.Array, factors: jax.Array, structure: Structure) -> jax.Array:
    """``param`` with each group scaled by its factor, in its dtype; an exactly zero factor gives an exact ``+0``."""
    scaled = structure.expand(factors, param.shape) * param
    # An exactly zero factor must give an exact +0, whatever the weight's sign.
    return jnp.where(structure.expand(factors > 0, param.shape), scaled, 0.0).astype(param.dtype)


def _grouped(plans: Sequence[LayerPlan | None]) -> list[LayerPlan | None]:
    """The plans, refusing a layout whose leaves have no groups."""
    for plan in plans:
        if plan is not None and plan.group_size == 1:
            raise ValueError(
                f"group lasso needs groups, but leaf {plan.name!r} (shape {plan.shape}) has one weight per "
                f"group under the {plan.structure.name} structure, which makes the penalty plain L1: build the "
                "algorithm with a structure whose groups hold several weights, e.g. "
                "structure=jaxsparse.masks.OutputChannels()."
            )
    return list(plans)


@typing.final
@dataclasses.dataclass(frozen=True)
class GroupLasso(Regularizer):
    """``lambda_t sum_g ||theta_g||_2`` over the layout's groups.

    Attributes:
      strength: ``lambda``, a float or a schedule ``step -> lambda_t``.
      learning_rate: ``None`` for the subgradient; the step size ``eta`` (float or schedule) for
        the exact proximal step.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsparse.masks import SparsityLayout, OutputChannels
      >>> params = {"w": jnp.array([[3.0, 0.1], [4.0, 0.1]])}
      >>> plans = SparsityLayout(0.0, structure=OutputChannels()).plan(params)
      >>> float(GroupLasso(0.5).value(params, {"w": jnp.ones(2, bool)}, plans, 0))  # 0.5 * (5 + 0.1414)
      2.570710...
      >>> GroupLasso(1.0, learning_rate=1.0).proximal(params, None, plans, 0)["w"].tolist()
      [[2.4000000953674316, 0.0], [3.200000047683716, 0.0]]
    """

    strength: float | Schedule
    learning_rate: float | Schedule | None = None

    def __post_init__(self):
        object.__setattr__(self, "strength", as_schedule(self.strength, "strength"))
        if self.learning_rate is not None:
            object.__setattr__(self, "learning_rate", as_schedule(self.learning_rate, "learning_rate"))

    def _norms(self, params: Params, plans) -> list[jax.Array | None]:
        return [
            None if plan is None else plan.structure.group_scores(param)
            for plan, param in zip(_grouped(plans), jax.tree.leaves(params), strict=True)
        ]

    def value(self, params: Params, masks: Masks, plans, step) -> jax.Array:
        del masks
        norms = [jnp.sum(n) for n in self._norms(params, plans) if n is not None]
        return jnp.asarray(self.strength(step), jnp.float32) * sum(norms)

    def gradient(self, params: Params, masks: Masks, plans, step) -> Params | None:
        if self.learning_rate is not None:
            return None
        del masks
        strength = jnp.asarray(self.strength(step), jnp.float32)
        leaves = []
        for plan, param, norm in zip(plans, jax.tree.leaves(params), self._norms(params, plans), strict=True):
            if plan is None:
                leaves.append(jnp.zeros_like(param))
                continue
            inverse = plan.structure.expand(inverse_norms(norm), plan.shape)
            leaves.append((strength * inverse * param).astype(param.dtype))
        return jax.tree.unflatten(jax.tree.structure(params), leaves)

    def proximal(self, params: Params, masks: Masks, plans, step) -> Params | None:
        if self.learning_rate is None:
            return None
        del masks
        threshold = jnp.asarray(self.learning_rate(step), jnp.float32) * jnp.asarray(self.strength(step), jnp.float32)
        leaves = []
        for plan, param, norm in zip(plans, jax.tree.leaves(params), self._norms(params, plans), strict=True):
            if plan is None:
                leaves.append(param)
                continue
            leaves.append(scale_groups(param, shrink_factors(norm, threshold), plan.structure))
        return jax.tree.unflatten(jax.tree.structure(params), leaves)
