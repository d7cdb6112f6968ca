"""The regulariser protocol: a penalty of ``(params, masks, step)`` with a gradient and a proximal step.

An algorithm may carry a regulariser ``R_t(theta, m) = lambda_t r(theta, m)``. The ``sparsify``
wrapper uses it in two ways, both optional:

* **gradient**: ``grad R_t`` is added to the loss gradient before the inner optimizer sees it
  (Top-KAST's exploration penalty, a subgradient group lasso);
* **proximal step**: after the inner optimizer's update ``theta' = theta + u``, the parameters are
  replaced by ``prox(theta')``. Group soft-thresholding, ``prox(w_g) = w_g max(0, 1 - tau/||w_g||)``,
  sets whole groups exactly to zero (Parikh & Boyd 2014, Section 6.5.4).

``value`` is the penalty itself, for logging, and ``summary`` what a run's report shows about it
(SSL's zero groups); the wrapper never needs either.

References:
  Parikh & Boyd, "Proximal Algorithms", Foundations and Trends in Optimization 1(3), 2014.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import jax

from jaxsparse._scalars import real_scalar
from jaxsparse.masks import LayerPlan, Masks, Params
from jaxsparse.schedules import Schedule, constant

__all__ = ["Regularizer", "as_schedule"]


def as_schedule(value: float | Schedule, name: str) -> Schedule:
    """A float as a constant schedule; a callable is returned as is. Negative floats are refused."""
    if callable(value):
        return value
    expected = "a float >= 0 or a schedule step -> float"
    strength = real_scalar(value, name, expected)
    if not strength >= 0:
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    return constant(strength)


class Regularizer(abc.ABC):
    """Abstract: ``R_t(theta, m)``, its gradient, and an optional proximal step.

    ``masks`` is the algorithm's own mask value (a mask tree, or a ``MaskPair`` for Top-KAST) at
    group level, and ``plans`` the layout's plan of ``params``. Implementations are frozen
    dataclasses.
    """

    @abc.abstractmethod
    def value(self, params: Params, masks: Masks, plans: Sequence[LayerPlan | None], step: jax.Array) -> jax.Array:
        """The penalty ``R_t`` (a float32 scalar), for logging."""

    def gradient(
        self, params: Params, masks: Masks, plans: Sequence[LayerPlan | None], step: jax.Array
    ) -> Params | None:
        """``grad R_t`` with respect to ``params``, added to the loss gradient (``None``: nothing to add)."""
        return jax.grad(self.value)(params, masks, plans, step)

    def proximal(
        self, params: Params, masks: Masks, plans: Sequence[LayerPlan | None], step: jax.Array
    ) -> Params | None:
        """The parameters after the proximal step, from those after the optimizer step (``None``: no step)."""
        del params, masks, plans, step
        return None

    def summary(self, params: Params, plans: Sequence[LayerPlan | None]) -> dict[str, Any] | None:
        """What a run's ``summary.json`` reports about the regulariser at the end, as JSON (``None``: nothing)."""
        del params, plans
        return None
