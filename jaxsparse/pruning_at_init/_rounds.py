"""SynFlow's exponential schedule of counts over its pruning rounds (Tanaka et al. 2020)."""

from __future__ import annotations

import numpy as np

__all__ = ["exponential_counts"]


def exponential_counts(active: int, size: int, rounds: int) -> np.ndarray:
    """Entries kept after each of ``rounds`` rounds: density ``d^(k/n)`` after round ``k``, ``d = active/size``.

    The count after round ``k`` is ``size - floor((1 - d^(k/n)) size)``, kept between ``active`` and
    ``size``; the last round keeps exactly ``active``, so float rounding never leaves the final
    masks off the layout's counts (Tanaka et al. 2020's exponential schedule).

    Example:
      >>> exponential_counts(10, 1000, 2).tolist()
      [100, 10]
    """
    k = np.arange(1, rounds + 1, dtype=np.float64)
    density = (active / size) ** (k / rounds)
    kept = size - np.floor((1.0 - density) * size).astype(np.int64)
    kept = np.clip(kept, active, size)
    kept[-1] = active
    return kept
