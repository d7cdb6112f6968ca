"""The core-v2 port changed no behaviour: 300 steps of every built-in algorithm match the last commit before it.

``tests/data/port_reference.npz`` holds the final masks and parameters that commit 58c9684 (before the
port) produced with ``python -m tests.port_reference``; the same script runs here on the current code.
"""

from pathlib import Path

import numpy as np
import pytest

from tests import port_reference

REFERENCE = np.load(Path(__file__).parent / "data" / "port_reference.npz")


@pytest.mark.parametrize("name", sorted(port_reference.algorithms()))
def test_300_steps_match_the_pre_port_commit(name):
    result = port_reference.run(port_reference.algorithms()[name])
    expected = {key.split("|", 1)[1]: REFERENCE[key] for key in REFERENCE.files if key.startswith(f"{name}|")}
    assert sorted(result) == sorted(expected)
    assert any(key.startswith("mask:") for key in expected)
    for key, want in expected.items():
        if key.startswith("mask:"):
            np.testing.assert_array_equal(result[key], want, err_msg=f"{name} {key}")  # bit-identical masks
        else:
            np.testing.assert_allclose(result[key], want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
