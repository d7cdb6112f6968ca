"""Structure: the unit a mask selects, from single weights to blocks, channels, heads and N:M groups.

A :class:`Structure` partitions a parameter into *groups*, and the layer's mask holds one entry per
group, stored at group size: an output-channel mask of a ``(3, 3, 64, 128)`` conv kernel is a
``(128,)`` array, 128 bytes instead of 73,728. Three pure functions of shapes and arrays define the
groups:

* ``mask_shape(shape)``: the shape of the group-level mask (raises when the structure does not fit);
* ``group_scores(scores)``: element scores reduced to one score per group;
* ``expand(mask, shape)``: the group-level mask broadcast back to the parameter's shape, where it is
  applied (forward pass, optimizer projection, slot resets).

**Rows.** A structure also says over which entries a count is exact. Most structures select among
all of a layer's groups at once (one *row*): exactly ``k`` whole groups of the layer are on. Two are
*row-wise*: :class:`NM` keeps exactly ``N`` of every ``M`` consecutive weights along the reduction
axis, and :class:`FanIn` keeps exactly ``k`` inputs of every output neuron. Their masks are stored at
element size and every row (an ``M``-group, a neuron's inputs) gets its own exact count. Algorithms
count per row (:attr:`LayerPlan.row_active`) and select with :meth:`Structure.select`, which is the
exact radix select of :mod:`jaxsparse.selection` for one row and an exact per-row rank for many.

**Group scores.** A floating score is reduced to the group's L2 norm,
``s_g = (sum_{i in g} s_i^2)^(1/2)``: for ``|theta|`` that is the L2 norm of the group's weights
(the group-lasso norm of Wen et al. 2016), for ``|g|`` the norm of its gradients. An integer score
(the uniform ``uint32`` draws of random selection) is reduced to the group's maximum; maxima of
i.i.d. uniform draws are i.i.d., so random selection stays uniform over groups. NaN in a group makes
its norm NaN, which ranks lowest. Row-wise structures keep element scores (their groups are single
weights).

**Ties** are ordered as everywhere in the library: by a keyed hash of the entry's flat position in
the mask, ``mix32(position ^ tie_seed)`` (:mod:`jaxsparse.selection`), so a row-wise selection of a
single row equals :func:`~jaxsparse.selection.top_k_mask`.

**Shards.** Group reductions and rows follow the array's sharding under ``jit``: a group whose weights
live on several devices has its score summed across them (XLA inserts the all-reduce), so masks are
the same as on one device. The sum's order may differ, so two groups whose float32 norms agree to
the last bit or two may rank differently; integer (random) scores are exact.

References:
  Hoefler, Alistarh, Ben-Nun, Dryden, Peste, "Sparsity in Deep Learning", JMLR 2021, Section 2.3
  (structured sparsity).
  Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016.
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378, 2021 (2:4 sparsity).
  Lasby, Golubeva, Evci, Nica, Ioannou, "Dynamic Sparse Training with Structured Sparsity",
  ICLR 2024 (constant fan-in).
"""

from __future__ import annotations

import abc
import dataclasses
import math
import typing

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse._positions import flat_positions, mix32
from jaxsparse.distributions import zeros_count
from jaxsparse.selection import order_keys, top_k_mask

__all__ = [
    "Blocks",
    "FanIn",
    "Heads",
    "InputChannels",
    "NM",
    "OutputChannels",
    "Structure",
    "Unstructured",
    "attention_heads",
]

_FIX = (
    "pad the layer to a multiple, keep it dense (keep_dense=...), or choose another structure "
    "(a per-layer structure={pattern: structure} mapping can give this layer its own)"
)


