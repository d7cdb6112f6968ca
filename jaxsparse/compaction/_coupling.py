"""Which axes of a program's values are the same channel space: the coupling rules per primitive.

:func:`couple` walks a :class:`~jaxsparse.compaction._program.Program` once and, per equation,
couples the atoms of its operands and results (see :mod:`jaxsparse.compaction._atoms`):

* element-wise primitives (with size-1 broadcasting), casts, ``select_n``: axis ``d`` of every
  operand with ``d``'s full size is axis ``d`` of the result;
* ``broadcast_in_dim``, ``transpose``, ``squeeze``, ``reshape``: the axes they move, merge or split;
* ``dot_general``: batch axes with the result's, free axes with the result's, and each contracting
  axis of the left operand with the right's; the contraction is recorded as a *sink*;
* ``conv_general_dilated`` (ungrouped): batch with batch, the kernel's output features with the
  result's, the input's features with the kernel's input features (a sink); spatial axes are fixed;
* ``reduce_sum`` over an axis: a sink; ``reduce_max``, ``argmax`` and the like over it: fixed;
* ``reduce_window*``, ``slice``, ``pad``, ``dynamic_slice``, ``concatenate``, ``cumsum``...: the
  axes they leave whole are coupled, the axes they window, cut, pad or join are fixed;
* primitives that make values from nothing (``iota``, random bits): fresh axes;
* anything else (a gather, a loop, a custom call): every axis it touches is fixed, and the
  primitive is recorded so that an error can name it.

A sink is where a channel's index stops being carried and is summed over: removing index ``i`` is
exact if at every sink the summed term is exactly zero there (see
:mod:`jaxsparse.compaction._constants`).
"""

from __future__ import annotations

import dataclasses
import math

from jaxsparse.compaction._atoms import Atoms
from jaxsparse.compaction._program import Equation, Program

__all__ = ["INPUT", "SPATIAL", "Coupling", "Sink", "couple"]

SPATIAL = "a spatial axis"
"""The start of the reason a convolution's window axes are fixed: not channels at all."""
INPUT = "an axis of the model's input"

ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp conj convert_element_type copy copy_p cos
    cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt igamma imag integer_pow is_finite le lgamma log
    log1p logistic lt max min mul ne neg nextafter not or population_count pow real reduce_precision rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square stop_gradient sub tan
    tanh xor""".split()
)
"""Primitives that compute each result element from the operands' elements at the same index."""

SHAPE_FREE = ELEMENTWISE | {
    "transpose",
    "squeeze",
    "dot_general",
    "conv_general_dilated",
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_and",
    "reduce_or",
    "argmax",
    "argmin",
    "reduce_window_sum",
    "reduce_window_max",
    "reduce_window_min",
    "cumsum",
    "cumprod",
    "cummax",
    "cummin",
    "cumlogsumexp",
    "pad",
    "concatenate",
    "sort",
    "rev",
    "split",
}
"""Primitives whose parameters do not name the sizes of the axes they leave whole (run as they are)."""

_REDUCE_FIXING = frozenset({"reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax", "argmin"})
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
_WINDOWS = frozenset({"reduce_window_sum", "reduce_window_max", "reduce_window_min"})


@dataclasses.dataclass(frozen=True)
class Sink:
    """An equation that sums over channel axes: ``operands[k]``'s axes ``axes[k]`` are summed together."""

    equation: int
    operands: tuple[int, ...]
    axes: tuple[tuple[int, ...], ...]


@dataclasses.dataclass
class Coupling:
    """The atoms of every value's axes, and the sinks.

    Attributes:
      atoms: the union-find.
      axes: ``axes[value][d]``: the atoms of axis ``d`` of ``value``.
      sinks: the summing equations.
      unsupported: ``{primitive name: count}`` of equations this analysis does not follow.
    """

    atoms: Atoms
    axes: list[list[list[int]]]
    sinks: list[Sink]
    unsupported: dict[str, int]

    def leaves(self, value: int, axis: int | None = None) -> list[int]:
        """The channel classes of one axis of ``value`` (every axis, in order, when ``axis`` is ``None``)."""
        dims = self.axes[value] if axis is None else [self.axes[value][axis]]
        return self.atoms.leaves([atom for dim in dims for atom in dim])


def _fix_all(atoms: Atoms, axes, values, reason: str) -> None:
    for value in values:
        for dim in axes[value]:
            atoms.fix(dim, reason)


def couple(program: Program) -> Coupling:
    """The :class:`Coupling` of ``program`` (see the module docstring for the rules)."""
    atoms = Atoms()
    axes = [[atoms.axis(n) for n in shape] for shape in program.shapes]
    coupling = Coupling(atoms, axes, [], {})
    for index, eqn in enumerate(program.equations):
        _couple_equation(coupling, program, index, eqn)
    _fix_all(atoms, axes, program.outputs, "it is an axis of the model's output")
    return coupling


