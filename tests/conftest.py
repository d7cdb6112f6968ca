"""Shared test settings and fixtures.

Strict numerics, as in equinox's test suite: rank promotion raises, so a broadcasting slip in the
library fails loudly instead of silently reshaping a mask.
"""

import gc
import os

# Eight CPU devices for the distributed tests (tests/test_distributed.py). XLA reads the flag when
# the backend starts, on first use, so setting it here, before any test runs, is early enough.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"])

import jax  # noqa: E402
import pytest  # noqa: E402

import jaxsparse as jsp  # noqa: E402
from tests import example_algorithm  # noqa: E402
from tests.helpers import make_batch, make_mlp  # noqa: E402

# The worked example of docs/design.md joins every registry-driven test with this one line.
jsp.algorithms.register(example_algorithm.METHOD)

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def mlp():
    return make_mlp(jax.random.key(0), (12, 32, 16, 4))


@pytest.fixture
def batch():
    return make_batch(jax.random.key(1), 16, 12, 4)


@pytest.fixture
def fast_compiles():
    """Compile with most XLA optimisations off (faster compiles; exact-zero checks unaffected)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drops every compiled program after each test module.

    Each XLA CPU executable maps memory of its own, and a whole session keeps thousands of them
    in JAX's caches: the process then approaches the kernel's limit of 65,530 memory maps
    (``vm.max_map_count``), where compilation crashes (a segfault or abort inside
    ``backend_compile``, with no message). Modules share no compiled programs worth keeping.
    """
    yield
    jax.clear_caches()
    gc.collect()
