"""When masks change, how much they change, and how sparsity grows over training.

All schedules are functions of the (traced) step, so they run under ``jit`` without retracing.
Step numbering follows optax: the first ``update`` is step 0. The built-in schedules are frozen
dataclasses, so two algorithms built with the same arguments are equal values (a ``sparsify``
state carries its algorithm as static structure).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import jax
import jax.numpy as jnp
import optax

from jaxsparse._scalars import real_scalar

__all__ = [
    "Schedule",
    "constant",
    "UpdateSchedule",
    "constant_drop_fraction",
    "cosine_drop_fraction",
    "exponential_drop_fraction",
    "polynomial_sparsity",
]


class Schedule(Protocol):
    """``schedule(step) -> scalar``; any optax schedule qualifies."""

    def __call__(self, step: jax.typing.ArrayLike) -> jax.typing.ArrayLike: ...


def _check_step(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class UpdateSchedule:
    """Mask updates happen at ``t = begin, begin + every, ...`` while ``t <= end``.

    .. math::

        \\text{update}(t) = [\\,b \\le t \\le e\\,] \\wedge [\\,(t - b) \\bmod \\Delta T = 0\\,]

    Attributes:
      begin_step: first step that may update (``b``).
      end_step: last step that may update (``e``); ``None`` means no end.
      update_every: the interval ``Delta T`` (RigL uses 100).
    """

    begin_step: int = 0
    end_step: int | None = None
    update_every: int = 100

    def __post_init__(self):
        _check_step(self.begin_step, "begin_step")
        _check_step(self.end_step, "end_step", allow_none=True)
        if isinstance(self.update_every, bool) or not isinstance(self.update_every, int) or self.update_every < 1:
            raise ValueError(f"update_every must be an int >= 1, got {self.update_every!r}.")
        if self.end_step is not None and self.end_step < self.begin_step:
            raise ValueError(f"end_step={self.end_step} is before begin_step={self.begin_step}.")

    def is_update_step(self, step: jax.typing.ArrayLike) -> jax.Array:
        """Whether ``step`` is on the update grid (a traced ``bool`` scalar)."""
        step = jnp.asarray(step, jnp.int32)
        on = (step >= self.begin_step) & ((step - self.begin_step) % self.update_every == 0)
        if self.end_step is not None:
            on &= step <= self.end_step
        return on


def _check_fraction(value: float, name: str) -> float:
    """``value`` as a Python float in ``[0, 1]`` (numpy and JAX scalars accepted), or a clear error."""
    fraction = real_scalar(value, name, "a float in [0, 1]")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}.")
    return fraction


@dataclasses.dataclass(frozen=True)
class _Constant:
    value: float

    def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
        return optax.constant_schedule(self.value)(step)


def constant(value: float) -> Schedule:
    """``f_t = value`` at every step (a comparable value, unlike a lambda)."""
    return _Constant(value)


@dataclasses.dataclass(frozen=True)
class _CosineDecay:
    fraction: float
    begin_step: int
    end_step: int

    def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
        decay = optax.cosine_decay_schedule(self.fraction, max(self.end_step - self.begin_step, 1))
        return decay(jnp.maximum(jnp.asarray(step) - self.begin_step, 0))


@dataclasses.dataclass(frozen=True)
class _ExponentialDecay:
    fraction: float
    decay_rate: float
    transition_steps: int
    begin_step: int

    def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
        schedule = optax.exponential_decay(
            self.fraction, self.transition_steps, self.decay_rate, transition_begin=self.begin_step
        )
        return schedule(step)


@dataclasses.dataclass(frozen=True)
class _Polynomial:
    initial: float
    final: float
    power: float
    begin_step: int
    end_step: int

    def __call__(self, step: jax.typing.ArrayLike) -> jax.Array:
        schedule = optax.polynomial_schedule(
            init_value=self.initial,
            end_value=self.final,
            power=self.power,
            transition_steps=self.end_step - self.begin_step,
            transition_begin=self.begin_step,
        )
        return schedule(step)


def constant_drop_fraction(fraction: float) -> Schedule:
    """``f_t = fraction`` at every step."""
    return constant(_check_fraction(fraction, "drop_fraction"))


def cosine_drop_fraction(fraction: float, begin_step: int, end_step: int) -> Schedule:
    """RigL's cosine decay from ``alpha = fraction`` at ``begin_step`` to 0 at ``end_step``.

    .. math::

        f_t = \\frac{\\alpha}{2}\\left(1 + \\cos\\frac{\\pi \\min(t - b, T)}{T}\\right), \\quad T = e - b

    This is the reference formula (Evci et al. 2020, Section 3, eq. 1), which applies it to the
    global step; the two agree when ``begin_step = 0``.
    """
    fraction = _check_fraction(fraction, "drop_fraction")
    _check_step(begin_step, "begin_step")
    _check_step(end_step, "end_step")
    return _CosineDecay(fraction, begin_step, end_step)


def exponential_drop_fraction(
    fraction: float, decay_rate: float, transition_steps: int, begin_step: int = 0
) -> Schedule:
    """``f_t = alpha * decay_rate ** ((t - b) / transition_steps)`` for ``t >= b``."""
    fraction = _check_fraction(fraction, "drop_fraction")
    if not 0.0 < decay_rate <= 1.0:
        raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate!r}.")
    return _ExponentialDecay(fraction, decay_rate, transition_steps, begin_step)


def polynomial_sparsity(
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
    power: float = 3.0,
) -> Schedule:
    """Zhu & Gupta's gradual pruning schedule (cubic for ``power = 3``).

    .. math::

        s_t = s_f + (s_i - s_f) \\left(1 - \\frac{\\min(\\max(t - t_0, 0), T)}{T}\\right)^{p},
        \\quad T = t_{end} - t_0

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
      compression", 2017, eq. 1.
    """
    _check_step(begin_step, "begin_step")
    _check_step(end_step, "end_step")
    if end_step <= begin_step:
        raise ValueError(f"end_step={end_step} must be after begin_step={begin_step} for a sparsity ramp.")
    if not (math.isfinite(power) and power > 0):
        raise ValueError(f"power must be a positive float, got {power!r}.")
    return _Polynomial(initial_sparsity, final_sparsity, power, begin_step, end_step)
