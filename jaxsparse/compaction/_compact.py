"""Compaction: remove a model's zero structures for real, and run the smaller dense model.

:func:`compact` traces ``apply_fn(params, *args)`` to a flat list of primitives, finds the channel
spaces that are coupled (:mod:`~jaxsparse.compaction._coupling`: a convolution's output channels
with its bias, the following norm's parameters and statistics, and the next layer's input
channels; the two branches of a residual sum; a flatten's blocks of features; attention heads
across query, key, value and the output projection), and removes index ``i`` of a channel space
exactly when every sum over that space receives a zero term at ``i``
(:mod:`~jaxsparse.compaction._constants`). The smaller model computes the same function: outputs
equal up to float rounding, which :func:`compact` checks on the example inputs before returning.

**What it returns, and why.** A :class:`CompactModel`: the smaller parameters and a callable with
the original signature, ``compacted(small_params, *args)``. The callable re-traces ``apply_fn``
abstractly for the inputs' shapes (at no FLOP cost, once per shape under ``jit``) and runs the same
primitives on the smaller arrays, rewriting only the sizes that reshapes and broadcasts name. This
works for any JAX model (flax linen, flax nnx, equinox, plain functions), where rebuilding a
module with smaller sizes would need every model class to accept per-layer widths. It is a plain
JAX function: ``jax.jit``, ``jax.grad`` and optax train it further.

Limits, each stated when it matters:

* Custom derivative rules inside ``apply_fn`` are inlined away (the primitives are differentiated
  directly), so ``relu``'s derivative at exactly 0 is that of ``max``.
* Channels are removed only where they are provably dead; a channel that is constant but not
  zero (a zero filter followed by a norm with a positive shift) is kept, and reported.
* Operations the analysis does not follow (a gather over channels, a loop, a custom call) fix every
  axis they touch. When that blocks removing a zero structure, :func:`compact` raises, naming the
  primitive and the parameters (or, with ``on_unsupported="keep"``, keeps them and reports why).

References:
  Fang, Ma, Song, Mi, Wang, "DepGraph: Towards Any Structural Pruning", CVPR 2023.
  Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.compaction._constants import channel_constants
from jaxsparse.compaction._coupling import INPUT, SHAPE_FREE, SPATIAL, Coupling, couple
from jaxsparse.compaction._folding import concrete_values, fold_term, foldable_side
from jaxsparse.compaction._program import Program, trace
from jaxsparse.masks import Params, leaf_names

__all__ = ["CompactModel", "LeafReport", "compact"]

Kept = tuple[np.ndarray | None, ...]
"""Per axis of a parameter leaf, the kept indices (``None``: the whole axis)."""


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """One parameter leaf before and after compaction.

    Attributes:
      name: the leaf's ``/``-joined path.
      before, after: its shapes.
      kept_because: for axes with zero channels that were kept, why (``{axis: reason}``).
    """

    name: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    kept_because: Mapping[int, str]


def _cache_key(args) -> tuple:
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves)


@dataclasses.dataclass(frozen=True, eq=False)
class CompactModel:
    """A compacted model: ``compacted(small_params, *args)`` computes ``apply_fn(params, *args)``.

    Attributes:
      apply_fn: the original model, called as ``apply_fn(params, *args)``.
      full_shapes: the original parameters' shapes and dtypes (a tree of ``jax.ShapeDtypeStruct``).
      kept: ``{leaf name: per axis, the kept indices or None}`` for every parameter leaf.
      params: the smaller parameters.
      report: per leaf, the shapes before and after, and why zero channels were kept.
      folds: ``(k, term)``: the constant added to the ``k``-th ``dot_general``'s result, from
        removed channels that were constant (:mod:`~jaxsparse.compaction._folding`).
    """

    apply_fn: Callable
    full_shapes: Params
    kept: Mapping[str, Kept]
    params: Params
    report: tuple[LeafReport, ...] = ()
    folds: tuple[tuple[int, np.ndarray], ...] = ()
    _traces: dict = dataclasses.field(default_factory=dict, repr=False)

    def __call__(self, params: Params, *args):
        program, coupling, keep, folds = self._traced(_cache_key(args), args)
        values = [*jax.tree.leaves(params), *jax.tree.leaves(args)]
        outputs = _run(program, coupling, keep, values, folds)
        return jax.tree.unflatten(program.out_tree, outputs)

    def _traced(self, key, args):
        """The program, its coupling and the kept channels, traced once per input structure and shapes."""
        if key not in self._traces:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), args)
            program = trace(self.apply_fn, self.full_shapes, *abstract)
            coupling = couple(program)
            keep = _keep_from_leaves(coupling, program, self.full_shapes, self.kept)
            self._traces[key] = (program, coupling, keep, _place_folds(program, coupling, keep, self.folds))
        return self._traces[key]

    def compact_params(self, params: Params) -> Params:
        """A tree of the original shapes (parameters, or their gradients) cut to the compacted shapes."""
        names = leaf_names(params)
        leaves = [
            _take_axes(np.asarray(leaf), self.kept[name])
            for name, leaf in zip(names, jax.tree.leaves(params), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(x) for x in leaves])

    def expand_params(self, small: Params) -> Params:
        """The compacted parameters put back at their original positions, zeros elsewhere."""
        names = leaf_names(self.full_shapes)
        out = []
        for name, leaf, full in zip(names, jax.tree.leaves(small), jax.tree.leaves(self.full_shapes), strict=True):
            array = np.zeros(full.shape, full.dtype)
            index = np.ix_(
                *[np.arange(n) if k is None else k for n, k in zip(full.shape, self.kept[name], strict=True)]
            )
            array[index] = np.asarray(leaf)
            out.append(jnp.asarray(array))
        return jax.tree.unflatten(jax.tree.structure(small), out)

    @property
    def parameter_counts(self) -> tuple[int, int]:
        """``(before, after)`` numbers of parameters."""
        before = sum(math.prod(x.shape) for x in jax.tree.leaves(self.full_shapes))
        after = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(self.params))
        return before, after


def _take_axes(array: np.ndarray, kept: Kept) -> np.ndarray:
    for axis, indices in enumerate(kept):
        if indices is not None:
            array = np.take(array, indices, axis=axis)
    return array


def _keep_from_leaves(coupling: Coupling, program: Program, full_shapes, kept: Mapping[str, Kept]) -> dict[int, Any]:
    """Per channel class, its kept indices, decoded from the parameter leaves' kept flat indices."""
    keep: dict[int, np.ndarray] = {}
    owner: dict[int, str] = {}
    for value, name in zip(program.inputs, leaf_names(full_shapes), strict=False):  # then the arguments
        for axis, indices in enumerate(kept[name]):
            if indices is None:
                continue
            classes = coupling.leaves(value, axis)
            sizes = [coupling.atoms.size[c] for c in classes]
            digits = np.unravel_index(np.asarray(indices), sizes) if classes else ()
            per_class = [np.unique(d) for d in digits]
            if math.prod(len(k) for k in per_class) != len(indices):
                raise ValueError(
                    f"kept indices of {name!r} axis {axis} do not form a product over its channel spaces {sizes}: "
                    "they were not made by compact() for this model."
                )
            for c, k in zip(classes, per_class, strict=True):
                if c in keep and not np.array_equal(keep[c], k):
                    raise ValueError(
                        f"{name!r} axis {axis} and {owner[c]!r} are coupled, but their kept channels differ: they were "
                        "not made by compact() for this model."
                    )
                if len(k) < coupling.atoms.size[c] or c in keep:
                    keep[c], owner[c] = k, name
    return {c: k for c, k in keep.items() if len(k) < coupling.atoms.size[c]}


