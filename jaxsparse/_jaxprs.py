"""Small shared helpers for walking jaxprs: the jaxprs nested in an equation, and which are calls."""

from __future__ import annotations

from collections.abc import Sequence

from jax.extend import core as jex_core

__all__ = ["LOOPS", "call_body", "sub_jaxprs"]

LOOPS = frozenset({"scan", "while", "cond"})
"""Primitives whose nested jaxprs run a data-dependent or repeated number of times: not calls."""


def sub_jaxprs(eqn: jex_core.JaxprEqn) -> list[tuple[jex_core.Jaxpr, Sequence]]:
    """The jaxprs in an equation's parameters, each with its constants."""
    found = []
    for value in eqn.params.values():
        if isinstance(value, jex_core.ClosedJaxpr):
            found.append((value.jaxpr, value.consts))
        elif isinstance(value, jex_core.Jaxpr):
            found.append((value, ()))
    return found


def call_body(eqn: jex_core.JaxprEqn) -> tuple[jex_core.Jaxpr, Sequence] | None:
    """The one body a call-like equation (``jit``, ``remat``, custom derivatives) runs on its operands, else ``None``.

    A call passes its operands to its body's inputs in order and returns the body's outputs.
    """
    if eqn.primitive.name in LOOPS:
        return None
    subs = sub_jaxprs(eqn)
    if len(subs) != 1:
        return None
    body, consts = subs[0]
    if len(body.invars) != len(eqn.invars) or len(body.outvars) != len(eqn.outvars):
        return None
    return body, consts
