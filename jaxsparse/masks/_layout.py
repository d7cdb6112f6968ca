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
from jaxsparse.distributions import DISTRIBUTIONS, layer_sparsities, validate_sparsity
from jaxsparse.masks._structure import Structure, Unstructured

__all__ = [
    "LeafFilter",
    "LayerPlan",
    "SparsityLayout",
    "StructureSpec",
    "default_filter",
    "fixed_sparsity",
    "leaf_name",
    "natural_key",
    "structures_of",
]

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


def leaf_names(tree) -> list[str]:
    """The :func:`leaf_name` of every leaf of ``tree``, in flattening order."""
    return [leaf_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _listing(names: list[str]) -> str:
    """Names for an error message: all of them up to 12, then a count of the rest."""
    shown = ", ".join(repr(name) for name in names[:12])
    return shown + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def _structure_spec(structure) -> StructureSpec:
    """A structure, or ``(pattern, structure)`` pairs from a mapping or sequence, checked and hashable."""
    if isinstance(structure, Structure):
        return structure
    pairs = tuple(structure.items()) if isinstance(structure, Mapping) else structure
    try:
        pairs = tuple((pattern, value) for pattern, value in pairs)
    except (TypeError, ValueError):
        pairs = ()
    if not pairs or not all(isinstance(p, str) and isinstance(v, Structure) for p, v in pairs):
        raise TypeError(
            "structure must be a jaxsparse.masks structure such as OutputChannels() or NM(2, 4), or a "
            f"{{pattern: structure}} mapping, got {structure!r}."
        )
    for pattern, _ in pairs:
        re.compile(pattern)
    return pairs


def structures_of(structure: StructureSpec) -> tuple[Structure, ...]:
    """Every structure a spec names: the one structure, or each of its per-layer pairs'."""
    return (structure,) if isinstance(structure, Structure) else tuple(s for _, s in _structure_spec(structure))


def fixed_sparsity(structure: StructureSpec) -> float | None:
    """The sparsity the structure fixes (N:M's ``1 - N/M``), if all its structures fix one and the same.

    Example:
      >>> from jaxsparse.masks import NM
      >>> fixed_sparsity(NM(1, 4)), fixed_sparsity(Unstructured())
      (0.75, None)
    """
    fixed = {s.fixed_sparsity for s in structures_of(structure)}
    return fixed.pop() if len(fixed) == 1 and None not in fixed else None


def natural_key(name: str) -> list:
    """Sort key of leaf names in network order: digit runs compare as numbers (``layer_9`` before ``layer_10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """The static plan of one sparsified leaf: its name, shape, structure and exact counts.

    Counts are over the entries of the layer's mask, one per group of its structure (one per weight
    when unstructured), and hold per *row* (:mod:`jaxsparse.masks` structures): the whole layer is
    one row, except for row-wise structures (an N:M group, a neuron under constant fan-in). With
    ``size = N_l`` entries in ``rows`` rows of ``row_size``, each row keeps ``row_active`` entries:
    ``N_l - floor(S_l N_l)`` for one row, the structure's per-row count otherwise.
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
    def rows(self) -> int:
        """Rows with their own exact count (1: the whole layer)."""
        return self.structure.rows(self.mask_shape)

    @property
    def row_size(self) -> int:
        """Mask entries per row."""
        return self.size // self.rows

    @property
    def row_active(self) -> int:
        """``True`` entries per row: the structure's ``row_count`` (``N_l - floor(S_l N_l)`` for one row)."""
        return self.structure.row_count(self.sparsity, self.row_size)

    @property
    def active(self) -> int:
        """``rows * row_active``: the number of ``True`` entries in the layer's mask."""
        return self.rows * self.row_active

    @property
    def zeros(self) -> int:
        """``size - active`` (``floor(S_l * N_l)`` for one row)."""
        return self.size - self.active


StructureSpec = Structure | tuple[tuple[str, Structure], ...]
"""One structure for every sparsified leaf, or ``(pattern, structure)`` pairs: the first pattern
:func:`re.search`-matching a leaf's name gives its structure (a mapping is accepted too)."""