class Structure(abc.ABC):
    """Abstract: how a parameter is cut into groups (one mask entry each) and rows (one exact count each).

    Implementations are frozen dataclasses (hashable values: a plan holds one).
    """

    name: typing.ClassVar[str]
    row_wise: typing.ClassVar[bool] = False
    """Counts hold per row (an N:M group, a neuron's inputs) rather than over the whole layer."""

    @abc.abstractmethod
    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The group-level mask's shape for a parameter of ``shape``.

        Raises:
          ValueError: the structure does not fit ``shape``; the message says why and how to fix it
            (the layout adds the leaf's name).
        """

    @abc.abstractmethod
    def group_scores(self, scores: jax.Array) -> jax.Array:
        """Element scores of the parameter's shape, reduced to ``mask_shape`` (see the module docstring)."""

    @abc.abstractmethod
    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The group-level ``mask`` broadcast to the parameter's ``shape``."""

    # ----- rows: where counts are exact --------------------------------------------------------

    def rows(self, mask_shape: tuple[int, ...]) -> int:
        """How many rows the mask has, each with its own exact count (1: the whole layer)."""
        del mask_shape
        return 1

    def row_count(self, sparsity: float, row_size: int) -> int:
        """Active entries per row at ``sparsity``: ``row_size - floor(sparsity * row_size)``."""
        return row_size - zeros_count(sparsity, row_size)

    def row_sums(self, mask: jax.Array) -> jax.Array:
        """The number of ``True`` entries in each row of a mask of ``mask_shape`` (shape ``(rows,)``)."""
        return jnp.sum(mask, dtype=jnp.int32).reshape(1)

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity the structure itself fixes (N:M's ``1 - N/M``); ``None`` if any sparsity fits."""
        return None

    def at_sparsity(self, sparsity: float) -> Structure:
        """The same structure for a mask at another ``sparsity`` (Top-KAST's backward set)."""
        del sparsity
        return self

    def select(
        self,
        scores: jax.Array,
        count: jax.typing.ArrayLike,
        *,
        candidates: jax.Array | None = None,
        tie_seed: jax.typing.ArrayLike = 0,
    ) -> jax.Array:
        """The ``count`` best entries of each row of the mask-shaped ``scores`` (exact; see :meth:`rows`).

        Args:
          scores: group scores of the mask's shape (floating, or ``uint32`` keys).
          count: entries to keep per row: a scalar, or for row-wise structures one per row.
          candidates: optional mask-shaped ``bool`` array; only these entries may be chosen.
          tie_seed: orders tied scores.

        Returns:
          A ``bool`` mask of ``scores``' shape with ``min(count, #candidates)`` entries on in each row.
        """
        return top_k_mask(scores, count, candidates=candidates, tie_seed=tie_seed)


@typing.final
@dataclasses.dataclass(frozen=True)
class Unstructured(Structure):
    """Every weight is its own group: the mask has the parameter's shape (the default)."""

    name: typing.ClassVar[str] = "unstructured"

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return scores

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return mask


def _reduce(scores: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """One score per group: the L2 norm of floating scores, the maximum of integer scores."""
    if jnp.issubdtype(scores.dtype, jnp.floating):
        return jnp.sqrt(jnp.sum(jnp.square(scores.astype(jnp.float32)), axis=axes))
    return jnp.max(scores, axis=axes)


def _axis(axis: int, shape: tuple[int, ...], what: str) -> int:
    """``axis`` of ``shape`` made non-negative, or a ``ValueError`` saying it does not exist."""
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"{what} uses axis {axis}, but the parameter has shape {shape}; {_FIX}.")
    return axis % len(shape)


class _Slices(Structure):
    """Whole slices along one axis: a group is one index of ``axis`` (all other axes together)."""

    axis: int
    label: typing.ClassVar[str]  # for messages: "output-channel structure ..."

    def _kernel_axis(self, shape: tuple[int, ...]) -> int:
        if len(shape) < 2:
            raise ValueError(
                f"{self.label} structure needs a kernel of rank >= 2 (inputs ..., outputs), got shape {shape}; "
                "keep this leaf dense (keep_dense=...) or use the unstructured default."
            )
        return _axis(self.axis, shape, f"{self.label} structure")

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[self._kernel_axis(shape)],)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        axis = self._kernel_axis(scores.shape)
        return _reduce(scores, tuple(a for a in range(scores.ndim) if a != axis))

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        axis = self._kernel_axis(shape)
        return jnp.broadcast_to(jnp.reshape(mask, (-1,) + (1,) * (len(shape) - 1 - axis)), shape)


@typing.final
@dataclasses.dataclass(frozen=True)
class OutputChannels(_Slices):
    """Whole output channels: the columns of a ``(in, out)`` dense kernel, the filters of an HWIO conv.

    A group is one index of the last axis, so the mask of a ``(..., C)`` kernel has shape ``(C,)``
    and removing a group removes a neuron (dense) or a filter (conv).

    Example:
      >>> import jax.numpy as jnp
      >>> OutputChannels().mask_shape((3, 3, 16, 32))
      (32,)
      >>> OutputChannels().expand(jnp.array([True, False]), (3, 2)).tolist()
      [[True, False], [True, False], [True, False]]
    """

    name: typing.ClassVar[str] = "output_channels"
    label: typing.ClassVar[str] = "output-channel"
    axis: int = dataclasses.field(default=-1, init=False, repr=False)


@typing.final
@dataclasses.dataclass(frozen=True)
class InputChannels(_Slices):
    """Whole input channels: the rows of a ``(in, out)`` dense kernel, axis ``I`` of an HWIO conv.

    A group is one index of the second-to-last axis; removing it removes an input feature (dense) or
    an input channel of every filter (conv), which lets the previous layer drop that output.

    Example:
      >>> import jax.numpy as jnp
      >>> InputChannels().mask_shape((3, 3, 16, 32))
      (16,)
      >>> InputChannels().expand(jnp.array([True, False]), (2, 3)).tolist()
      [[True, True, True], [False, False, False]]
    """

    name: typing.ClassVar[str] = "input_channels"
    label: typing.ClassVar[str] = "input-channel"
    axis: int = dataclasses.field(default=-2, init=False, repr=False)


@typing.final
@dataclasses.dataclass(frozen=True)
class Heads(_Slices):
    """Whole attention heads: a group is one index of the head axis, every ``head_dim`` entry with it.

    For a kernel shaped ``(..., heads, head_dim)`` (flax's query, key and value projections,
    ``(features, heads, head_dim)``) the head axis is ``-2``, the default. flax's output projection is
    ``(heads, head_dim, features)``: use ``Heads(axis=0)`` there (:func:`attention_heads` maps both).

    Attributes:
      axis: the head axis.

    Example:
      >>> Heads().mask_shape((64, 4, 16)), Heads(axis=0).mask_shape((4, 16, 64))
      ((4,), (4,))
    """

    name: typing.ClassVar[str] = "heads"
    label: typing.ClassVar[str] = "head"
    axis: int = -2


def attention_heads(others: Structure | None = None) -> tuple[tuple[str, Structure], ...]:
    """A per-layer structure for flax attention: heads in ``query``/``key``/``value``/``out``, ``others`` elsewhere.

    Pass it as ``structure=``. flax's ``MultiHeadDotProductAttention`` keeps ``(features, heads,
    head_dim)`` query/key/value kernels and a ``(heads, head_dim, features)`` output kernel, so the
    same head ``h`` is one group in each of them. Every other sparsified kernel (the MLP, the patch
    embedding) takes ``others`` (default: :class:`OutputChannels`, whole neurons).

    Example:
      >>> [pattern for pattern, _ in attention_heads()]
      ['/(query|key|value)/kernel$', '/out/kernel$', '']
    """
    return (
        ("/(query|key|value)/kernel$", Heads(axis=-2)),
        ("/out/kernel$", Heads(axis=0)),
        ("", OutputChannels() if others is None else others),
    )


@typing.final
@dataclasses.dataclass(frozen=True)
class Blocks(Structure):
    """``bh x bw`` blocks over two axes (default the last two): each block is all on or all off.

    The mask of a ``(..., H, W)`` kernel has shape ``(..., H / bh, W / bw)``. Both sizes must divide
    exactly; a layer they do not divide is an error naming it, never a silent rounding.

    Attributes:
      block: ``(bh, bw)``.
      axes: the two axes the blocks tile (default ``(-2, -1)``: a dense kernel's ``(in, out)``, a
        conv's ``(I, O)``).

    Example:
      >>> Blocks((2, 4)).mask_shape((3, 3, 16, 32))
      (3, 3, 8, 8)
    """

    name: typing.ClassVar[str] = "blocks"
    block: tuple[int, int] = (8, 8)
    axes: tuple[int, int] = (-2, -1)

    def __post_init__(self):
        block = tuple(int(b) for b in self.block)
        if len(block) != 2 or min(block) < 1:
            raise ValueError(f"block must be two positive sizes (bh, bw), got {self.block!r}.")
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "axes", tuple(int(a) for a in self.axes))

    def _axes(self, shape: tuple[int, ...]) -> tuple[int, int]:
        if len(shape) < 2:
            raise ValueError(f"block structure needs a kernel of rank >= 2, got shape {shape}; {_FIX}.")
        axes = tuple(_axis(a, shape, "block structure") for a in self.axes)
        if axes[0] == axes[1]:
            raise ValueError(f"block structure needs two different axes, got {self.axes}.")
        for axis, size in zip(axes, self.block, strict=True):
            if shape[axis] % size:
                raise ValueError(
                    f"{self.block[0]}x{self.block[1]} blocks need axes {self.axes} of shape {shape} to be multiples of "
                    f"{self.block}, but axis {axis} has size {shape[axis]}; {_FIX}."
                )
        return axes

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        axes = self._axes(shape)
        return tuple(n // self.block[axes.index(a)] if a in axes else n for a, n in enumerate(shape))

    def _split(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shape with each blocked axis split into ``(blocks, block)``, and the ``block`` axes."""
        axes = self._axes(shape)
        split, inner = [], []
        for a, n in enumerate(shape):
            if a in axes:
                b = self.block[axes.index(a)]
                split += [n // b, b]
                inner.append(len(split) - 1)
            else:
                split.append(n)
        return tuple(split), tuple(inner)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        split, inner = self._split(scores.shape)
        return _reduce(scores.reshape(split), inner)

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        axes = self._axes(shape)
        for axis in axes:
            mask = jnp.repeat(mask, self.block[axes.index(axis)], axis=axis)
        return mask


def _row_select(keys: jax.Array, positions: jax.Array, count, candidates: jax.Array | None, tie_seed) -> jax.Array:
    """Exact per-row top-``count`` of ``(R, L)`` ``uint32`` keys; ``positions`` are the entries' flat mask positions.

    The order is the library's: key, then the keyed hash of the position ``mix32(position ^ seed)``.
    """
    seed = jnp.asarray(tie_seed).astype(jnp.uint32)
    counted = jnp.maximum(keys, jnp.uint32(1))
    if candidates is not None:
        counted = jnp.where(candidates, counted, jnp.uint32(0))
    priority = mix32(positions ^ seed)
    length = keys.shape[-1]
    count = jnp.asarray(count, jnp.int32)
    if count.ndim:
        count = count[..., None]
    if length <= 32:
        # Small rows (N:M groups): rank by pairwise comparison, L comparisons per weight.
        a_key, b_key = counted[..., :, None], counted[..., None, :]
        a_pri, b_pri = priority[..., :, None], priority[..., None, :]
        beaten_by = (b_key > a_key) | ((b_key == a_key) & (b_pri > a_pri))
        chosen = jnp.sum(beaten_by, axis=-1, dtype=jnp.int32) < count
    else:
        # Long rows (a neuron's inputs): sort each row by (key, priority); the count-th largest pair
        # is the threshold, and the pairs are distinct, so exactly count entries reach it.
        ascending = lax.sort((counted, priority), dimension=keys.ndim - 1, num_keys=2)
        at = jnp.broadcast_to(jnp.clip(length - count, 0, length - 1), keys.shape[:-1] + (1,))
        key_t, priority_t = (jnp.take_along_axis(a, at, axis=-1) for a in ascending)
        chosen = ((counted > key_t) | ((counted == key_t) & (priority >= priority_t))) & (count > 0)
    return chosen & (counted != 0)


class _RowWise(Structure):
    """A structure whose groups are single weights and whose counts hold per row of a row view.

    Subclasses give the view: ``_rows(x)`` is ``x`` (of the parameter's shape) as ``(..., L)`` rows,
    and ``_unrows(rows, shape)`` its inverse. The mask is stored at element size.
    """

    row_wise: typing.ClassVar[bool] = True

    @abc.abstractmethod
    def _rows(self, x: jax.Array) -> jax.Array: ...

    @abc.abstractmethod
    def _unrows(self, rows: jax.Array, shape: tuple[int, ...]) -> jax.Array: ...

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return scores

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return mask

    def row_sums(self, mask: jax.Array) -> jax.Array:
        return jnp.sum(self._rows(mask), axis=-1, dtype=jnp.int32).reshape(-1)

    def select(self, scores, count, *, candidates=None, tie_seed=0):
        """The ``count`` best entries of every row (``count``: a scalar or one per row), exact, ties by position."""
        scores = jnp.asarray(scores)
        keys = self._rows(order_keys(scores))
        positions = self._rows(flat_positions(scores, jnp.uint32))
        valid = None if candidates is None else self._rows(candidates)
        count = jnp.asarray(count, jnp.int32)
        if count.ndim:  # one per row, in row_sums' order: the row view's leading axes
            count = count.reshape(keys.shape[:-1])
        return self._unrows(_row_select(keys, positions, count, valid, tie_seed), scores.shape)


@typing.final
@dataclasses.dataclass(frozen=True)
class NM(_RowWise):
    """N:M semi-structured sparsity: exactly ``n`` of every ``m`` consecutive weights along an axis are on.

    NVIDIA's sparse tensor cores (Ampere and later) run 2:4 on the reduction dimension of a matrix
    product at up to twice the dense math throughput (Mishra et al. 2021). The group axis defaults
    to the layer's reduction (input) axis in flax's ``(..., in, out)`` layout, axis ``-2``: axis 0 of
    a ``(in, out)`` dense kernel, the input-channel axis of a ``(H, W, I, O)`` conv kernel (as the
    SR-STE code groups convs along input channels). Kernels laid out otherwise need ``axis=``
    (flax's attention: 0 for ``(features, heads, head_dim)``, 1 for the ``(heads, head_dim,
    features)`` output projection). The mask is stored at element size and every group is its own
    row, so each has exactly ``n`` entries on; ``1 - n/m`` is the sparsity of every layer, so a layer
    distribution does not apply and a layout asking for another sparsity is an error.

    Attributes:
      n: weights kept per group.
      m: group size (the axis size must be a multiple of ``m``).
      axis: the group axis (``None``: ``-2``, the input axis).

    Example:
      >>> import jax.numpy as jnp
      >>> NM(2, 4).select(jnp.array([[1.0], [4.0], [3.0], [2.0]]), 2)[:, 0].tolist()
      [False, True, True, False]
    """

    name: typing.ClassVar[str] = "n:m"
    n: int = 2
    m: int = 4
    axis: int | None = None

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n <= self.m):
            raise ValueError(f"N:M needs integers 1 <= n <= m (e.g. NM(2, 4)), got n={self.n!r}, m={self.m!r}.")

    def _group_axis(self, shape: tuple[int, ...]) -> int:
        if len(shape) < 2:
            raise ValueError(
                f"{self.n}:{self.m} structure needs a kernel of rank >= 2 (inputs ..., outputs), got shape {shape}; "
                "keep this leaf dense (keep_dense=...) or use the unstructured default."
            )
        axis = _axis(-2 if self.axis is None else self.axis, shape, f"{self.n}:{self.m} structure")
        if shape[axis] % self.m:
            raise ValueError(
                f"{self.n}:{self.m} structure groups axis {axis} of shape {shape} in groups of {self.m}, "
                f"but its size {shape[axis]} is not a multiple of {self.m}; {_FIX}."
            )
        return axis

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self._group_axis(shape)
        return tuple(shape)

    def rows(self, mask_shape: tuple[int, ...]) -> int:
        return math.prod(mask_shape) // self.m

    def row_count(self, sparsity: float, row_size: int) -> int:
        del sparsity, row_size
        return self.n

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def at_sparsity(self, sparsity: float) -> NM:
        """``n' : m`` with ``n' = m - floor(sparsity * m)`` (at least ``n``), e.g. 3:4 at 25%."""
        return NM(max(self.n, self.m - zeros_count(sparsity, self.m)), self.m, self.axis)

    def _rows(self, x: jax.Array) -> jax.Array:
        """``x`` as ``(..., groups, m)`` with the group axis last (a transpose and a reshape)."""
        axis = self._group_axis(x.shape)
        moved = jnp.moveaxis(x, axis, -1)
        return moved.reshape(moved.shape[:-1] + (x.shape[axis] // self.m, self.m))

    def _unrows(self, rows: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        axis = self._group_axis(shape)
        return jnp.moveaxis(rows.reshape(rows.shape[:-2] + (shape[axis],)), -1, axis)


@typing.final
@dataclasses.dataclass(frozen=True)
class FanIn(_RowWise):
    """Constant fan-in: every output neuron keeps exactly ``k`` active inputs (SRigL, Lasby et al. 2024).

    A neuron is one index of the last axis: a column of a ``(in, out)`` dense kernel, a filter of an
    HWIO conv (fan-in ``H * W * I``). At layer sparsity ``S_l`` every neuron keeps
    ``k = floor((1 - S_l) n_in)`` of its ``n_in`` inputs, so a layer's count is ``n_out * k`` (the
    layer distribution is applied first, then rounded down per neuron, as the SRigL reference does:
    ``calgaryml/condensed-sparsity``, ``rigl_constant_fan.py``). The mask is stored at element
    size; each neuron is a row with its own exact count, which is what condensed (gathered) kernels
    need (Lasby et al. report 3.4x at 90% online inference on CPU).

    Example:
      >>> import jax.numpy as jnp
      >>> m = FanIn().select(jnp.arange(12.0).reshape(4, 3), 2)
      >>> m.sum(axis=0).tolist()
      [2, 2, 2]
    """

    name: typing.ClassVar[str] = "fan_in"

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) < 2:
            raise ValueError(
                f"constant fan-in needs a kernel of rank >= 2 (inputs ..., outputs), got shape {shape}; "
                "keep this leaf dense (keep_dense=...) or use the unstructured default."
            )
        return tuple(shape)

    def rows(self, mask_shape: tuple[int, ...]) -> int:
        return mask_shape[-1]

    def row_count(self, sparsity: float, row_size: int) -> int:
        """``k = floor((1 - S_l) n_in)``, the SRigL reference's rounding (``floor(N_l (1 - S_l)) // n_out``).

        Raises:
          ValueError: ``k`` would be 0 (every input of every neuron pruned).
        """
        k = math.floor((1.0 - sparsity) * row_size)
        if k < 1:
            raise ValueError(
                f"constant fan-in at sparsity {sparsity:.6g} leaves no input of the {row_size} per neuron "
                "(k = floor((1 - S) * fan_in) = 0): lower the sparsity, use a uniform distribution, or keep "
                "this leaf dense."
            )
        return k

    def _rows(self, x: jax.Array) -> jax.Array:
        """``x`` as ``(out, fan_in)``: one row per neuron."""
        return jnp.moveaxis(x.reshape(-1, x.shape[-1]), -1, 0)

    def _unrows(self, rows: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jnp.moveaxis(rows, 0, -1).reshape(shape)
