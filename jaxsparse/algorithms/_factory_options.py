"""Argument handling the factories share: the layout from keyword options, and the drop-fraction schedule."""

from __future__ import annotations

import jax

from jaxsparse.masks import SparsityLayout
from jaxsparse.schedules import Schedule, UpdateSchedule, constant_drop_fraction, cosine_drop_fraction

__all__ = ["DROP_FRACTION_DECAYS", "drop_fraction_schedule", "make_layout"]

DROP_FRACTION_DECAYS = ("cosine", "constant")


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


def drop_fraction_schedule(
    drop_fraction: float | Schedule, decay: str, schedule: UpdateSchedule
) -> jax.typing.ArrayLike | Schedule:
    """``drop_fraction`` as a schedule: a callable as is, a float decayed by ``decay``."""
    if callable(drop_fraction):
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
