"""Update grid, drop-fraction schedules and the gradual sparsity ramp."""

import math

import numpy as np
import pytest

from jaxsparse.schedules import (
    UpdateSchedule,
    constant_drop_fraction,
    cosine_drop_fraction,
    exponential_drop_fraction,
    polynomial_sparsity,
)


def test_update_grid_respects_begin_end_and_interval():
    schedule = UpdateSchedule(begin_step=10, end_step=40, update_every=15)
    on = [t for t in range(60) if bool(schedule.is_update_step(t))]
    assert on == [10, 25, 40]


def test_update_grid_without_end():
    schedule = UpdateSchedule(begin_step=0, end_step=None, update_every=100)
    assert [t for t in range(0, 1001, 50) if bool(schedule.is_update_step(t))] == list(range(0, 1001, 100))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(update_every=0), "update_every must be an int >= 1"),
        (dict(begin_step=-1), "begin_step must be a non-negative int"),
        (dict(begin_step=10, end_step=5), "end_step=5 is before begin_step=10"),
    ],
)
def test_update_schedule_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UpdateSchedule(**kwargs)


def test_cosine_drop_fraction_is_rigl_formula():
    f = cosine_drop_fraction(0.3, begin_step=100, end_step=1100)
    for t in (0, 100, 350, 600, 1100, 5000):
        progress = min(max(t - 100, 0), 1000) / 1000
        assert float(f(t)) == pytest.approx(0.3 / 2 * (1 + math.cos(math.pi * progress)), abs=1e-6)


def test_constant_and_exponential_drop_fraction():
    assert float(constant_drop_fraction(0.2)(12345)) == pytest.approx(0.2)
    f = exponential_drop_fraction(0.4, decay_rate=0.5, transition_steps=100)
    assert [float(f(t)) for t in (0, 100, 200)] == pytest.approx([0.4, 0.2, 0.1])
    with pytest.raises(ValueError, match="drop_fraction must be a float in"):
        constant_drop_fraction(1.5)


def test_polynomial_sparsity_is_zhu_gupta():
    s = polynomial_sparsity(0.9, begin_step=100, end_step=1100, initial_sparsity=0.1, power=3)
    for t in (0, 100, 400, 1100, 2000):
        p = min(max(t - 100, 0), 1000) / 1000
        assert float(s(t)) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - p) ** 3, abs=1e-6)
    values = np.array([float(s(t)) for t in range(0, 1200, 50)])
    assert (np.diff(values) >= -1e-7).all()
