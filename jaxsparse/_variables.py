"""Seeing through flax nnx's ``Variable`` boxes, without importing flax.

nnx keeps every parameter and optimizer-state array in a ``Variable`` (``Param``, ``OptVariable``,
...), a pytree node around one value. ``nnx.Optimizer`` calls ``tx.init`` on ``Param``-boxed
parameters, boxes every leaf of the state it gets back (masks included) in an ``OptVariable``, and
calls ``tx.update`` on unboxed trees. So the same parameters, masks and recorded tree structure
reach the library boxed at one call and bare at the next. Wherever trees are named or lined up
with each other (the layout's leaf names, masks against params, the inspection helpers), they are
compared unboxed, with ``nnx.as_pure``, nnx's own way of dropping the boxes; a box holds exactly
one child, so the leaves keep their order and results can be put back in the caller's structure.

The core does not depend on flax: a ``Variable`` can only exist once ``flax.nnx`` is imported, so
while it is absent from ``sys.modules`` every tree is returned as it is.
"""

from __future__ import annotations

import sys
from typing import Any, TypeVar

__all__ = ["unboxed"]

T = TypeVar("T")


def unboxed(tree: T) -> T:
    """``tree`` with every nnx ``Variable`` replaced by its value (``tree`` itself without flax nnx)."""
    nnx: Any = sys.modules.get("flax.nnx")
    return tree if nnx is None else nnx.as_pure(tree)
