"""Which parameters are sparsified, and how many zeros each one gets.

A :class:`SparsityLayout` is static structure: it is resolved from parameter *shapes* once, in
Python, when masks are created or an update is traced. It never depends on values, so it is free
under ``jit`` and identical on every device and host.

Leaves are named by their key path joined with ``/`` (``"params/Dense_0/kernel"``). The default
filter sparsifies every leaf of rank >= 2 not named ``bias`` (kernels), so biases and normalisation
scales stay dense, as in the RigL reference. Patterns are regular expressions matched with :func:`re.search`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from jaxsparse._variables import unboxed
from jaxsparse.distributions import DISTRIBUTIONS, layer_sparsities, validate_sparsity, zeros_count
from jaxsparse.masks._structure import Structure, Unstructured

__all__ = ["LeafFilter", "LayerPlan", "SparsityLayout", "default_filter", "leaf_name", "natural_key"]

LeafFilter = Callable[[str, jax.Array], bool]
"""Decides from a leaf's name and value (shape, dtype) whether it is sparsified."""


def default_filter(name: str, leaf: jax.Array) -> bool:
    """Sparsify kernels: every leaf of rank >= 2 that is not a bias.

    Biases and norm scales stay dense. Most biases have rank 1, but flax's attention projections
    keep theirs as ``(heads, head_dim)``, so biases are also excluded by name.
    """
    return jnp.ndim(leaf) >= 2 and name.rsplit("/", 1)[-1] != "bias"


