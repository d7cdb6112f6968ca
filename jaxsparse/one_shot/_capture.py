"""The inputs of each kernel's product, found in the model's jaxpr: what SparseGPT and Wanda prune by.

A layer with kernel ``W`` computes ``y = X W`` on the rows ``X`` of its inputs (a dense layer: the
tokens; a convolution: its im2col patches). SparseGPT needs ``H = X^T X`` and Wanda the column norms
``||X_j||_2``. Neither can be read from the parameters, and a model's code is arbitrary, so the
products are found where the FLOPs counter finds them (:func:`jaxsparse.inspection.layer_flops`):
in the jaxpr of ``apply_fn(params, batch)``, the ``dot_general`` or ``conv_general_dilated``
whose operand is the kernel leaf (up to a dtype cast). The jaxpr is then evaluated with the
statistics of that product's other operand added to its outputs, under ``jit``.

Each kernel is seen as a matrix ``(d_in, d_out)``: its contracting axes (a convolution's input
features and window) in the leaf's axis order, flattened, by its other axes. ``X``'s columns are
ordered to match, so ``X @ kernel_matrix`` is the product the model computes.

What is refused, with the layer named: a kernel used by more than one product (tied or shared
weights, whose inputs are not one ``X``), one transformed by anything but a cast before its
product (a reshape, a transpose, a weight-normalisation or a mask), a product with batch
dimensions on the kernel, a grouped convolution, and a kernel used inside ``scan``, ``while`` or
``cond`` (stacked layers under ``nn.scan``): these need a model written with one plain product
per kernel, or a loss-based criterion.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

from jaxsparse._jaxprs import LOOPS, call_body, sub_jaxprs
from jaxsparse.masks import Params, leaf_name

__all__ = ["KernelProduct", "find_products", "input_statistics"]

# Casts leave a kernel the same matrix; anything else changes what the product multiplies by.
_TRANSPARENT = frozenset({"convert_element_type", "copy"})
_PRODUCTS = frozenset({"dot_general", "conv_general_dilated"})


@dataclasses.dataclass(frozen=True)
class KernelProduct:
    """Where one kernel leaf is multiplied, and how it is seen as a ``(d_in, d_out)`` matrix.

    Attributes:
      name: the leaf's name (``"Dense_0/kernel"``).
      path: indices of the equations leading to the product: through nested calls, then the product.
      operand: which operand of the product is the kernel (0 or 1).
      axes_in: the kernel's contracting axes (for a convolution: its input-feature and window axes),
        in the leaf's order; flattened, they are the matrix's rows.
      axes_out: the kernel's other axes, in order: the matrix's columns.
      shape: the leaf's shape.
    """

    name: str
    path: tuple[int, ...]
    operand: int
    axes_in: tuple[int, ...]
    axes_out: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def d_in(self) -> int:
        return math.prod(self.shape[a] for a in self.axes_in)

    @property
    def d_out(self) -> int:
        return math.prod(self.shape[a] for a in self.axes_out)

    def to_matrix(self, leaf: jax.Array) -> jax.Array:
        """The leaf as its ``(d_in, d_out)`` matrix."""
        return jnp.transpose(leaf, self.axes_in + self.axes_out).reshape(self.d_in, self.d_out)

    def from_matrix(self, matrix: jax.Array) -> jax.Array:
        """The inverse of :meth:`to_matrix`."""
        order = self.axes_in + self.axes_out
        moved = matrix.reshape(tuple(self.shape[a] for a in order))
        return jnp.transpose(moved, tuple(order.index(a) for a in range(len(self.shape))))


def _kernel_axes(eqn: jex_core.JaxprEqn, operand: int, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The kernel's contracting axes (leaf order) and its other axes, or a ``ValueError``."""
    rank = len(eqn.invars[operand].aval.shape)
    if eqn.primitive.name == "dot_general":
        (contracting, batch) = eqn.params["dimension_numbers"]
        if batch[operand]:
            raise ValueError(
                f"kernel {name!r} enters a batched dot_general (batch axes {batch[operand]} on the kernel), whose "
                "rows do not share one input matrix X: SparseGPT and Wanda do not apply. Keep it dense, or prune it "
                "with a loss-based criterion (magnitude, taylor, obd, woodfisher)."
            )
        axes_in = tuple(sorted(contracting[operand]))
    else:
        if operand != 1:
            raise ValueError(f"kernel {name!r} is the input (lhs) of a convolution, not its filter: not supported.")
        if eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1:
            raise ValueError(
                f"kernel {name!r} is a grouped (e.g. depthwise) convolution: each group has its own inputs, so "
                "there is no one input matrix X. Keep it dense, or use a loss-based criterion."
            )
        out_axis = eqn.params["dimension_numbers"].rhs_spec[0]
        axes_in = tuple(a for a in range(rank) if a != out_axis)
    return axes_in, tuple(a for a in range(rank) if a not in axes_in)