def _place_folds(program: Program, coupling: Coupling, keep, folds) -> dict[int, np.ndarray]:
    """The folds by equation index of this trace (the ``k``-th ``dot_general``), checked to fit its result."""
    products = [i for i, eqn in enumerate(program.equations) if eqn.name == "dot_general"]
    placed = {}
    for ordinal, term in folds:
        index = products[ordinal] if ordinal < len(products) else None
        target = None if index is None else _small_shape(coupling, program, keep, program.equations[index].outputs[0])
        if target is None or np.broadcast_shapes(np.shape(term), target) != target:
            raise ValueError(
                f"this compacted model folds a constant into its product number {ordinal}, but the model traced for "
                f"these inputs has no such product of a fitting shape ({target}): compact it for this model."
            )
        placed[index] = term
    return placed


def _small_shape(coupling: Coupling, program: Program, keep, value: int) -> tuple[int, ...]:
    shape = []
    for axis, n in enumerate(program.shapes[value]):
        for c in coupling.leaves(value, axis):
            if c in keep:
                n = n // coupling.atoms.size[c] * len(keep[c])
        shape.append(n)
    return tuple(shape)


def _take(coupling: Coupling, program: Program, keep, value: int, array):
    """``array`` (of ``value``'s shape, or broadcastable to it) with the removed channels of each axis taken out."""
    for d in range(np.ndim(array)):
        classes = coupling.leaves(value, d)
        if np.shape(array)[d] == 1 or not any(c in keep for c in classes):
            continue
        shape = np.shape(array)
        array = jnp.reshape(array, (*shape[:d], *[coupling.atoms.size[c] for c in classes], *shape[d + 1 :]))
        for k, c in enumerate(classes):
            if c in keep:
                array = jnp.take(array, jnp.asarray(keep[c]), axis=d + k)
        array = jnp.reshape(array, (*shape[:d], -1, *shape[d + 1 :]))
    return array


