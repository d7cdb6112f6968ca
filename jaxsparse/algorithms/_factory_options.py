"""Argument handling the factories share: the layout from keyword options, and the drop-fraction schedule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.masks import SparsityLayout
from jaxsparse.schedules import Schedule, UpdateSchedule, constant_drop_fraction, cosine_drop_fraction

__all__ = ["DROP_FRACTION_DECAYS", "check_pooled_scope", "drop_fraction_schedule", "make_layout"]

DROP_FRACTION_DECAYS = ("cosine", "constant")

# A schedule callable is evaluated on at most this many update steps when the algorithm is built.
_CHECKED_STEPS = 100_000


def make_layout(sparsity: float, distribution: str, layout_options: dict) -> SparsityLayout:
    """``SparsityLayout(sparsity, distribution, **layout_options)``, naming the options on a typo."""
    try:
        return SparsityLayout(sparsity=sparsity, distribution=distribution, **layout_options)
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise TypeError(
            f"{error}; layout options are erk_power_scale, layer_sparsity, include, keep_dense, "
            "dense_first_layer, dense_last_layer and structure."
        ) from None


def check_pooled_scope(scope: str, layout: SparsityLayout, option: str) -> None:
    """Raises unless ``scope`` is ``"layer"`` or the layout lets one count pool across layers.

    A row-wise structure (N:M, constant fan-in) fixes every row's count, which one global threshold
    over all layers would break.
    """
    if scope == "global" and layout.row_wise:
        raise ValueError(
            f"{option}='global' shares one threshold over all layers, but the structure "
            f"{layout.structure!r} fixes the count of every N:M group or neuron: use {option}='layer'."
        )


def drop_fraction_schedule(
    drop_fraction: float | Schedule, decay: str, schedule: UpdateSchedule
) -> jax.typing.ArrayLike | Schedule:
    """``drop_fraction`` as a schedule: a callable as is (once checked), a float decayed by ``decay``.

    A callable is evaluated on the update grid (every update step up to ``end_step``, subsampled
    evenly to at most 100,000 steps; the first 100,000 update steps when there is no end), and any
    value outside ``[0, 1]`` (NaN included) is an error: at run time the drop count is
    ``floor(n f_t)`` clipped to ``[0, n]``, so such values would silently turn updates off or clamp.
    """
    if callable(drop_fraction):
        _check_fraction_schedule(drop_fraction, schedule)
        return drop_fraction
    if decay not in DROP_FRACTION_DECAYS:
        raise ValueError(
            f"unknown drop_fraction_decay {decay!r}; choose 'cosine' or 'constant', or pass a "
            "schedule callable (e.g. jaxsparse.schedules.exponential_drop_fraction(...)) as drop_fraction."
        )
    if decay == "constant":
        return constant_drop_fraction(drop_fraction)
    if schedule.end_step is None:
        raise ValueError(
            "the cosine drop-fraction decay needs end_step (RigL uses about 75% of training); "
            "pass end_step=..., or drop_fraction_decay='constant'."
        )
    return cosine_drop_fraction(drop_fraction, schedule.begin_step, schedule.end_step)


def _check_fraction_schedule(drop_fraction: Schedule, schedule: UpdateSchedule) -> None:
    """Raises unless ``drop_fraction`` is in ``[0, 1]`` on the update grid (see ``drop_fraction_schedule``)."""
    every, begin = schedule.update_every, schedule.begin_step
    count = _CHECKED_STEPS if schedule.end_step is None else (schedule.end_step - begin) // every + 1
    index = np.unique(np.linspace(0, count - 1, min(count, _CHECKED_STEPS)).astype(np.int64))
    steps = begin + every * index
    with jax.ensure_compile_time_eval():
        values = np.asarray(jax.vmap(drop_fraction)(jnp.asarray(steps, jnp.int32)), np.float64)
    if values.shape != steps.shape:
        raise ValueError(
            f"the drop_fraction schedule must return one float per step, got shape {values.shape[1:]} at each step."
        )
    bad = np.flatnonzero(~((values >= 0.0) & (values <= 1.0)))
    if bad.size:
        raise ValueError(
            f"the drop_fraction schedule returns {float(values[bad[0]])} at update step {int(steps[bad[0]])} "
            f"({bad.size} of the {steps.size} update steps checked are outside [0, 1]): a drop fraction is the "
            "share of each layer's active weights replaced, so return values in [0, 1] (clip it, e.g. "
            "lambda t: jnp.clip(f(t), 0.0, 1.0))."
        )