def leaf_name(path: tuple) -> str:
    """The ``/``-joined name of a key path, e.g. ``"params/Dense_0/kernel"``."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _listing(names: list[str]) -> str:
    """Names for an error message: all of them up to 12, then a count of the rest."""
    shown = ", ".join(repr(name) for name in names[:12])
    return shown + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def natural_key(name: str) -> list:
    """Sort key of leaf names in network order: digit runs compare as numbers (``layer_9`` before ``layer_10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """The static plan of one sparsified leaf: its name, shape, structure and exact zero count.

    Counts are over the entries of the layer's mask, one per group of its structure (one per weight
    when unstructured): ``size`` is the number of groups ``N_l``, ``zeros = floor(S_l N_l)`` and
    ``active = N_l - zeros``.
    """

    name: str
    shape: tuple[int, ...]
    sparsity: float
    structure: Structure = Unstructured()

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """The shape of the layer's mask: the parameter's shape cut into groups."""
        return self.structure.mask_shape(self.shape)

    @property
    def size(self) -> int:
        """``N_l``: the number of mask entries (groups)."""
        return math.prod(self.mask_shape)

    @property
    def group_size(self) -> int:
        """Weights per group (1 when unstructured)."""
        return math.prod(self.shape) // max(self.size, 1)

    @property
    def zeros(self) -> int:
        """``floor(S_l * N_l)``."""
        return zeros_count(self.sparsity, self.size)

    @property
    def active(self) -> int:
        """``N_l - floor(S_l * N_l)``: the number of ``True`` entries in the layer's mask."""
        return self.size - self.zeros


@dataclasses.dataclass(frozen=True)
class SparsityLayout:
    """How a global sparsity is laid out over a parameter tree.

    Attributes:
      sparsity: global target sparsity ``S`` in ``[0, 1)`` over the sparsified leaves.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"`` (see :mod:`jaxsparse.distributions`).
      erk_power_scale: exponent of the ERK raw score.
      layer_sparsity: per-layer overrides ``{pattern: sparsity}``; matching layers sit outside the
        distribution's budget (as in the RigL reference), so the global sparsity is then not
        exactly ``S``. The first matching pattern wins.
      include: filter deciding which leaves are sparsified (default: rank >= 2, not a bias).
      keep_dense: patterns of leaves never sparsified (e.g. ``("embed",)``).
      dense_first_layer: keep the first sparsifiable leaf dense.
      dense_last_layer: keep the last sparsifiable leaf dense.
      structure: the unit a mask entry selects (:mod:`jaxsparse.masks` structures; default: single
        weights). Counts hold at group level, and masks are stored at group size.

    "First" and "last" follow the natural order of the leaf names (``Dense_2`` before
    ``Dense_10``); name layers explicitly with ``keep_dense`` when that order is not the network's.
    """

    sparsity: float
    distribution: str = "erk"
    erk_power_scale: float = 1.0
    layer_sparsity: tuple[tuple[str, float], ...] = ()
    include: LeafFilter = default_filter
    keep_dense: tuple[str, ...] = ()
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    structure: Structure = Unstructured()

    def __post_init__(self):
        object.__setattr__(self, "sparsity", validate_sparsity(self.sparsity))
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.distribution!r}; choose one of {', '.join(map(repr, DISTRIBUTIONS))}."
            )
        if not self.erk_power_scale >= 0:
            raise ValueError(f"erk_power_scale must be >= 0, got {self.erk_power_scale}.")
        overrides = self.layer_sparsity
        if isinstance(overrides, Mapping):
            overrides = tuple(overrides.items())
        overrides = tuple((p, validate_sparsity(value, f"layer_sparsity[{p!r}]")) for p, value in overrides)
        object.__setattr__(self, "layer_sparsity", overrides)
        for pattern, _ in overrides:
            re.compile(pattern)
        # Tuples keep the layout hashable, so compiled functions can cache on it.
        keep_dense = (self.keep_dense,) if isinstance(self.keep_dense, str) else tuple(self.keep_dense)
        object.__setattr__(self, "keep_dense", keep_dense)
        for pattern in self.keep_dense:
            re.compile(pattern)
        if not callable(self.include):
            raise TypeError(f"include must be a callable (name, leaf) -> bool, got {self.include!r}.")
        if not isinstance(self.structure, Structure):
            raise TypeError(
                f"structure must be a jaxsparse.masks structure such as OutputChannels(), got {self.structure!r}."
            )

    def plan(self, params) -> list[LayerPlan | None]:
        """One entry per leaf of ``params`` (flattening order): its plan, or ``None`` if dense.

        Leaves with no elements (a ``(0, n)`` kernel) are never sparsified.

        Raises:
          ValueError: if ``params`` is ``None`` or no leaf is sparsified.
          ValueError: if a ``keep_dense`` pattern matches no leaf, or a ``layer_sparsity`` pattern no
            sparsified leaf (the message lists the names), since a mistyped pattern would otherwise
            silently do nothing.
          TypeError: if a sparsified leaf is not floating point.
          ValueError: if the structure does not fit a sparsified leaf's shape (the message names it).
        """
        if params is None:
            raise ValueError("params is None: pass the parameter pytree whose kernels should be sparsified.")
        # Named without nnx's Variable boxes, which nnx.Optimizer passes to init but not to update.
        leaves = jax.tree_util.tree_leaves_with_path(unboxed(params))
        names = [leaf_name(path) for path, _ in leaves]
        for pattern in self.keep_dense:
            if not any(re.search(pattern, name) for name in names):
                raise ValueError(
                    f"keep_dense pattern {pattern!r} matches no parameter; the leaves are {_listing(names)}. "
                    "Fix the pattern (a regular expression searched in each name), or drop it."
                )
        # An empty leaf has nothing to sparsify (and no shape to give the distributions).
        chosen = [
            i
            for i, ((_, leaf), name) in enumerate(zip(leaves, names, strict=True))
            if math.prod(jnp.shape(leaf)) > 0
            and self.include(name, leaf)
            and not any(re.search(p, name) for p in self.keep_dense)
        ]
        ordered = sorted(chosen, key=lambda i: natural_key(names[i]))
        if self.dense_first_layer and ordered:
            ordered = ordered[1:]
        if self.dense_last_layer and ordered:
            ordered = ordered[:-1]
        if not ordered:
            raise ValueError(
                f"no parameter is sparsified among {len(leaves)} leaves ({_listing(names)}): the filter keeps "
                "non-empty leaves of rank >= 2 by default; pass include=, or relax keep_dense / dense_first_layer "
                "/ dense_last_layer."
            )
        for i in ordered:
            dtype = jnp.result_type(leaves[i][1])
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"parameter {names[i]!r} has dtype {dtype}, but only floating-point parameters "
                    "can be sparsified; exclude it with keep_dense=(...) or include=."
                )

        overridden = {}
        for i in ordered:
            for pattern, value in self.layer_sparsity:
                if re.search(pattern, names[i]):
                    overridden[i] = value
                    break
        for pattern, _ in self.layer_sparsity:
            if not any(re.search(pattern, names[i]) for i in ordered):
                raise ValueError(
                    f"layer_sparsity pattern {pattern!r} matches no sparsified parameter; the sparsified leaves are "
                    f"{_listing([names[i] for i in ordered])}. Fix the pattern (a regular expression searched in "
                    "each name), or drop it."
                )
        budgeted = [i for i in ordered if i not in overridden]
        shapes = [tuple(jnp.shape(leaves[i][1])) for i in budgeted]
        sparsities = dict(
            zip(budgeted, layer_sparsities(shapes, self.sparsity, self.distribution, self.erk_power_scale), strict=True)
        )
        sparsities.update(overridden)
        plans = [None] * len(leaves)
        for i in ordered:
            shape = tuple(jnp.shape(leaves[i][1]))
            try:
                self.structure.mask_shape(shape)
            except ValueError as error:
                raise ValueError(f"parameter {names[i]!r}: {error}") from None
            plans[i] = LayerPlan(names[i], shape, sparsities[i], self.structure)
        return plans
