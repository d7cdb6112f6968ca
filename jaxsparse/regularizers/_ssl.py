"""Structured Sparsity Learning's penalty: group lassos over filters, channels, shapes, blocks and heads.

.. math::

    E(W) = E_D(W) + \\sum_{k \\in \\text{types}} \\lambda_k(t) \\sum_l \\sum_{g \\in G_k(l)} \\lVert W_l^{(g)} \\rVert_2

(Wen et al. 2016, eq. 1-2, without the paper's separate unstructured weight decay, which the inner
optimizer provides). A group type ``k`` cuts each layer into groups; the names are the paper's:

* ``"filter"`` (alias ``"neuron"``): a conv's output channel ``W[..., n]`` (flax's HWIO layout), a
  dense kernel's column. With ``coupled``, the slices ``b[n]`` of the 1-D leaves indexed by that
  output channel (its bias, the following norm's scale and bias) join the group, so a whole channel
  reaches zero together, which is what lets it be removed when a BatchNorm follows. Kernels that
  share a coupled leaf (the convs writing to one residual stream, as
  :func:`jaxsparse.compaction.coupled_leaves` reports them) form one group per channel together;
* ``"channel"`` (alias ``"input"``): a conv's input channel ``W[..., c, :]``, a dense kernel's row;
* ``"shape"``: one kernel position across all filters, ``W[h, w, c, :]``, a row of the lowered GEMM
  (for a dense kernel the same groups as ``"input"``);
* ``"depth"``: all listed leaves of one residual block together (``blocks``, derived from the names
  of :class:`~jaxsparse.models.ResNet` when not given): a zero block leaves only its shortcut;
* ``"head"``: one attention head across flax's query, key and value kernels ``(d, heads, head_dim)``
  and output kernel ``(heads, head_dim, d)`` of the same attention module (as
  :func:`~jaxsparse.masks.attention_heads` maps them). Attention kernels belong to ``"head"`` only:
  their last axis is ``head_dim``, not a filter.

Filter, channel and shape groups cover the sparsified kernels of the layout (``plans``); depth and
coupled groups may name any leaf. A weight in several groups (``filter`` and ``shape`` together)
carries the sum of their penalties.

**Two ways to exact zeros.**

* The paper's (``prox=False``): the subgradient ``lambda_k W_g / ||W_g||`` (0 on a zero group) is
  added to the loss gradient, and after each update every penalised weight with ``|w| < threshold``
  is set to 0 (the Caffe code's ``1e-4``), the proximal hook of the wrapper.
* Proximal (``prox=True``): after the optimizer step, group soft-thresholding
  ``W_g <- W_g max(0, 1 - eta_t lambda_k / ||W_g||)`` with ``eta`` the inner optimizer's step size;
  it sets whole groups exactly to zero. With several types it is applied one type after another
  (in the order given), each on the result of the previous one: the proximal step of each term in
  turn, which is the exact proximal step of the sum only when the types' groups do not overlap,
  and otherwise an approximation of it (a step of forward-backward splitting on each term).
  Under an adaptive optimizer (Adam) ``eta`` is not the real per-weight step, as for
  :class:`GroupLasso`.

``end_step`` stops the penalty (and the thresholding) from that step on, for fine-tuning.

References:
  Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep Neural Networks", NeurIPS 2016;
  code: wenwei202/caffe, branch scnn.
  Parikh & Boyd, "Proximal Algorithms", 2014, Section 6.5.4 (group soft-thresholding).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.masks import (
    InputChannels,
    LayerPlan,
    Masks,
    OutputChannels,
    Params,
    Structure,
    Unstructured,
    attention_heads,
    leaf_name,
    leaf_names,
)
from jaxsparse.regularizers._group_lasso import inverse_norms, scale_groups, shrink_factors
from jaxsparse.regularizers._regularizer import Regularizer, as_schedule
from jaxsparse.schedules import Schedule

__all__ = ["RESNET_BLOCK_LEAF", "SSL_GROUPS", "SSLPenalty", "parse_groups", "resnet_blocks", "resnet_coupling"]

SSL_GROUPS = ("filter", "neuron", "channel", "input", "shape", "depth", "head")
"""The group types by the names users type; ``neuron`` is ``filter`` and ``input`` is ``channel``."""

_CANONICAL = {"neuron": "filter", "input": "channel"}
_HEAD_KERNELS = tuple((re.compile(pattern), structure) for pattern, structure in attention_heads()[:2])
# The library's ResNet (jaxsparse/models/_resnet.py): blocks layer_i holding conv_j / norm_j.
RESNET_BLOCK_LEAF = re.compile(r"(?P<block>(?:.*/)?layer_\d+)/(?:conv|norm)_\d+/(?:kernel|scale|bias)")
"""A leaf of one of the library ResNet's residual blocks (``layer_i/conv_j/kernel``, ``layer_i/norm_j/scale``)."""
_RESNET_CONV = re.compile(r"(?P<parent>(?:.*/)?)(?P<conv>input_conv|conv_(?P<index>\d+))/kernel")