def _run(program: Program, coupling: Coupling, keep, inputs, folds: Mapping[int, Any]) -> list:
    """Evaluates the program on compacted values, rewriting the sizes that primitives name, adding the folds."""
    env: dict[int, Any] = dict(zip(program.inputs, inputs, strict=True))
    for value, constant in program.constants.items():
        env[value] = _take(coupling, program, keep, value, constant)
    pruned = {v for v in range(len(program.shapes)) if any(c in keep for c in coupling.leaves(v))}
    for index, eqn in enumerate(program.equations):
        operands = [env[v] for v in eqn.inputs]
        if not any(v in pruned for v in eqn.inputs):
            results = eqn.bind(operands)
            results = [_take(coupling, program, keep, v, r) for v, r in zip(eqn.outputs, results, strict=True)]
        else:
            results = eqn.bind(operands, **_resized(eqn, program, coupling, keep))
        if index in folds:
            results = [results[0] + folds[index]]
        for value, result in zip(eqn.outputs, results, strict=True):
            env[value] = result
    return [env[v] for v in program.outputs]


def _resized(eqn, program: Program, coupling: Coupling, keep) -> dict[str, Any]:
    """The parameters naming sizes, for an equation whose operands are compacted."""
    name = eqn.name
    small = functools.partial(_small_shape, coupling, program, keep)
    if name == "broadcast_in_dim":
        return {"shape": small(eqn.outputs[0])}
    if name == "reshape":
        return {"new_sizes": small(eqn.outputs[0]), "dimensions": None}
    if name == "slice":
        return {
            "limit_indices": tuple(
                min(a, b) for a, b in zip(eqn.params["limit_indices"], small(eqn.inputs[0]), strict=True)
            )
        }
    if name == "dynamic_slice":
        return {
            "slice_sizes": tuple(
                min(a, b) for a, b in zip(eqn.params["slice_sizes"], small(eqn.inputs[0]), strict=True)
            )
        }
    if name in SHAPE_FREE:
        return {}
    raise AssertionError(f"compaction: {name} received compacted operands; this is a bug in jaxsparse.compaction.")


