"""Channel spaces: union-find over the axes of a program's values, refined where reshapes split them.

Every axis of every value is a sequence of *atoms*, major to minor; an axis of size ``n`` starts as
one atom of size ``n`` (size-1 axes have none). Two atoms are *coupled* when index ``i`` of one is
index ``i`` of the other in the computation (an element-wise operation, a transpose, a contraction
pairs them). A reshape that flattens ``(H, W, C)`` into ``H*W*C`` couples the flat axis with the
sequence ``(H, W, C)``: the flat atom is *split* into three, and everything coupled with it is
split the same way. Coupled atoms form a class, a *channel space*: removing index ``i`` of a class
removes it from every atom in it at once. This is the dependency graph of Fang et al. (CVPR 2023,
"DepGraph"), found here on the jaxpr.

A class can be *fixed* (never shrunk): it reaches the function's inputs or outputs, an axis an
operation treats position by position (a convolution's spatial axes, a slice, a padding), or an
operation this analysis does not follow.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Atoms"]


class Atoms:
    """A union-find of atoms with sizes, splits and a fixed flag per class."""

    def __init__(self):
        self._parent: list[int] = []
        self.size: list[int] = []
        self._children: dict[int, tuple[int, ...]] = {}
        self._fixed: dict[int, str] = {}

    def new(self, size: int) -> int:
        self._parent.append(len(self._parent))
        self.size.append(int(size))
        return len(self._parent) - 1

    def axis(self, size: int) -> list[int]:
        """The atoms of a fresh axis of ``size`` (none for size 1)."""
        return [] if size == 1 else [self.new(size)]

    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def leaves(self, atoms: Sequence[int]) -> list[int]:
        """The classes of ``atoms``, major to minor, with every split followed to the end."""
        out = []
        for atom in atoms:
            root = self.find(atom)
            if root in self._children:
                out.extend(self.leaves(self._children[root]))
            else:
                out.append(root)
        return out

    def fixed(self, root: int) -> str | None:
        """Why the class of ``root`` is fixed, or ``None``."""
        return self._fixed.get(self.find(root))

    def fix(self, atoms: Sequence[int], reason: str) -> None:
        for leaf in self.leaves(atoms):
            self._fixed.setdefault(leaf, reason)

    def _split(self, root: int, major: int) -> tuple[int, int]:
        children = (self.new(major), self.new(self.size[root] // major))
        self._children[root] = children
        if root in self._fixed:
            for child in children:
                self._fixed[child] = self._fixed[root]
        return children

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self._parent[b] = a
        if b in self._fixed:
            self._fixed.setdefault(a, self._fixed[b])

    def equate(self, first: Sequence[int], second: Sequence[int], reason: str) -> None:
        """Couples two atom sequences of the same total size, splitting atoms to a common refinement.

        When no common refinement exists (``(4, 6)`` against ``(6, 4)``), both are fixed with ``reason``.
        """
        a, b = self.leaves(first), self.leaves(second)
        i = j = 0
        while i < len(a) and j < len(b):
            size_a, size_b = self.size[a[i]], self.size[b[j]]
            if size_a == size_b:
                self._union(a[i], b[j])
                i, j = i + 1, j + 1
            elif size_b % size_a == 0:
                b[j : j + 1] = self._split(b[j], size_a)
            elif size_a % size_b == 0:
                a[i : i + 1] = self._split(a[i], size_b)
            else:
                self.fix(a, reason)
                self.fix(b, reason)
                return
        if i != len(a) or j != len(b):
            raise AssertionError(f"equate: sizes differ ({a}, {b})")
