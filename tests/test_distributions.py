"""Layer-wise distributions against hand-computed ERK/ER cases, including saturation."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse.distributions import layer_sparsities, zeros_count


def test_erk_hand_computed_two_layers():
    # p = (100+100)/10^4 = 0.02 and (100+10)/10^3 = 0.11; budget = 1000 + 100 ones;
    # eps = 1100 / (0.02*10^4 + 0.11*10^3) = 1100/310.
    eps = 1100 / 310
    expected = [1 - eps * 0.02, 1 - eps * 0.11]
    assert layer_sparsities([(100, 100), (100, 10)], 0.9, "erk") == pytest.approx(expected, rel=1e-12)


def test_erk_saturated_layer_goes_dense_and_budget_moves():
    # Small layer: p = 20/100 = 0.2, eps*p = 9.9 > 1 on the first pass, so it becomes dense and its
    # floor(0.9*100) = 90 zeros move to the big layer: density = (10^5 - 90) / 10^6.
    sparsities = layer_sparsities([(10, 10), (1000, 1000)], 0.9, "erk")
    assert sparsities[0] == 0.0
    assert sparsities[1] == pytest.approx(1 - (100_000 - 90) / 1_000_000, rel=1e-12)
    total_zeros = zeros_count(sparsities[1], 10**6) + zeros_count(sparsities[0], 100)
    assert abs(total_zeros - zeros_count(0.9, 10**6 + 100)) <= 1


def test_er_uses_two_trailing_dims_and_erk_all_dims():
    conv = (3, 3, 16, 32)
    dense = (512, 10)
    er = layer_sparsities([conv, dense], 0.8, "er")
    erk = layer_sparsities([conv, dense], 0.8, "erk")
    p_er = [(16 + 32) / (16 * 32), (512 + 10) / 5120]
    p_erk = [sum(conv) / math.prod(conv), (512 + 10) / 5120]
    sizes = [math.prod(conv), 5120]
    for p, result in ((p_er, er), (p_erk, erk)):
        eps = sum(n - zeros_count(0.8, n) for n in sizes) / sum(pi * n for pi, n in zip(p, sizes, strict=True))
        assert result == pytest.approx([1 - eps * pi for pi in p], rel=1e-12)


def test_erk_power_scale_zero_is_uniform_up_to_rounding():
    shapes = [(64, 32), (32, 32), (32, 10)]
    assert layer_sparsities(shapes, 0.75, "erk", erk_power_scale=0.0) == pytest.approx([0.75] * 3, abs=1e-3)


@settings(max_examples=50, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=6),
    sparsity=st.floats(0, 0.99),
    distribution=st.sampled_from(["uniform", "er", "erk"]),
)
def test_distribution_keeps_the_global_budget(shapes, sparsity, distribution):
    sparsities = layer_sparsities(shapes, sparsity, distribution)
    assert all(0.0 <= s < 1.0 for s in sparsities)
    sizes = [a * b for a, b in shapes]
    zeros = sum(zeros_count(s, n) for s, n in zip(sparsities, sizes, strict=True))
    target = sum(zeros_count(sparsity, n) for n in sizes)
    # Per-layer flooring loses at most one zero per layer, saturation is exact by construction.
    assert target - len(shapes) <= zeros <= target + len(shapes)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        layer_sparsities([(4, 4)], bad, "uniform")


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError, match="unknown distribution 'erdos'.*'uniform', 'er', 'erk'"):
        layer_sparsities([(4, 4)], 0.5, "erdos")
