"""Layer-wise sparsity distributions: how a global sparsity ``S`` is split across layers.

Given sparsified layers ``l`` with sizes ``N_l`` and raw density scores ``p_l``:

* ``uniform``: every layer gets ``S``.
* ``er`` (Erdős–Rényi, Mocanu et al. 2018): ``p_l = (n_in + n_out) / (n_in * n_out)`` with
  ``n_in, n_out`` the two trailing dimensions of the kernel.
* ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020): ``p_l = (sum_d shape_d / prod_d shape_d) ** power``
  with ``power = erk_power_scale`` (1 is ERK; 0 is uniform up to rounding).

For ``er``/``erk`` the densities are ``eps * p_l`` with the scale ``eps`` chosen so that the number
of zeros matches a uniform ``S``; with ``D`` the set of layers saturated to dense,

.. math::

    \\epsilon = \\frac{\\sum_{l \\notin D} (N_l - \\lfloor S N_l \\rfloor) - \\sum_{l \\in D}
    \\lfloor S N_l \\rfloor}{\\sum_{l \\notin D} p_l N_l}

and whenever some ``eps * p_l > 1`` the layers with the largest raw score join ``D`` and ``eps`` is
recomputed (RigL, ``rigl/sparse_utils.py``). Each layer then has exactly
``floor(S_l * N_l)`` zeros with ``S_l = 1 - density_l``.

References:
  Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
  connectivity inspired by network science", Nature Communications 2018.
  Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020, Section 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxsparse._scalars import real_scalar

__all__ = ["DISTRIBUTIONS", "layer_sparsities", "zeros_count", "validate_sparsity"]

DISTRIBUTIONS = ("uniform", "er", "erk")


def validate_sparsity(value: float, name: str = "sparsity", *, allow_full: bool = False) -> float:
    """Checks that a sparsity is a real number in ``[0, 1)`` and returns it as a Python float.

    Python, numpy and concrete JAX scalars are accepted alike (``np.float32(0.9)`` is ``0.9``).
    With ``allow_full``, exactly ``1.0`` (every weight removed) is accepted too: one layer may be
    pruned entirely, never the whole network.
    """
    interval = "[0, 1]" if allow_full else "[0, 1)"
    value = real_scalar(value, name, f"a float in {interval}")
    if not (0.0 <= value < 1.0 or (allow_full and value == 1.0)) or math.isnan(value):
        raise ValueError(
            f"{name}={value!r} is outside {interval}: it is the fraction of weights set to zero, so use "
            "e.g. 0.9 for 90% sparse" + ("." if allow_full else " (1.0 would remove every weight).")
        )
    return float(value)


def zeros_count(sparsity: float, size: int) -> int:
    """``floor(sparsity * size)``: the exact number of zeros a layer of ``size`` weights gets."""
    return int(math.floor(sparsity * size))


def _raw_score(shape: Sequence[int], distribution: str, erk_power_scale: float) -> float:
    if distribution == "er":
        n_in, n_out = shape[-2], shape[-1]
        return (n_in + n_out) / (n_in * n_out)
    return (sum(shape) / math.prod(shape)) ** erk_power_scale


def layer_sparsities(
    shapes: Sequence[Sequence[int]],
    sparsity: float,
    distribution: str = "erk",
    erk_power_scale: float = 1.0,
    sizes: Sequence[int] | None = None,
) -> list[float]:
    """Per-layer sparsities ``S_l`` that realise a global sparsity ``S``.

    Args:
      shapes: the kernel shape of each sparsified layer (rank >= 2 for ``er``).
      sparsity: the global target ``S`` in ``[0, 1)``.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"``.
      erk_power_scale: exponent applied to the ERK raw score.
      sizes: the number of mask entries ``N_l`` of each layer (default: its weights); a structured
        layout counts groups, so the budget is over groups while ``p_l`` still comes from the shape.

    Returns:
      One sparsity per layer; layers that saturate get ``0.0`` (dense).

    Example:
      >>> [round(s, 4) for s in layer_sparsities([(100, 100), (100, 10)], 0.9, "erk")]
      [0.929, 0.6097]
    """
    sparsity = validate_sparsity(sparsity)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {', '.join(map(repr, DISTRIBUTIONS))}.")
    if erk_power_scale < 0:
        raise ValueError(f"erk_power_scale must be >= 0, got {erk_power_scale}.")
    if distribution == "uniform":
        return [sparsity] * len(shapes)
    if distribution == "er" and any(len(s) < 2 for s in shapes):
        raise ValueError("the 'er' distribution needs kernels of rank >= 2 (it uses the two trailing dims).")

    sizes = [math.prod(s) for s in shapes] if sizes is None else list(sizes)
    raw = [_raw_score(s, distribution, erk_power_scale) for s in shapes]
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        if not free:
            return [0.0] * len(shapes)
        budget = sum(sizes[i] - zeros_count(sparsity, sizes[i]) for i in free) - sum(
            zeros_count(sparsity, sizes[i]) for i in dense
        )
        eps = budget / sum(raw[i] * sizes[i] for i in free)
        if all(eps * raw[i] <= 1.0 for i in free):
            break
        top = max(raw[i] for i in free)
        dense.update(i for i in free if raw[i] == top)
    return [0.0 if i in dense else 1.0 - eps * raw[i] for i in range(len(shapes))]