def _couple_equation(coupling: Coupling, program: Program, index: int, eqn: Equation) -> None:
    atoms, axes = coupling.atoms, coupling.axes
    shapes = program.shapes
    name = eqn.name
    ins, outs = eqn.inputs, eqn.outputs
    where = f"{name} (equation {index})"

    def same(a: int, da: int, b: int, db: int) -> None:
        atoms.equate(axes[a][da], axes[b][db], f"a reshape in {where} regroups it incompatibly")

    def fix(value: int, dims, reason: str = f"{where} treats it position by position") -> None:
        for d in dims:
            atoms.fix(axes[value][d], reason)

    if name in ELEMENTWISE:
        out = outs[0]
        for value in ins:
            if len(shapes[value]) == len(shapes[out]):
                for d, (n, m) in enumerate(zip(shapes[value], shapes[out], strict=True)):
                    if n == m:
                        same(value, d, out, d)
        return
    if name == "broadcast_in_dim":
        (value, *_), out = ins, outs[0]
        for d, od in enumerate(eqn.params["broadcast_dimensions"]):
            if shapes[value][d] == shapes[out][od]:
                same(value, d, out, od)
        return
    if name in ("reshape", "squeeze"):
        atoms.equate(
            [a for dim in axes[ins[0]] for a in dim],
            [a for dim in axes[outs[0]] for a in dim],
            f"{where} regroups it incompatibly",
        )
        return
    if name == "transpose":
        for d, source in enumerate(eqn.params["permutation"]):
            same(ins[0], source, outs[0], d)
        return
    if name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs, out = ins[0], ins[1], outs[0]
        for a, b in zip(lc, rc, strict=True):
            same(lhs, a, rhs, b)
        for k, (a, b) in enumerate(zip(lb, rb, strict=True)):
            same(lhs, a, out, k)
            same(rhs, b, out, k)
        free_l = [d for d in range(len(shapes[lhs])) if d not in lc and d not in lb]
        free_r = [d for d in range(len(shapes[rhs])) if d not in rc and d not in rb]
        for k, d in enumerate(free_l + free_r):
            same(lhs if k < len(free_l) else rhs, d, out, len(lb) + k)
        coupling.sinks.append(Sink(index, (lhs, rhs), (tuple(lc), tuple(rc))))
        return
    if name == "conv_general_dilated":
        lhs, rhs, out = ins[0], ins[1], outs[0]
        numbers = eqn.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
        if eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1:
            _fix_all(
                atoms, axes, (*ins, *outs), f"{where} is a grouped convolution, which this analysis does not split"
            )
            coupling.unsupported[f"grouped {name}"] = coupling.unsupported.get(f"grouped {name}", 0) + 1
            return
        same(lhs, lhs_spec[0], out, out_spec[0])
        same(rhs, rhs_spec[0], out, out_spec[1])
        same(lhs, lhs_spec[1], rhs, rhs_spec[1])
        spatial = f"{SPATIAL} of {where}"
        fix(lhs, lhs_spec[2:], spatial)
        fix(rhs, rhs_spec[2:], spatial)
        fix(out, out_spec[2:], spatial)
        coupling.sinks.append(Sink(index, (lhs, rhs), ((lhs_spec[1],), (rhs_spec[1],))))
        return
    if name == "reduce_sum" or name in _REDUCE_FIXING:
        value, out = ins[0], outs[0]
        reduced = tuple(eqn.params["axes"])
        kept = [d for d in range(len(shapes[value])) if d not in reduced]
        for k, d in enumerate(kept):
            same(value, d, out, k)
        if name == "reduce_sum":
            coupling.sinks.append(Sink(index, (value,), (reduced,)))
        else:
            fix(value, reduced)
        return
    if name in _CUMULATIVE:
        for d in range(len(shapes[ins[0]])):
            same(ins[0], d, outs[0], d)
        fix(ins[0], (eqn.params["axis"],))
        return
    if name in _WINDOWS:
        p = eqn.params
        for d in range(len(shapes[ins[0]])):
            whole = (
                p["window_dimensions"][d] == 1
                and p["window_strides"][d] == 1
                and tuple(p["padding"][d]) == (0, 0)
                and p["base_dilation"][d] == 1
                and p["window_dilation"][d] == 1
            )
            same(ins[0], d, outs[0], d) if whole else fix(ins[0], (d,))
        return
    if name in ("slice", "dynamic_slice"):
        value, out = ins[0], outs[0]
        for d, n in enumerate(shapes[value]):
            same(value, d, out, d) if shapes[out][d] == n else fix(value, (d,))
        return
    if name == "pad":
        for d, config in enumerate(eqn.params["padding_config"]):
            same(ins[0], d, outs[0], d) if tuple(config) == (0, 0, 0) else fix(ins[0], (d,))
        return
    if name in ("concatenate", "split"):
        axis = eqn.params["dimension" if name == "concatenate" else "axis"]
        for value in (*ins, *outs):
            for d in range(len(shapes[value])):
                if d != axis:
                    same(value, d, outs[0], d)
            fix(value, (axis,))
        return
    if name in ("sort", "rev"):
        moved = (eqn.params["dimension"],) if name == "sort" else tuple(eqn.params["dimensions"])
        for value in (*ins, *outs):
            for d in range(len(shapes[value])):
                same(value, d, outs[0], d)
            fix(value, moved)
        return
    if not ins or all(math.prod(shapes[v]) == 1 or v in program.constants for v in ins):
        return  # made from nothing or from constants (iota, random bits from a constant key): fresh axes
    _fix_all(atoms, axes, (*ins, *outs), f"{where} is not followed by the compaction analysis")
    coupling.unsupported[name] = coupling.unsupported.get(name, 0) + 1
