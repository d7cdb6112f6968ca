"""Shared test settings and fixtures.

Strict numerics, as in equinox's test suite: rank promotion raises, so a broadcasting slip in the
library fails loudly instead of silently reshaping a mask.
"""

import jax
import pytest

from tests.helpers import make_batch, make_mlp

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def mlp():
    return make_mlp(jax.random.key(0), (12, 32, 16, 4))


@pytest.fixture
def batch():
    return make_batch(jax.random.key(1), 16, 12, 4)
