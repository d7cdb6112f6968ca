"""Constant channels folded into the next product: removing a filter whose output is a non-zero constant.

A dense layer's zeroed filter with bias ``b_i`` emits ``relu(b_i)``, a constant ``c_i``, for every
input. Where that channel meets a product with a known matrix (the next dense kernel ``W``), its
term is the same for every input, ``c_i W[i, :]``: the channel can be removed and the term added to
the product's result as a constant. For ``out = dot_general(T, S)`` with ``S`` known (computed
from the parameters alone) and ``T`` constant along the removed indices ``R``:

.. math::

    \\text{out} = \\text{dot}(T_{\\text{kept}}, S_{\\text{kept}}) + \\text{dot}(\\bar T_R, S_R),

where ``T̄_R`` holds ``T``'s constants with ``T``'s free axes of size 1, so the fold broadcasts over
the batch (and over tokens). Only ``dot_general`` is folded: a convolution's term varies near the
borders where it pads, so a constant channel feeding a convolution is kept (and reported).

The fold is a constant of the compacted model: training the compacted model further leaves it
fixed, as it leaves the removed weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxsparse.compaction._constants import Slices
from jaxsparse.compaction._coupling import Coupling, Sink
from jaxsparse.compaction._program import Program

__all__ = ["concrete_values", "fold_term", "foldable_side"]


def concrete_values(program: Program, known: dict[int, Any], limit: int = 1 << 24) -> dict[int, np.ndarray]:
    """The values computed from the parameters and constants alone (a kernel's reshape, a norm's scale)."""
    values = {v: np.asarray(x) for v, x in {**program.constants, **known}.items()}
    for eqn in program.equations:
        if not all(v in values for v in eqn.inputs) or any(math.prod(program.shapes[v]) > limit for v in eqn.outputs):
            continue
        try:
            results = eqn.bind([values[v] for v in eqn.inputs])
        except Exception:  # noqa: BLE001 - a primitive that cannot run eagerly (e.g. random bits) stays unknown
            continue
        for v, result in zip(eqn.outputs, results, strict=True):
            values[v] = np.asarray(result)
    return values


def foldable_side(program: Program, sink: Sink, concrete: dict[int, np.ndarray]) -> int | None:
    """For a ``dot_general`` sink, the operand whose constant channels can be folded (the other is known)."""
    if program.equations[sink.equation].name != "dot_general":
        return None
    lhs, rhs = sink.operands
    if rhs in concrete and lhs not in concrete:
        return 0
    if lhs in concrete and rhs not in concrete:
        return 1
    return None


def fold_term(
    program: Program,
    coupling: Coupling,
    sink: Sink,
    side: int,
    removed: dict[int, np.ndarray],
    slices: list[Slices],
    concrete: dict[int, np.ndarray],
) -> np.ndarray | None:
    """``dot(T̄_R, S_R)`` for one sink (full sizes, ``T``'s free axes of size 1), or ``None`` if it is zero.

    Args:
      removed: per channel class, a boolean vector of the indices removed.
    """
    eqn = program.equations[sink.equation]
    constant, known_operand = sink.operands[side], sink.operands[1 - side]
    (contracting, batch) = (eqn.params["dimension_numbers"][0][side], eqn.params["dimension_numbers"][1][side])
    shape = program.shapes[constant]
    fill = np.zeros([n if d in contracting or d in batch else 1 for d, n in enumerate(shape)], np.float64)
    found = False
    for d in contracting:
        classes = coupling.leaves(constant, d)
        sizes = [coupling.atoms.size[c] for c in classes]
        for k, c in enumerate(classes):
            if c not in removed or c not in slices[constant]:
                continue
            values, known = slices[constant][c]
            use = removed[c] & known & (values != 0)
            if not use.any():
                continue
            found = True
            # Axis d of `fill` as its atoms; put class c's constants at its removed indices.
            split = [*fill.shape[:d], *sizes, *fill.shape[d + 1 :]]
            view = fill.reshape(split)
            index = [slice(None)] * view.ndim
            index[d + k] = np.flatnonzero(use)
            shaped = [1] * view.ndim
            shaped[d + k] = int(use.sum())
            view[tuple(index)] = np.asarray(values, np.float64)[use].reshape(shaped)
            fill = view.reshape(fill.shape)
    if not found:
        return None
    operands = [fill, np.asarray(concrete[known_operand], np.float64)]
    if side == 1:
        operands.reverse()
    (result,) = eqn.bind(operands, preferred_element_type=None)
    return np.asarray(result, program.dtypes[eqn.outputs[0]])