def parse_groups(groups: str | Sequence[str]) -> tuple[str, ...]:
    """``"filter,shape"`` or a sequence of names, checked and made canonical (``neuron`` -> ``filter``).

    Raises:
      ValueError: an unknown name, a type given twice, or no type at all.

    Example:
      >>> parse_groups("neuron, input")
      ('filter', 'channel')
    """
    names = [g.strip() for g in groups.split(",")] if isinstance(groups, str) else [str(g) for g in groups]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"SSL needs at least one group type; choose from {', '.join(SSL_GROUPS)}.")
    unknown = [name for name in names if name not in SSL_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown SSL group type {unknown[0]!r}; choose from {', '.join(SSL_GROUPS)} (e.g. 'filter,channel')."
        )
    canonical = [_CANONICAL.get(name, name) for name in names]
    repeated = sorted({name for name in canonical if canonical.count(name) > 1})
    if repeated:
        raise ValueError(
            f"SSL group type {repeated[0]!r} is given twice ({', '.join(names)}; neuron = filter, input = channel): "
            "name each type once."
        )
    return tuple(canonical)


def resnet_blocks(params: Params) -> dict[str, tuple[str, ...]]:
    """The residual blocks of :class:`~jaxsparse.models.ResNet` from its leaf names: ``layer_i`` -> its leaves.

    Each block's group holds its convolutions and batch norms (``layer_i/conv_j/kernel``,
    ``layer_i/norm_j/scale`` and ``bias``): with all of them at zero the block's residual branch
    outputs exactly 0, and the block is its (option-A) shortcut.

    Example:
      >>> import jax.numpy as jnp
      >>> resnet_blocks({"layer_0": {"conv_0": {"kernel": jnp.ones((3, 3, 4, 4))}, "norm_0": {"bias": jnp.ones(4)}}})
      {'layer_0': ('layer_0/conv_0/kernel', 'layer_0/norm_0/bias')}
    """
    blocks: dict[str, list[str]] = {}
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        name = leaf_name(path)
        match = RESNET_BLOCK_LEAF.fullmatch(name)
        if match:
            blocks.setdefault(match["block"], []).append(name)
    return {block: tuple(names) for block, names in blocks.items()}


def resnet_coupling(params: Params) -> dict[str, tuple[str, ...]]:
    """Each :class:`~jaxsparse.models.ResNet` conv's following batch norm: ``.../conv_j/kernel`` -> ``norm_j``'s leaves.

    The stem ``input_conv`` is followed by ``input_norm``. Pass the result as ``coupled=``.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"input_conv": {"kernel": jnp.ones((3, 3, 1, 4))},
      ...           "input_norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
      >>> resnet_coupling(params)
      {'input_conv/kernel': ('input_norm/bias', 'input_norm/scale')}
    """
    names = leaf_names(params)
    present = set(names)
    coupling = {}
    for name in names:
        match = _RESNET_CONV.fullmatch(name)
        if not match:
            continue
        norm = "input_norm" if match["conv"] == "input_conv" else f"norm_{match['index']}"
        following = tuple(f"{match['parent']}{norm}/{leaf}" for leaf in ("bias", "scale"))
        found = tuple(leaf for leaf in following if leaf in present)
        if found:
            coupling[name] = found
    return coupling