@dataclasses.dataclass(frozen=True)
class SparsityLayout:
    """How a global sparsity is laid out over a parameter tree.

    Attributes:
      sparsity: global target sparsity ``S`` in ``[0, 1)`` over the sparsified leaves.
      distribution: ``"uniform"``, ``"er"`` or ``"erk"`` (see :mod:`jaxsparse.distributions`).
      erk_power_scale: exponent of the ERK raw score.
      layer_sparsity: per-layer overrides ``{pattern: sparsity}``; matching layers sit outside the
        distribution's budget (as in the RigL reference), so the global sparsity is then not
        exactly ``S``. The first matching pattern wins. An override may be exactly ``1.0``: that layer
        keeps no weight (a layer collapse, which global pruning at initialisation can produce).
      include: filter deciding which leaves are sparsified (default: rank >= 2, not a bias).
      keep_dense: patterns of leaves never sparsified (e.g. ``("embed",)``).
      dense_first_layer: keep the first sparsifiable leaf dense.
      dense_last_layer: keep the last sparsifiable leaf dense.
      structure: the unit a mask entry selects (:mod:`jaxsparse.masks` structures; default: single
        weights), or ``{pattern: structure}`` per layer (first match wins; every sparsified leaf
        must match one). Counts hold at group level, masks are stored at group size, and the
        distributions count groups: ERK's budget ``sum_l (1 - S_l) N_l`` is over each layer's
        ``N_l`` groups. A structure that fixes its sparsity (N:M) takes its layers out of the
        distribution; ``sparsity=None`` then means "the structure's".

    "First" and "last" follow the natural order of the leaf names (``Dense_2`` before
    ``Dense_10``); name layers explicitly with ``keep_dense`` when that order is not the network's.
    """

    sparsity: float | None
    distribution: str = "erk"
    erk_power_scale: float = 1.0
    layer_sparsity: tuple[tuple[str, float], ...] = ()
    include: LeafFilter = default_filter
    keep_dense: tuple[str, ...] = ()
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    structure: StructureSpec = Unstructured()

    def __post_init__(self):
        object.__setattr__(self, "structure", _structure_spec(self.structure))
        if self.sparsity is None:
            object.__setattr__(self, "sparsity", self._structures_sparsity())
        object.__setattr__(self, "sparsity", validate_sparsity(self.sparsity))
        fixed = self._structures_sparsity(required=False)
        if fixed is not None and not math.isclose(self.sparsity, fixed, abs_tol=1e-9):
            raise ValueError(
                f"sparsity={self.sparsity!r} conflicts with the structure {self._structure_names()}, which fixes "
                f"every layer's sparsity at {fixed:.6g}: drop the sparsity (pass None; on the command line, leave "
                f"--sparsity out) or pass {fixed:.6g}."
            )
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.distribution!r}; choose one of {', '.join(map(repr, DISTRIBUTIONS))}."
            )
        if not self.erk_power_scale >= 0:
            raise ValueError(f"erk_power_scale must be >= 0, got {self.erk_power_scale}.")
        overrides = self.layer_sparsity
        if isinstance(overrides, Mapping):
            overrides = tuple(overrides.items())
        overrides = tuple(
            (p, validate_sparsity(value, f"layer_sparsity[{p!r}]", allow_full=True)) for p, value in overrides
        )
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

    def at_sparsity(self, sparsity: float) -> SparsityLayout:
        """This layout at another global ``sparsity``, each structure adapted (``Structure.at_sparsity``)."""
        spec = self.structure
        structure = (
            spec.at_sparsity(sparsity)
            if isinstance(spec, Structure)
            else tuple((pattern, s.at_sparsity(sparsity)) for pattern, s in spec)
        )
        return dataclasses.replace(self, sparsity=sparsity, structure=structure)

    @property
    def row_wise(self) -> bool:
        """Some layer's structure counts per row (N:M, constant fan-in), so no count is pooled across layers."""
        return any(s.row_wise for s in self._structures())

    def _structures(self) -> tuple[Structure, ...]:
        return structures_of(self.structure)

    def _structure_names(self) -> str:
        return ", ".join(repr(s) for s in self._structures())

    def _structures_sparsity(self, required: bool = True) -> float | None:
        """:func:`fixed_sparsity` of the structure, or with ``required`` an error when there is none."""
        fixed = fixed_sparsity(self.structure)
        if fixed is None and required:
            raise ValueError(
                f"sparsity=None needs a structure that fixes the sparsity (N:M), got {self._structure_names()}: "
                "pass a sparsity such as 0.9."
            )
        return fixed

    def structure_of(self, name: str) -> Structure:
        """The structure of the sparsified leaf called ``name``.

        Raises:
          ValueError: a per-layer structure mapping has no pattern matching ``name``.
        """
        if isinstance(self.structure, Structure):
            return self.structure
        for pattern, structure in self.structure:
            if re.search(pattern, name):
                return structure
        raise ValueError(
            f"parameter {name!r} matches no pattern of the structure mapping "
            f"{[pattern for pattern, _ in self.structure]}: add a pattern for it ('' matches every name), "
            "or keep it dense (keep_dense=...)."
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

        structures = {}
        for i in ordered:
            structures[i] = self.structure_of(names[i])
            shape = tuple(jnp.shape(leaves[i][1]))
            try:
                structures[i].mask_shape(shape)
            except ValueError as error:
                raise ValueError(f"parameter {names[i]!r}: {error}") from None
        overridden = {}
        for i in ordered:
            for pattern, value in self.layer_sparsity:
                if re.search(pattern, names[i]):
                    if structures[i].fixed_sparsity is not None:
                        raise ValueError(
                            f"layer_sparsity pattern {pattern!r} sets parameter {names[i]!r} to {value}, but its "
                            f"structure {structures[i]!r} fixes its sparsity at {structures[i].fixed_sparsity:.6g}: "
                            "drop the override or give the layer another structure."
                        )
                    overridden[i] = value
                    break
            if structures[i].fixed_sparsity is not None:
                overridden[i] = structures[i].fixed_sparsity
        for pattern, _ in self.layer_sparsity:
            if not any(re.search(pattern, names[i]) for i in ordered):
                raise ValueError(
                    f"layer_sparsity pattern {pattern!r} matches no sparsified parameter; the sparsified leaves are "
                    f"{_listing([names[i] for i in ordered])}. Fix the pattern (a regular expression searched in "
                    "each name), or drop it."
                )
        budgeted = [i for i in ordered if i not in overridden]
        shapes = [tuple(jnp.shape(leaves[i][1])) for i in budgeted]
        groups = [math.prod(structures[i].mask_shape(shape)) for i, shape in zip(budgeted, shapes, strict=True)]
        sparsities = dict(
            zip(
                budgeted,
                layer_sparsities(shapes, self.sparsity, self.distribution, self.erk_power_scale, sizes=groups),
                strict=True,
            )
        )
        sparsities.update(overridden)
        plans = [None] * len(leaves)
        for i in ordered:
            plan = LayerPlan(names[i], tuple(jnp.shape(leaves[i][1])), sparsities[i], structures[i])
            try:  # a structure's per-row count may reject the sparsity (constant fan-in's k = 0)
                structures[i].row_count(plan.sparsity, plan.row_size)
            except ValueError as error:
                raise ValueError(f"parameter {names[i]!r}: {error}") from None
            plans[i] = plan
        return plans