def _walk(jaxpr: jex_core.Jaxpr, sources: Sequence[int | None], prefix: tuple[int, ...], uses: dict, names) -> None:
    """Records every use of a parameter leaf in ``jaxpr`` into ``uses[leaf]`` (a list)."""
    env = {var: source for var, source in zip(jaxpr.invars, sources, strict=True) if source is not None}
    for index, eqn in enumerate(jaxpr.eqns):
        operands = [None if isinstance(var, jex_core.Literal) else env.get(var) for var in eqn.invars]
        if all(source is None for source in operands):
            continue
        name = eqn.primitive.name
        path = (*prefix, index)
        if name in _TRANSPARENT:
            env[eqn.outvars[0]] = operands[0]
            continue
        if name in _PRODUCTS:
            for operand, leaf in enumerate(operands):
                if leaf is not None:
                    uses[leaf].append(("product", path, eqn, operand))
            continue
        body = call_body(eqn)
        if body is not None:
            _walk(body[0], operands, path, uses, names)  # a call (jit, remat, custom derivatives)
            continue
        for leaf in operands:
            if leaf is not None:
                uses[leaf].append((name, path, eqn, None))


def find_products(apply_fn: Callable, params: Params, batch, leaves: Sequence[int]) -> dict[int, KernelProduct]:
    """The product of each leaf in ``leaves`` (flattening indices) in ``apply_fn(params, batch)``.

    Raises:
      ValueError: a leaf takes part in no product, in several, is transformed before its product,
        or is used inside a loop or a conditional; the message names the leaf and the fix.
    """
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    names = [leaf_name(path) for path in paths]
    closed = jax.make_jaxpr(apply_fn)(params, batch)
    uses = {i: [] for i in range(len(paths))}
    n_batch = len(closed.jaxpr.invars) - len(paths)
    _walk(closed.jaxpr, [*range(len(paths)), *[None] * n_batch], (), uses, names)
    found = {}
    for leaf in leaves:
        name = names[leaf]
        kinds = uses[leaf]
        other = [kind for kind, *_ in kinds if kind != "product"]
        if other:
            where = "inside a loop or conditional" if other[0] in LOOPS else "before its product"
            raise ValueError(
                f"kernel {name!r} is used by `{other[0]}` {where}; capturing a layer's inputs needs the kernel to "
                "enter one dot_general or convolution directly (a dtype cast is allowed). Unroll scanned layers, "
                "drop the transformation from the model, keep this leaf dense, or use a loss-based criterion "
                "(magnitude, taylor, obd, woodfisher)."
            )
        if len(kinds) != 1:
            raise ValueError(
                f"kernel {name!r} takes part in {len(kinds)} products of apply_fn (a kernel used twice, e.g. tied "
                "weights): its inputs are not one matrix X. Keep it dense, or use a loss-based criterion."
                if kinds
                else f"kernel {name!r} takes part in no dot_general or convolution of apply_fn(params, batch): its "
                "inputs cannot be captured. Keep it dense (keep_dense=...), or use a loss-based criterion."
            )
        _, path, eqn, operand = kinds[0]
        axes_in, axes_out = _kernel_axes(eqn, operand, name)
        found[leaf] = KernelProduct(
            name, path, operand, axes_in, axes_out, tuple(jnp.shape(jax.tree.leaves(params)[leaf]))
        )
    return found


