"""Hyperparameters given as numbers of any kind: Python, numpy or concrete JAX scalars.

``static(np.float32(0.5))`` and ``static(jnp.asarray(0.5))`` mean what ``static(0.5)`` means, so
every factory reads its numeric hyperparameters through :func:`real_scalar`, which returns a
Python ``float`` (so algorithms built from equal values compare and hash equal). Booleans are
refused (``True`` is an ``int`` in Python, but never a sparsity), and so are traced values: a
hyperparameter fixes the static layout, so it must be known when the algorithm is built.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["real_scalar"]


def real_scalar(value: Any, name: str, expected: str) -> float:
    """``value`` as a Python float, or a ``TypeError`` naming ``name`` and what was ``expected``.

    Args:
      value: an ``int``/``float``, a numpy scalar or a 0-d numpy or concrete JAX array of a real
        (integer or floating) dtype.
      name: the argument's name, for the message.
      expected: what a valid value looks like, e.g. ``"a float in [0, 1)"``.
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a concrete number, got a traced value: hyperparameters fix the static layout, "
            "so build the algorithm outside jit/vmap (or pass a schedule callable where one is accepted)."
        )
    dtype = getattr(value, "dtype", None)
    real = isinstance(value, (int, float)) or (
        dtype is not None
        and np.ndim(value) == 0
        and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))
    )
    if isinstance(value, (bool, np.bool_)) or not real:
        raise TypeError(f"{name} must be {expected}, got {value!r} of type {type(value).__name__}.")
    return float(value)
