"""Which channels of which values are known constants: the slices that removal may drop.

For a value and one of its channel classes ``c``, slice ``i`` along ``c`` is *constant* when every
element of the value whose ``c``-index is ``i`` equals one number, for every input of the model.
:func:`channel_constants` finds such slices by propagating through the program from the known
values (the parameters, literals and constants):

* a known array: slice ``i`` is constant where its minimum equals its maximum;
* element-wise primitives: the primitive applied to the operands' constants (a product with a
  known zero is zero whatever the other factor);
* moves (reshape, transpose, broadcast, slicing other axes): carried; a sum over other axes: the
  constant times the number of terms; a max or min over other axes: the constant;
* ``dot_general`` and convolutions: a result channel is zero where the operand it comes from is
  zero along it;
* anything else: unknown.

A batch-normalised channel whose filter is zero is the constant ``beta - mu gamma / sigma``, and
after a ReLU it is zero where that is negative: such channels are found removable too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.compaction._coupling import ELEMENTWISE, Coupling
from jaxsparse.compaction._program import Program

__all__ = ["Slices", "channel_constants"]

Slices = dict[int, tuple[np.ndarray, np.ndarray]]
"""``{class: (values, known)}`` for one value: slice ``i`` along ``class`` is ``values[i]`` where ``known[i]``."""

_CARRY = frozenset(
    {
        "broadcast_in_dim",
        "reshape",
        "squeeze",
        "transpose",
        "slice",
        "dynamic_slice",
        "reduce_max",
        "reduce_min",
        "reduce_window_max",
        "reduce_window_min",
    }
)


def _known_array(value, classes: list[int], sizes: list[int]) -> Slices:
    array = np.asarray(value)
    if array.dtype == jax.dtypes.float0 or not classes:
        return {}
    array = array.reshape(sizes)
    out = {}
    for k, leaf in enumerate(classes):
        if leaf in out:
            continue
        rows = np.moveaxis(array, k, 0).reshape(sizes[k], -1)
        first = rows[:, 0]
        with np.errstate(invalid="ignore"):
            known = np.all(rows == first[:, None], axis=1)
        out[leaf] = (first, known)
    return out


def _scalar(program: Program, value: int):
    """The value as one number, if it is a known constant with all elements equal."""
    if value not in program.constants:
        return None
    array = np.asarray(program.constants[value])
    if array.size == 0 or array.dtype == jax.dtypes.float0:
        return None
    flat = array.reshape(-1)
    return flat[0] if np.all(flat == flat[0]) else None


def channel_constants(program: Program, coupling: Coupling, known: dict[int, object]) -> list[Slices]:
    """Per value id, the constant slices along its channel classes.

    Args:
      program: the traced model.
      coupling: its channel classes.
      known: the values known besides the program's constants (the parameters), by id.
    """
    values = {**program.constants, **known}
    slices: list[Slices] = [{} for _ in program.shapes]
    for value, array in values.items():
        classes = coupling.leaves(value)
        slices[value] = _known_array(array, classes, [coupling.atoms.size[c] for c in classes])
    for eqn in program.equations:
        if len(eqn.outputs) != 1:
            continue
        out = eqn.outputs[0]
        classes = coupling.leaves(out)
        if not classes or out in values:
            continue
        name = eqn.name
        if name in ELEMENTWISE:
            slices[out] = _elementwise(program, coupling, eqn, classes, slices)
        elif name in _CARRY or name == "reduce_sum":
            source = slices[eqn.inputs[0]]
            factor = 1
            if name == "reduce_sum":
                factor = math.prod(program.shapes[eqn.inputs[0]][d] for d in eqn.params["axes"])
            slices[out] = {c: (source[c][0] * factor, source[c][1]) for c in classes if c in source}
        elif name in ("dot_general", "conv_general_dilated"):
            slices[out] = {}
            for c in classes:
                zero = None
                for operand in eqn.inputs[:2]:
                    if c in slices[operand]:
                        v, k = slices[operand][c]
                        z = k & (v == 0)
                        zero = z if zero is None else zero | z
                if zero is not None:
                    slices[out][c] = (np.zeros(coupling.atoms.size[c], np.dtype(program.dtypes[out])), zero)
        elif name in ("reduce_window_sum", "cumsum", "pad"):
            source = slices[eqn.inputs[0]]
            fill = _scalar(program, eqn.inputs[1]) if name == "pad" else 0
            slices[out] = {}
            if fill is not None:
                for c in classes:
                    if c in source:
                        v, k = source[c]
                        slices[out][c] = (v, k & (v == fill))
    return slices


def _elementwise(program: Program, coupling: Coupling, eqn, classes: list[int], slices: list[Slices]) -> Slices:
    out = {}
    for c in classes:
        size = coupling.atoms.size[c]
        operands, known, zero = [], np.ones(size, bool), np.zeros(size, bool)
        for value in eqn.inputs:
            if c in slices[value]:
                v, k = slices[value][c]
            else:
                scalar = _scalar(program, value) if c not in coupling.leaves(value) else None
                if scalar is None:
                    v, k = np.zeros(size, np.dtype(program.dtypes[value])), np.zeros(size, bool)
                else:
                    v, k = np.full(size, scalar), np.ones(size, bool)
            operands.append(jnp.asarray(v, program.dtypes[value]))
            known &= k
            zero |= k & (v == 0)
        (result,) = eqn.bind(operands)
        result = np.asarray(result)
        if eqn.name in ("mul", "and"):
            known |= zero
            result = np.where(zero, np.zeros_like(result), result)
        out[c] = (result, known)
    return out