def _decide(program: Program, coupling: Coupling, param_values: dict[int, Any], concrete: dict[int, np.ndarray]):
    """Per parameter class, whether each index is removable; and the constant slices of every value.

    An index is removable when every sum over its class gets an exact zero there, or, at a
    ``dot_general`` with a known operand, a constant that can be folded (:mod:`._folding`).
    """
    slices = channel_constants(program, coupling, param_values)
    candidates = {c for value in param_values for c in coupling.leaves(value)}
    removable = {c: np.ones(coupling.atoms.size[c], bool) for c in candidates}
    for sink in coupling.sinks:
        per_operand = [
            coupling.atoms.leaves([a for d in axes for a in coupling.axes[v][d]])
            for v, axes in zip(sink.operands, sink.axes, strict=True)
        ]
        side = foldable_side(program, sink, concrete)
        for position, c in enumerate(per_operand[0]):
            if c not in removable:
                continue
            zero = np.zeros(coupling.atoms.size[c], bool)
            for k, (v, classes) in enumerate(zip(sink.operands, per_operand, strict=True)):
                if position < len(classes) and classes[position] in slices[v]:
                    values, known = slices[v][classes[position]]
                    zero |= known & ((values == 0) | (k == side))
            removable[c] &= zero
    return removable, slices


def _folds(program: Program, coupling: Coupling, keep, slices, concrete) -> tuple[tuple[int, np.ndarray], ...]:
    """The constants that removed non-zero channels add to each ``dot_general`` (by its ordinal), compacted."""
    removed = {c: ~np.isin(np.arange(coupling.atoms.size[c]), k) for c, k in keep.items()}
    ordinals = {i: k for k, i in enumerate(i for i, e in enumerate(program.equations) if e.name == "dot_general")}
    folds = []
    for sink in coupling.sinks:
        side = foldable_side(program, sink, concrete)
        term = None if side is None else fold_term(program, coupling, sink, side, removed, slices, concrete)
        if term is not None:
            out = program.equations[sink.equation].outputs[0]
            folds.append((ordinals[sink.equation], np.asarray(_take(coupling, program, keep, out, term))))
    return tuple(folds)


_NOT_DEAD = (
    "the channel is not zero where it is used: another operand writes it (the other branch of a residual sum, a "
    "bias, a norm's shift) or it is constant but not zero"
)