def _norms(structure: Structure, param: jax.Array) -> jax.Array:
    """Squared L2 norms of ``param``'s groups under ``structure``, in float32."""
    return jnp.square(structure.group_scores(jnp.asarray(param).astype(jnp.float32)))


@typing.final
@dataclasses.dataclass(frozen=True)
class _Positions(Structure):
    """Shape-wise groups ``W[h, w, c, :]``: every index of all axes but the last (the lowered GEMM's rows)."""

    name: typing.ClassVar[str] = "kernel_positions"

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[:-1])

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return jnp.sqrt(jnp.sum(jnp.square(scores.astype(jnp.float32)), axis=-1))

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jnp.broadcast_to(mask[..., None], shape)


@typing.final
@dataclasses.dataclass(frozen=True)
class _Whole(Structure):
    """One group holding the whole leaf (a member of a depth-wise block)."""

    name: typing.ClassVar[str] = "whole"

    def mask_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        del shape
        return (1,)

    def group_scores(self, scores: jax.Array) -> jax.Array:
        return jnp.sqrt(jnp.sum(jnp.square(scores.astype(jnp.float32)))).reshape(1)

    def expand(self, mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jnp.broadcast_to(jnp.reshape(mask, (1,) * len(shape)), shape)


class _Family(typing.NamedTuple):
    """The groups of one type in one layer (a block, an attention module): its leaves share one norm per group."""

    kind: str
    label: str
    members: tuple[tuple[int, Structure], ...]


def _pairs(
    mapping: Mapping[str, Sequence[str]] | None, what: str, *, unique: bool
) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    if mapping is None:
        return None
    pairs = tuple((str(key), tuple(str(v) for v in values)) for key, values in dict(mapping).items())
    listed = [name for _, values in pairs for name in values]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    if unique and twice:
        raise ValueError(f"{what} lists leaf {twice[0]!r} more than once: every leaf may join one group of a type.")
    return pairs


def _kernels(names: list[str], shapes: list[tuple[int, ...]], plans: Sequence[LayerPlan | None]):
    """The sparsified leaves, the attention kernels among them (with their head structure), and the other kernels."""
    sparsified = [i for i, plan in enumerate(plans) if plan is not None]
    heads = {i: s for i in sparsified for pattern, s in _HEAD_KERNELS if pattern.search(names[i])}
    kernels = [i for i in sparsified if len(shapes[i]) >= 2 and i not in heads]
    return sparsified, heads, kernels


def _channel_spaces(kernels: list[int], coupled: Mapping[int, list[int]]) -> list[list[int]]:
    """The kernels grouped by shared coupled leaves (a residual stream's convs share its norms), in order."""
    owner = {i: i for i in kernels}

    def root(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return i

    first: dict[int, int] = {}
    for i in kernels:
        for j in coupled.get(i, ()):
            if j in first:
                owner[root(i)] = root(first[j])
            else:
                first[j] = i
    spaces: dict[int, list[int]] = {}
    for i in kernels:
        spaces.setdefault(root(i), []).append(i)
    return list(spaces.values())


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


@typing.final
@dataclasses.dataclass(frozen=True)
class SSLPenalty(Regularizer):
    """Structured Sparsity Learning's group lasso over several group types (see the module docstring).

    Attributes:
      strength: ``{type: lambda_k}``, a float ``>= 0`` or a schedule ``step -> lambda`` per group type
        (types from :data:`SSL_GROUPS`; order matters for the proximal step). Stored as pairs.
      prox: exact zeros by group soft-thresholding after the optimizer step (needs
        ``learning_rate``); ``False``: the paper's subgradient and thresholding.
      learning_rate: the inner optimizer's step size ``eta`` (float or schedule), for ``prox=True``.
      threshold: ``prox=False``: penalised weights with ``|w| < threshold`` are set to 0 after each
        update (0 disables it).
      coupled: kernel leaf name -> names of 1-D leaves indexed by its output channel, which join its
        filter groups.
      blocks: block name -> the names of its leaves, the depth-wise groups (``None``: derived from
        :class:`~jaxsparse.models.ResNet`'s names, :func:`resnet_blocks`).
      end_step: the penalty and the thresholding apply on steps ``< end_step`` (``None``: always).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxsparse.masks import SparsityLayout
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]])}
      >>> plans = SparsityLayout(0.0).plan(params)
      >>> float(SSLPenalty({"filter": 1.0, "input": 0.5}).value(params, None, plans, 0))  # 5 + 1 + (3 + 4.123)/2
      9.56155...
      >>> SSLPenalty({"filter": 1.0}, prox=True, learning_rate=1.0).proximal(params, None, plans, 0)["w"].tolist()
      [[2.4000000953674316, 0.0], [3.200000047683716, 0.0]]
    """

    strength: Mapping[str, float | Schedule]
    prox: bool = False
    learning_rate: float | Schedule | None = None
    threshold: float = 1e-4
    coupled: Mapping[str, Sequence[str]] | None = None
    blocks: Mapping[str, Sequence[str]] | None = None
    end_step: int | None = None

    def __post_init__(self):
        pairs = tuple(self.strength.items()) if isinstance(self.strength, Mapping) else tuple(self.strength)
        kinds = parse_groups([kind for kind, _ in pairs])
        strengths = tuple(
            (kind, as_schedule(value, f"the strength of SSL's {kind!r} groups"))
            for kind, (_, value) in zip(kinds, pairs, strict=True)
        )
        object.__setattr__(self, "strength", strengths)
        if self.prox and self.learning_rate is None:
            raise ValueError(
                "SSLPenalty(prox=True) soft-thresholds by eta * lambda: pass learning_rate= (the inner optimizer's "
                "step size or its schedule), or prox=False for the subgradient and thresholding."
            )
        if self.learning_rate is not None:
            object.__setattr__(self, "learning_rate", as_schedule(self.learning_rate, "learning_rate"))
        threshold = float(self.threshold)
        if not threshold >= 0:
            raise ValueError(f"threshold must be a float >= 0 (the paper's code: 1e-4), got {self.threshold!r}.")
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "coupled", _pairs(self.coupled, "coupled", unique=False))
        object.__setattr__(self, "blocks", _pairs(self.blocks, "blocks", unique=True))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The group types, in the order the proximal step applies them."""
        return tuple(kind for kind, _ in self.strength)

    # ----- the groups -------------------------------------------------------------------------------

    def families(self, params: Params, plans: Sequence[LayerPlan | None]) -> list[_Family]:
        """Every type's groups in ``params``: static, from names and shapes only.

        Raises:
          ValueError: a type has no layer in this model, or ``coupled`` / ``blocks`` name a leaf that
            does not exist or does not fit; the message names the type, the leaves seen and the fix.
        """
        named = jax.tree_util.tree_leaves_with_path(params)
        names = [leaf_name(path) for path, _ in named]
        shapes = [tuple(jnp.shape(leaf)) for _, leaf in named]
        index = {name: i for i, name in enumerate(names)}
        sparsified, heads, kernels = _kernels(names, shapes, plans)
        coupled = dict(self.coupled or ())

        def leaf(name: str, what: str) -> int:
            if name not in index:
                raise ValueError(f"{what} names leaf {name!r}, which the parameters do not have; leaves: "
                                 f"{_listing(names)}.")  # fmt: skip
            return index[name]

        # A kernel without filter groups (kept dense, or an attention kernel) has nothing to couple to: its
        # entry is dropped, so `coupled_leaves`' whole output can be passed. A name the model lacks is an error.
        coupled = {kernel: leaves for kernel, leaves in coupled.items() if leaf(kernel, "coupled") in kernels}
        families: list[_Family] = []
        for kind in self.kinds:
            found: list[_Family] = []
            if kind == "filter":
                vectors = {}
                for i in kernels:
                    vectors[i] = []
                    for other in coupled.get(names[i], ()):
                        j = leaf(other, f"coupled[{names[i]!r}]")
                        if shapes[j] != (shapes[i][-1],):
                            raise ValueError(
                                f"coupled leaf {other!r} of {names[i]!r} has shape {shapes[j]}, but it must be 1-D "
                                f"with one entry per output channel, shape ({shapes[i][-1]},)."
                            )
                        vectors[i].append(j)
                # Kernels sharing a coupled leaf write to one channel space (a residual stream): channel n
                # is removable only with all their filters n, so they form one group per channel.
                for space in _channel_spaces(kernels, vectors):
                    shared = sorted({j for i in space for j in vectors[i]})
                    members = [(i, OutputChannels()) for i in space] + [(j, Unstructured()) for j in shared]
                    if len({shapes[i][-1] for i in space}) > 1:
                        raise ValueError(f"kernels {_listing([names[i] for i in space])} share coupled leaves but "
                                         "differ in output channels.")  # fmt: skip
                    found.append(_Family(kind, " + ".join(names[i] for i in space), tuple(members)))
            elif kind == "channel":
                found = [_Family(kind, names[i], ((i, InputChannels()),)) for i in kernels]
            elif kind == "shape":
                found = [_Family(kind, names[i], ((i, _Positions()),)) for i in kernels]
            elif kind == "head":
                modules: dict[str, list[tuple[int, Structure]]] = {}
                for i, structure in heads.items():
                    modules.setdefault(names[i].rsplit("/", 2)[0], []).append((i, structure))
                for module, members in modules.items():
                    counts = {structure.mask_shape(shapes[i]) for i, structure in members}
                    if len(counts) > 1:
                        raise ValueError(f"the attention kernels of {module!r} disagree on the number of heads: "
                                         f"{sorted(counts)}.")  # fmt: skip
                    found.append(_Family(kind, module, tuple(members)))
            else:  # depth
                blocks = self.blocks if self.blocks is not None else tuple(resnet_blocks(params).items())
                for block, leaves in blocks:
                    found.append(_Family(kind, block, tuple((leaf(n, f"block {block!r}"), _Whole()) for n in leaves)))
            if not found:
                raise ValueError(self._absent(kind, names, [names[i] for i in sparsified]))
            families += found
        return families

    def _absent(self, kind: str, names: list[str], sparsified: list[str]) -> str:
        seen = f"the sparsified leaves are {_listing(sparsified)}" if sparsified else "no leaf is sparsified"
        if kind == "depth":
            return (
                f"SSL group type 'depth' needs residual blocks, but the model has no shortcut blocks: none of its "
                f"leaves ({_listing(names)}) is in a block named like the library's ResNet (layer_i/conv_j). Pass "
                "blocks={block: [leaf names]} for a model with shortcuts, or drop 'depth' from the group types."
            )
        if kind == "head":
            return (
                f"SSL group type 'head' needs attention kernels (flax's .../query|key|value|out/kernel), but {seen}: "
                "drop 'head' from the group types for a model without attention."
            )
        return (
            f"SSL group type {kind!r} needs sparsified kernels of rank >= 2 outside attention, but {seen}: drop "
            f"{kind!r} from the group types, or sparsify the model's dense or conv kernels."
        )

    def filter_kernels(self, params: Params, plans: Sequence[LayerPlan | None]) -> list[str]:
        """The names of the kernels that get filter groups (the keys ``coupled`` may have)."""
        names = leaf_names(params)
        _, _, kernels = _kernels(names, [tuple(jnp.shape(leaf)) for leaf in jax.tree.leaves(params)], plans)
        return [names[i] for i in kernels]

    def leaf_names(self, params: Params, plans: Sequence[LayerPlan | None]) -> list[str]:
        """The names of every leaf some group covers."""
        names = leaf_names(params)
        covered = {i for family in self.families(params, plans) for i, _ in family.members}
        return [names[i] for i in sorted(covered)]

    # ----- the penalty ------------------------------------------------------------------------------

    def _strength(self, kind: str, step) -> jax.Array:
        value = jnp.asarray(dict(self.strength)[kind](step), jnp.float32)
        if self.end_step is None:
            return value
        return jnp.where(jnp.asarray(step) < self.end_step, value, jnp.zeros((), jnp.float32))

    @staticmethod
    def _family_norms(family: _Family, leaves: list) -> jax.Array:
        return jnp.sqrt(sum(_norms(structure, leaves[i]) for i, structure in family.members))

    def value(self, params: Params, masks: Masks, plans, step) -> jax.Array:
        del masks
        leaves = jax.tree.leaves(params)
        total = jnp.zeros((), jnp.float32)
        for family in self.families(params, plans):
            total = total + self._strength(family.kind, step) * jnp.sum(self._family_norms(family, leaves))
        return total

    def gradient(self, params: Params, masks: Masks, plans, step) -> Params | None:
        """``sum_k lambda_k W_g / ||W_g||`` over the groups holding a weight (0 on zero groups); ``None`` with prox."""
        if self.prox:
            return None
        del masks
        leaves = jax.tree.leaves(params)
        grads = [jnp.zeros(jnp.shape(p), jnp.float32) for p in leaves]
        for family in self.families(params, plans):
            inverse = self._strength(family.kind, step) * inverse_norms(self._family_norms(family, leaves))
            for i, structure in family.members:
                grads[i] = grads[i] + structure.expand(inverse, jnp.shape(leaves[i])) * leaves[i].astype(jnp.float32)
        grads = [g.astype(jnp.result_type(p)) for g, p in zip(grads, leaves, strict=True)]
        return jax.tree.unflatten(jax.tree.structure(params), grads)

    def proximal(self, params: Params, masks: Masks, plans, step) -> Params | None:
        """Group soft-thresholding type after type (``prox``), else zeroing ``|w| < threshold`` in penalised leaves."""
        del masks
        leaves = list(jax.tree.leaves(params))
        families = self.families(params, plans)
        if self.prox:
            rate = jnp.asarray(self.learning_rate(step), jnp.float32)
            for kind in self.kinds:
                threshold = rate * self._strength(kind, step)
                # Groups of one type are disjoint, so each type's step is exact; the types follow in turn.
                for family in [f for f in families if f.kind == kind]:
                    factors = shrink_factors(self._family_norms(family, leaves), threshold)
                    for i, structure in family.members:
                        leaves[i] = scale_groups(leaves[i], factors, structure)
        elif self.threshold > 0:
            on = jnp.asarray(True) if self.end_step is None else jnp.asarray(step) < self.end_step
            for i in sorted({i for family in families for i, _ in family.members}):
                small = (jnp.abs(leaves[i]) < self.threshold) & on
                leaves[i] = jnp.where(small, jnp.zeros((), leaves[i].dtype), leaves[i])
        else:
            return None
        return jax.tree.unflatten(jax.tree.structure(params), leaves)

    # ----- zero groups ------------------------------------------------------------------------------

    def zero_weights(self, params: Params, plans: Sequence[LayerPlan | None]) -> list[jax.Array | None]:
        """Per leaf, ``True`` where the weight lies in an all-zero group of any type (``None``: no group covers it)."""
        leaves = jax.tree.leaves(params)
        zero: list[jax.Array | None] = [None] * len(leaves)
        for family in self.families(params, plans):
            empty = self._family_norms(family, leaves) == 0
            for i, structure in family.members:
                here = structure.expand(empty, jnp.shape(leaves[i]))
                zero[i] = here if zero[i] is None else zero[i] | here
        return zero

    def summary(self, params: Params, plans: Sequence[LayerPlan | None]) -> dict[str, typing.Any]:
        """``{"zero_groups": zero_groups(...)}``, for the run's report."""
        return {"zero_groups": self.zero_groups(params, plans)}

    def zero_groups(self, params: Params, plans: Sequence[LayerPlan | None]) -> dict[str, dict[str, list[int]]]:
        """``{layer: {type: [zero groups, groups]}}`` on the host, for reports (a layer: a leaf, block or module)."""
        leaves = jax.tree.leaves(params)
        counts: dict[str, dict[str, list[int]]] = {}
        for family in self.families(params, plans):
            norms = np.asarray(self._family_norms(family, leaves))
            counts.setdefault(family.label, {})[family.kind] = [int((norms == 0).sum()), int(norms.size)]
        return counts
