"""Total-order integer keys for floating-point scores.

Selecting the top ``k`` of a float tensor exactly is easier on unsigned integers: a float's IEEE
bit pattern can be mapped to a ``uint32`` whose unsigned order equals the float's numeric order.
For a float32 bit pattern ``b`` with sign bit ``s``:

.. math::

    \\operatorname{key}(b) = \\begin{cases} \\lnot b & s = 1 \\\\ b \\lor 2^{31} & s = 0 \\end{cases}

so ``-inf < ... < -0.0 <= +0.0 < ... < +inf``. NaN ranks below everything (key ``0``): a NaN score is
chosen only when ``k`` exceeds the number of finite-or-infinite scores, so a diverged weight or
gradient never displaces a finite one, yet the selected count stays exactly ``k``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["order_keys"]

_SIGN_BIT = np.uint32(0x80000000)  # numpy: importing jaxsparse must not start a JAX backend


def order_keys(scores: jax.Array) -> jax.Array:
    """Maps scores to ``uint32`` keys whose unsigned order is the scores' numeric order.

    Args:
      scores: a floating array (float64 is rounded to float32, bfloat16/float16 widen exactly), or
        a ``uint32`` array, which already is a key and is returned unchanged.

    Returns:
      A ``uint32`` array of the same shape. NaN maps to ``0``, the lowest key.

    Example:
      >>> import jax.numpy as jnp
      >>> keys = order_keys(jnp.array([-1.0, 0.0, 2.0, jnp.nan]))
      >>> [int(i) for i in jnp.argsort(keys)]
      [3, 0, 1, 2]
    """
    if scores.dtype == jnp.uint32:
        return scores
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        raise TypeError(
            f"order_keys expects floating scores or uint32 keys, got dtype {scores.dtype}; "
            "cast integer scores to float32 first."
        )
    as_float32 = scores.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(as_float32, jnp.uint32)
    negative = (bits & _SIGN_BIT) != 0
    keys = jnp.where(negative, ~bits, bits | _SIGN_BIT)
    return jnp.where(jnp.isnan(as_float32), jnp.uint32(0), keys)
