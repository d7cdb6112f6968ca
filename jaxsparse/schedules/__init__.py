"""Schedules: mask-update grid, drop fraction, and gradual sparsity."""

from jaxsparse.schedules._schedules import (
    Schedule,
    UpdateSchedule,
    constant,
    constant_drop_fraction,
    cosine_drop_fraction,
    exponential_drop_fraction,
    polynomial_sparsity,
)

__all__ = [
    "Schedule",
    "UpdateSchedule",
    "constant",
    "constant_drop_fraction",
    "cosine_drop_fraction",
    "exponential_drop_fraction",
    "polynomial_sparsity",
]
