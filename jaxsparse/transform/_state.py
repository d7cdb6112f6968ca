"""The state of ``sparsify``, and finding it inside any enclosing optax state.

Besides its arrays the state carries, as static pytree metadata, the algorithm and the layout's plan
of the parameters. So ``masks_of``, ``forward_params`` and the inspection functions need nothing but
the state: how the masks are used (Top-KAST's two sets, a structure's group-level masks) is the
algorithm's own knowledge, never inferred from types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from jaxsparse._variables import unboxed
from jaxsparse.algorithms import AlgorithmState, SparseAlgorithm
from jaxsparse.masks import LayerPlan, Masks

__all__ = ["SparsifyState", "find_sparsify_state", "masks_of", "resolve_masks"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparsifyState:
    """State of :func:`~jaxsparse.sparsify`.

    Attributes:
      inner_state: the wrapped optimizer's state.
      masks: the algorithm's masks at group level (a :class:`~jaxsparse.masks.MaskPair` for Top-KAST).
      algorithm_state: the algorithm's own state (``()`` when it has none).
      step: the number of ``update`` calls so far (the step of the next update).
      key: base key of mask updates; step ``t`` uses ``fold_in(key, t)``.
      algorithm: the algorithm (static).
      plans: the layout's plan of the parameters, one entry per parameter leaf (static).
      param_structure: the parameters' tree structure (static).
    """

    inner_state: optax.OptState
    masks: Masks
    algorithm_state: AlgorithmState
    step: jax.Array
    key: jax.Array
    algorithm: SparseAlgorithm = dataclasses.field(metadata=dict(static=True))
    plans: tuple[LayerPlan | None, ...] = dataclasses.field(metadata=dict(static=True))
    param_structure: jax.tree_util.PyTreeDef = dataclasses.field(metadata=dict(static=True))

    def _replace(self, **changes: Any) -> SparsifyState:
        """A copy with some fields changed (as a ``NamedTuple``'s ``_replace``)."""
        return dataclasses.replace(self, **changes)

    def expanded(self, masks: Masks) -> Masks:
        """Group-level ``masks`` of these params broadcast to the parameters' shapes."""
        entries = self.param_structure.flatten_up_to(masks)
        leaves = [
            None if mask is None else plan.structure.expand(mask, plan.shape)
            for plan, mask in zip(self.plans, entries, strict=True)
        ]
        return jax.tree.unflatten(self.param_structure, leaves)


def find_sparsify_state(tree: Any) -> SparsifyState | None:
    """The one :class:`SparsifyState` inside ``tree`` (any enclosing optax state), or ``None``.

    Found anywhere inside a chain, ``inject_hyperparams``, ``MultiSteps``, a linen ``TrainState``,
    an ``nnx.Optimizer``'s ``opt_state`` or any other pytree, as ``optax.tree_utils.tree_get`` finds
    a state. ``nnx.Optimizer`` boxes the state's arrays in ``OptVariable``s; the state returned is
    unboxed (``sparsify`` records the params' structure without nnx's boxes), so its masks line up
    with ``nnx.state(model, nnx.Param)`` and with its pure form alike.

    Raises:
      ValueError: ``tree`` holds more than one ``sparsify`` state.
    """
    found = [
        node
        for node in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, SparsifyState))
        if isinstance(node, SparsifyState)
    ]
    if len(found) > 1:
        raise ValueError(
            f"the state holds {len(found)} sparsify states; pass the one you mean (e.g. state[i] of a chain)."
        )
    return unboxed(found[0]) if found else None


def masks_of(state: Any) -> Masks:
    """The forward masks in a :func:`~jaxsparse.sparsify` state, shaped like the params.

    ``True`` marks an active weight; dense leaves hold ``None``. For Top-KAST this is the forward
    set ``A``, the one to use at inference; group-level masks are broadcast to their parameters.
    The masks are plain ``bool`` arrays, without the nnx boxes an ``nnx.Optimizer`` keeps them in.

    Args:
      state: the state of ``sparsify``, or any optax state (chain, wrapper, ``TrainState``,
        ``nnx.Optimizer.opt_state``) holding it.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jaxsparse as jsp
      >>> tx = optax.chain(optax.clip(1.0), jsp.sparsify(optax.sgd(0.1), jsp.static(0.5), key=jax.random.key(0)))
      >>> int(jsp.masks_of(tx.init({"w": jnp.ones((4, 4))}))["w"].sum())
      8
    """
    found = find_sparsify_state(state)
    if found is None:
        raise TypeError(
            f"masks_of expects a state that holds sparsify's state (tx.init of a jaxsparse.sparsify "
            f"transformation, alone or in a chain; for an nnx.Optimizer, optimizer.opt_state), got "
            f"{type(state).__name__}."
        )
    return found.expanded(found.algorithm.forward_masks(found.masks))


def resolve_masks(state_or_masks: Any) -> Masks:
    """``masks_of(state_or_masks)`` when it holds a ``sparsify`` state, else ``state_or_masks`` (a mask tree).

    The helpers that take "the masks" (``apply_masks``, ``summary``, ...) accept the optimizer state
    as readily as the mask tree, the way ``forward_params`` does.
    """
    return state_or_masks if find_sparsify_state(state_or_masks) is None else masks_of(state_or_masks)