def compact(
    apply_fn: Callable, params: Params, *args, on_unsupported: str = "error", rtol: float = 1e-4
) -> CompactModel:
    """A smaller dense model computing ``apply_fn(params, *args)``, with every removable channel removed.

    Args:
      apply_fn: the model, called as ``apply_fn(params, *args)`` (bind keyword arguments such as
        ``train=False`` with :func:`functools.partial`). It must return arrays.
      params: the whole variable tree whose leaves can shrink (for flax, every collection: the
        parameters and the batch statistics). Masked-out weights must already be exactly zero
        (``jaxsparse.masks.apply_masks``).
      *args: example inputs (e.g. one batch). Their axes never shrink.
      on_unsupported: ``"error"`` (default) raises when an operation the analysis does not follow
        blocks removing zero channels; ``"keep"`` keeps them and reports why.
      rtol: the tolerance of the built-in check that the compacted model's outputs on ``args`` equal
        the original's: ``max|new - old| <= rtol * (1 + max|old|)``.

    Returns:
      The :class:`CompactModel`; its ``params`` are the smaller parameters.

    Raises:
      ValueError: for an operation that blocks removal (with ``on_unsupported="error"``), naming
        the primitive and the parameters, or a bad argument.
    """
    if on_unsupported not in ("error", "keep"):
        raise ValueError(f"on_unsupported must be 'error' or 'keep', got {on_unsupported!r}.")
    leaves = jax.tree.leaves(params)
    names = leaf_names(params)
    program = trace(apply_fn, params, *args)
    coupling = couple(program)
    param_ids = program.inputs[: len(leaves)]
    for value in program.inputs[len(leaves) :]:
        for dim in coupling.axes[value]:
            coupling.atoms.fix(dim, INPUT)
    values = {v: np.asarray(x) for v, x in zip(param_ids, leaves, strict=True)}
    concrete = concrete_values(program, values)
    removable, slices = _decide(program, coupling, values, concrete)
    keep = {}
    multiplied = {v for sink in coupling.sinks for v in sink.operands}
    kept, report, blocked = {}, [], []
    for value, name, leaf in zip(param_ids, names, leaves, strict=True):
        per_axis, because = [], {}
        for axis in range(np.ndim(leaf)):
            classes = coupling.leaves(value, axis)
            masks = []
            for c in classes:
                reason = coupling.atoms.fixed(c)
                values_, known = slices[value].get(c, (np.zeros(0), np.zeros(0, bool)))
                zero = known & (values_ == 0)
                idle = zero if reason is not None else zero & ~removable[c]
                # A kernel's zero slices that stay are worth a reason; a zero bias of a live channel is not.
                if value in multiplied and idle.any() and not (reason or "").startswith((SPATIAL, INPUT)):
                    why = reason or _NOT_DEAD
                    because[axis] = f"{int(idle.sum())} zero slice(s) kept: {why}"
                    if "not followed" in why:
                        blocked.append(f"{name!r} axis {axis}: {why}")
                masks.append(np.ones(coupling.atoms.size[c], bool) if reason is not None else ~removable[c])
                if not masks[-1].all():
                    keep[c] = np.flatnonzero(masks[-1])
            if not classes or all(m.all() for m in masks):
                per_axis.append(None)
                continue
            grid = np.meshgrid(*[np.flatnonzero(m) for m in masks], indexing="ij")
            sizes = [coupling.atoms.size[c] for c in classes]
            per_axis.append(np.ravel_multi_index([g.reshape(-1) for g in grid], sizes).astype(np.int64))
        kept[name] = tuple(per_axis)
        report.append(LeafReport(name, tuple(np.shape(leaf)), (), because))
    if blocked and on_unsupported == "error":
        listing = "; ".join(blocked[:6]) + (f"; and {len(blocked) - 6} more" if len(blocked) > 6 else "")
        raise ValueError(
            f"compaction cannot follow an operation of this model, and it blocks removing zero channels: {listing}. "
            "Nothing was removed. Pass on_unsupported='keep' to compact the rest and keep these."
        )
    full_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), params)
    small = jax.tree.unflatten(
        jax.tree.structure(params),
        [jnp.asarray(_take_axes(np.asarray(x), kept[n])) for n, x in zip(names, leaves, strict=True)],
    )
    report = tuple(
        dataclasses.replace(r, after=tuple(np.shape(x))) for r, x in zip(report, jax.tree.leaves(small), strict=True)
    )
    model = CompactModel(apply_fn, full_shapes, kept, small, report, _folds(program, coupling, keep, slices, concrete))
    _check_equal(apply_fn, params, model, args, rtol)
    return model


def _check_equal(apply_fn, params, model: CompactModel, args, rtol: float) -> None:
    expected = jax.tree.leaves(apply_fn(params, *args))
    actual = jax.tree.leaves(model(model.params, *args))
    for old, new in zip(expected, actual, strict=True):
        old, new = np.asarray(old, np.float64), np.asarray(new, np.float64)
        error = float(np.max(np.abs(new - old), initial=0.0))
        if not error <= rtol * (1 + float(np.max(np.abs(old), initial=0.0))):
            raise AssertionError(
                f"compaction changed the model's output by {error:.3g} (shape {old.shape}); this is a bug in "
                "jaxsparse.compaction: please report it with the model. The original model is unchanged."
            )