def _input_rows(eqn: jex_core.JaxprEqn, product: KernelProduct, operands: Sequence[jax.Array]) -> jax.Array:
    """The product's other operand as rows ``(n, d_in)``, columns in the order of the kernel matrix."""
    other = operands[1 - product.operand]
    if eqn.primitive.name == "dot_general":
        (contracting, _) = eqn.params["dimension_numbers"]
        pairs = sorted(zip(contracting[product.operand], contracting[1 - product.operand], strict=True))
        moved = jnp.moveaxis(other, [mine for _, mine in pairs], range(-len(pairs), 0))
        return moved.reshape(-1, product.d_in)
    numbers = eqn.params["dimension_numbers"]
    window = [product.shape[a] for a in numbers.rhs_spec[2:]]
    patches = lax.conv_general_dilated_patches(
        other,
        window,
        eqn.params["window_strides"],
        eqn.params["padding"],
        lhs_dilation=eqn.params["lhs_dilation"],
        rhs_dilation=eqn.params["rhs_dilation"],
        dimension_numbers=numbers,
        precision=lax.Precision.HIGHEST,
    )
    # Patch features come as (input feature, *window in rhs_spec order); reorder them to the kernel's axes.
    patches = jnp.moveaxis(patches, numbers.out_spec[1], -1)
    patches = patches.reshape(patches.shape[:-1] + (product.shape[numbers.rhs_spec[1]], *window))
    spec_axes = [numbers.rhs_spec[1], *numbers.rhs_spec[2:]]
    lead = patches.ndim - len(spec_axes)
    patches = jnp.transpose(patches, (*range(lead), *[lead + spec_axes.index(a) for a in product.axes_in]))
    return patches.reshape(-1, product.d_in)


def _statistics(rows: jax.Array, hessian: bool) -> dict[str, jax.Array]:
    rows = rows.astype(jnp.promote_types(rows.dtype, jnp.float32))
    stats = {"squares": jnp.sum(jnp.square(rows), axis=0), "rows": jnp.asarray(rows.shape[0], jnp.float32)}
    if hessian:
        stats["hessian"] = jnp.matmul(rows.T, rows, precision=lax.Precision.HIGHEST)
    return stats


def _evaluate(jaxpr, consts, args, targets: dict[tuple[int, ...], tuple[int, KernelProduct]], prefix, hessian, out):
    """``jax.core.eval_jaxpr``, descending into the calls on the way to a target and recording its statistics."""
    env = {}

    def read(var):
        return var.val if isinstance(var, jex_core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for index, eqn in enumerate(jaxpr.eqns):
        path = (*prefix, index)
        values = [read(var) for var in eqn.invars]
        inner = [target for target in targets if target[: len(path)] == path and len(target) > len(path)]
        if inner:
            ((sub, sub_consts),) = sub_jaxprs(eqn)
            results = _evaluate(sub, sub_consts, values, targets, path, hessian, out)
        else:
            if path in targets:
                leaf, product = targets[path]
                out[leaf] = _statistics(_input_rows(eqn, product, values), hessian)
            with eqn.ctx.manager:
                results = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
            results = results if eqn.primitive.multiple_results else [results]
        for var, value in zip(eqn.outvars, results, strict=True):
            env[var] = value
    return [read(var) for var in jaxpr.outvars]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _batch_statistics(
    apply_fn: Callable, products: tuple[tuple[int, KernelProduct], ...], hessian: bool, params, batch
):
    closed = jax.make_jaxpr(apply_fn)(params, batch)
    targets = {product.path: (leaf, product) for leaf, product in products}
    out = {}
    _evaluate(
        closed.jaxpr, closed.consts, [*jax.tree.leaves(params), *jax.tree.leaves(batch)], targets, (), hessian, out
    )
    return out


def input_statistics(
    apply_fn: Callable, params: Params, batches: Sequence, products: dict[int, KernelProduct], *, hessian: bool
) -> dict[int, dict[str, jax.Array]]:
    """Sums over ``batches`` of each product's input statistics, with the model run at ``params``.

    For each leaf of ``products``, with ``X`` its input rows over all batches: ``"squares"``, the
    column sums of squares ``||X_j||_2^2`` (shape ``(d_in,)``); ``"rows"``, the number of rows;
    and with ``hessian``, ``"hessian"``, ``X^T X`` (``(d_in, d_in)``, float32 or wider).

    Memory: ``d_in^2`` floats per leaf with ``hessian`` (pass one leaf at a time to stream), ``d_in``
    without, plus one batch's activations. Compiled once per ``apply_fn``, set of leaves and shapes.
    """
    key = tuple(sorted(products.items()))
    total: dict[int, dict[str, jax.Array]] = {}
    for batch in batches:
        stats = _batch_statistics(apply_fn, key, hessian, params, batch)
        total = stats if not total else jax.tree.map(jnp.add, total, stats)
    return total
