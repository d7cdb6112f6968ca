"""A traced model as one flat list of primitive equations, with every call inlined.

:func:`trace` runs :func:`jax.make_jaxpr` on ``fn(*args)`` and inlines the bodies of call-like
equations (``jit``, ``remat``, ``custom_jvp_call``, ``custom_vjp_call``), so that the dependency
analysis and the compacted interpreter see one sequence of primitives. Values are numbered: every
jaxpr variable of every inlined body gets its own id (a body inlined twice gets fresh ids), and
literals and closed-over constants become ids with a known value.

Inlining drops custom derivative rules (``jax.nn.relu``'s derivative at exactly 0, for example):
the compacted model differentiates its primitives directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxsparse._jaxprs import call_body

__all__ = ["Equation", "Program", "trace"]


@dataclasses.dataclass(frozen=True)
class Equation:
    """One primitive application: ``outputs = primitive.bind(*inputs, **params)``, in value ids."""

    primitive: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    params: dict[str, Any]
    context: Any

    @property
    def name(self) -> str:
        return self.primitive.name

    def bind(self, values: Sequence[Any], **overrides) -> list[Any]:
        """The primitive on ``values``, with some parameters replaced."""
        params = {**self.primitive.get_bind_params(self.params), **overrides}
        with self.context.manager:
            results = self.primitive.bind(*values, **params)
        return list(results) if self.primitive.multiple_results else [results]


@dataclasses.dataclass
class Program:
    """The flat computation of a traced function.

    Attributes:
      equations: in execution order.
      shapes, dtypes: of every value id.
      constants: the known values (literals and closed-over constants), by id.
      inputs: the ids of the function's flattened arguments, in order.
      outputs: the ids of its flattened results.
      out_tree: the results' tree structure.
    """

    equations: list[Equation] = dataclasses.field(default_factory=list)
    shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    dtypes: list[Any] = dataclasses.field(default_factory=list)
    constants: dict[int, Any] = dataclasses.field(default_factory=dict)
    inputs: list[int] = dataclasses.field(default_factory=list)
    outputs: list[int] = dataclasses.field(default_factory=list)
    out_tree: Any = None

    def new_value(self, aval) -> int:
        self.shapes.append(tuple(int(n) for n in aval.shape))
        self.dtypes.append(aval.dtype)
        return len(self.shapes) - 1

    def _inline(self, jaxpr: jex_core.Jaxpr, consts: Sequence, inputs: Sequence[int]) -> list[int]:
        env: dict[Any, int] = {}

        def read(var) -> int:
            if isinstance(var, jex_core.Literal):
                value = self.new_value(var.aval)
                self.constants[value] = np.asarray(var.val)
                return value
            return env[var]

        for var, const in zip(jaxpr.constvars, consts, strict=True):
            env[var] = self.new_value(var.aval)
            self.constants[env[var]] = const
        for var, value in zip(jaxpr.invars, inputs, strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            operands = [read(var) for var in eqn.invars]
            body = call_body(eqn)
            if body is not None:
                results = self._inline(body[0], body[1], operands)
                for var, value in zip(eqn.outvars, results, strict=True):
                    env[var] = value
                continue
            outputs = [self.new_value(var.aval) for var in eqn.outvars]
            for var, value in zip(eqn.outvars, outputs, strict=True):
                env[var] = value
            self.equations.append(Equation(eqn.primitive, tuple(operands), tuple(outputs), dict(eqn.params), eqn.ctx))
        return [read(var) for var in jaxpr.outvars]


def trace(fn: Callable, *args) -> Program:
    """The flat :class:`Program` of ``fn(*args)`` (array leaves may be :class:`jax.ShapeDtypeStruct`)."""
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    program = Program()
    program.inputs = [program.new_value(var.aval) for var in closed.jaxpr.invars]
    program.outputs = program._inline(closed.jaxpr, closed.consts, program.inputs)
    program.out_tree = jax.tree.structure(out_shape)
    return program
