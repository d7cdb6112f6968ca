"""``sparsify``: any optax optimizer, trained sparse by any jaxsparse algorithm.

The wrapper receives the raw, dense gradients ``g = dL/d(theta * m)``. It needs them because
gradient-based growth (RigL) ranks *inactive* positions by ``|g|``; the inner optimizer, however,
only ever sees ``g`` restricted to the trainable mask, so its moments stay zero off the mask.

On every step it returns updates ``u`` such that ``optax.apply_updates(theta, u)`` is exactly
sparse: for masked algorithms ``u = -theta`` off the mask, so ``theta + u`` is exactly ``+0`` there
whatever the optimizer did (weight decay included). On a mask-update step it also

* computes the new masks with the algorithm's pure rule,
* resets every parameter-shaped optimizer slot where the trainable mask changed to the value the
  inner optimizer's ``init`` gives it (see :mod:`jaxsparse.transform._slots`), so a weight grown
  now starts with fresh moments while a weight dropped and regrown in the same update (unchanged
  mask) keeps them,
* moves grown weights to ``grow_init`` values, and
* skips the optimizer step if ``skip_optimizer_on_update`` (the RigL reference's behaviour).

Normal and mask-update steps are one compiled function with no retracing: only the mask selection
sits under a ``lax.cond`` (so it runs only on update steps), while the slot reset, growth and
projection are element-wise selects that are no-ops on normal steps and fuse with the optimizer.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxsparse.algorithms import SparseAlgorithm
from jaxsparse.masks import (
    MaskPair,
    Masks,
    Params,
    apply_masks,
    check_masks,
    forward_masks,
    trainable_masks,
)
from jaxsparse.transform._slots import reset_slots

__all__ = ["SparsifyState", "masks_of", "sparsify"]


class SparsifyState(NamedTuple):
    """State of :func:`sparsify`.

    Attributes:
      inner_state: the wrapped optimizer's state.
      masks: the algorithm's masks (a :class:`~jaxsparse.masks.MaskPair` for Top-KAST).
      step: the number of ``update`` calls so far (the step of the next update).
      key: base key of mask updates; step ``t`` uses ``fold_in(key, t)``.
    """

    inner_state: optax.OptState
    masks: Masks | MaskPair
    step: jax.Array
    key: jax.Array


def masks_of(state: SparsifyState) -> Masks:
    """The forward masks in a :func:`sparsify` state, shaped like the params.

    ``True`` marks an active weight; dense leaves hold ``None``. For Top-KAST this is the forward
    set ``A``, the one to use at inference.
    """
    if not isinstance(state, SparsifyState):
        raise TypeError(f"masks_of expects the state returned by sparsify(...).init, got {type(state).__name__}.")
    return forward_masks(state.masks)


def _where_mask(tree: Params, masks: Masks, off) -> Params:
    """``tree`` on the mask, ``off(leaf)`` elsewhere; unmasked leaves unchanged."""
    return jax.tree.map(lambda x, m: x if m is None else jnp.where(m, x, off(x)), tree, masks)


def _restrict(grads: Params, masks: Masks) -> Params:
    return _where_mask(grads, masks, lambda g: jnp.zeros((), g.dtype))


def _project(updates: Params, params: Params, masks: Masks | MaskPair) -> Params:
    """Updates in the parameters' dtypes that land ``params`` exactly on the mask.

    Masked algorithms: ``u = -theta`` off the mask (``theta + u == 0`` exactly). Top-KAST stores
    weights densely: off ``B`` the update is 0 so those weights keep their values. Some optimizers
    (adafactor with momentum) return float32 updates for bfloat16 params; they are cast back.
    """
    updates = jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params)
    if isinstance(masks, MaskPair):
        return _restrict(updates, masks.backward)
    return jax.tree.map(lambda u, p, m: u if m is None else jnp.where(m, u, -p), updates, params, masks)


def _stored_params(params: Params, masks: Masks | MaskPair) -> Params:
    """The parameters as the optimizer should see them: on the mask, or dense for Top-KAST."""
    return params if isinstance(masks, MaskPair) else apply_masks(params, masks)


def _changed(old: Masks, new: Masks) -> Masks:
    return jax.tree.map(lambda a, b: None if a is None else a != b, old, new, is_leaf=lambda x: x is None)


def _grow(
    updates: Params, params: Params, old: Masks, new: Masks, init, is_update: jax.Array, key: jax.Array
) -> Params:
    """At newly active positions, move the weight to ``init`` (plus any optimizer update)."""
    leaves = []
    for index, (u, p, a, b) in enumerate(
        zip(
            jax.tree.leaves(updates),
            jax.tree.leaves(params),
            jax.tree.leaves(old, is_leaf=lambda x: x is None),
            jax.tree.leaves(new, is_leaf=lambda x: x is None),
            strict=True,
        )
    ):
        if a is None:
            leaves.append(u)
            continue
        if init is jax.nn.initializers.zeros:
            start = jnp.zeros((), p.dtype)
        else:  # draw only on mask-update steps, not on every step
            start = lax.cond(
                is_update,
                lambda p=p, i=index: init(jax.random.fold_in(key, i), p.shape, p.dtype),
                lambda p=p: jnp.zeros(p.shape, p.dtype),
            )
        leaves.append(jnp.where(b & ~a, (start - p) + u, u))
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


@functools.partial(jax.jit, static_argnums=0)
def _init_masks(algorithm: SparseAlgorithm, params: Params, key: jax.Array) -> Masks | MaskPair:
    """``algorithm.init_masks`` compiled once per algorithm and parameter shapes.

    ``tx.init`` is usually called eagerly; run op by op, every selection would compile its
    branches anew.
    """
    return algorithm.init_masks(params, key)


def sparsify(
    inner: optax.GradientTransformation,
    algorithm: SparseAlgorithm,
    *,
    key: jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that it trains sparse with ``algorithm``.

    The update is ``u_t = P_{m_{t+1}}(inner(g_t \\odot m, ...))``: the inner optimizer runs on the
    masked gradient and ``P`` projects onto the (possibly new) masks, so that
    ``theta_{t+1} = theta_t + u_t`` is exactly zero off ``m_{t+1}``.

    Args:
      inner: any optax gradient transformation (a chain, ``inject_hyperparams``, ``MultiSteps``...).
      algorithm: e.g. ``rigl(...)``, ``set_(...)``, ``top_kast(...)``, ``static(...)``.
      key: the random key of initial masks and stochastic updates (keyword-only, never hidden).

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update(grads, state, params)`` requires params
      and forwards extra keyword arguments to ``inner``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxsparse.algorithms import static
      >>> params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
      >>> tx = sparsify(optax.sgd(0.1), static(0.5), key=jax.random.key(0))
      >>> state = tx.init(params)
      >>> params = apply_masks(params, masks_of(state))
      >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
      >>> int((optax.apply_updates(params, updates)["w"] != 0).sum())
      8
    """
    if not isinstance(algorithm, SparseAlgorithm):
        raise TypeError(
            f"algorithm must be a jaxsparse algorithm such as jaxsparse.rigl(...), got {type(algorithm).__name__}."
        )
    inner = optax.with_extra_args_support(inner)
    init_key, step_key = jax.random.split(key)

    def init_fn(params: Params) -> SparsifyState:
        if params is None:
            raise ValueError("sparsify.init needs params: call tx.init(params) with the parameter pytree.")
        masks = _init_masks(algorithm, params, init_key)
        return SparsifyState(
            inner_state=inner.init(_stored_params(params, masks)),
            masks=masks,
            step=jnp.zeros((), jnp.int32),
            key=step_key,
        )

    def update_fn(grads: Params, state: SparsifyState, params: Params | None = None, **extra_args):
        if params is None:
            raise ValueError(
                f"sparsify({algorithm.name}) needs params to keep them on the mask: call "
                "tx.update(grads, state, params)."
            )
        check_masks(params, forward_masks(state.masks))
        if jax.tree.structure(grads) != jax.tree.structure(params):
            raise ValueError("grads do not match params: pass gradients of the loss with respect to the same pytree.")
        masks, step = state.masks, state.step
        this_key = jax.random.fold_in(state.key, step)
        penalty = algorithm.regularizer_gradient(params, masks)
        objective_grads = grads if penalty is None else jax.tree.map(jnp.add, grads, penalty)

        if algorithm.schedule is None:
            updates, inner_state = inner.update(
                _restrict(objective_grads, trainable_masks(masks)), state.inner_state, params, **extra_args
            )
            return _project(updates, params, masks), state._replace(
                inner_state=inner_state, step=optax.safe_int32_increment(step)
            )

        # Only the selection sits under the cond. The rest is element-wise work that XLA fuses with
        # the optimizer's own arithmetic (and with apply_updates) as long as no cond boundary
        # splits it; on normal steps `changed` is all False and those selects are no-ops.
        is_update = algorithm.is_update_step(step)
        new_masks = lax.cond(
            is_update, lambda: algorithm.update_rule(params, masks, grads, step, this_key), lambda: masks
        )
        new_trainable = trainable_masks(new_masks)
        # inner.init(params) is traced, not run: XLA folds it to constants for the usual optimizers.
        fresh_state = inner.init(_stored_params(params, new_masks))
        inner_state = reset_slots(
            state.inner_state, fresh_state, params, _changed(trainable_masks(masks), new_trainable)
        )
        updates, stepped_state = inner.update(
            _restrict(objective_grads, new_trainable), inner_state, params, **extra_args
        )
        if algorithm.skip_optimizer_on_update:
            updates = jax.tree.map(lambda u: jnp.where(is_update, jnp.zeros((), u.dtype), u), updates)
            stepped_state = jax.tree.map(lambda new, old: jnp.where(is_update, old, new), stepped_state, inner_state)
        if not isinstance(new_masks, MaskPair):
            updates = _grow(updates, params, masks, new_masks, algorithm.grow_init, is_update, this_key)
        new_state = SparsifyState(stepped_state, new_masks, optax.safe_int32_increment(step), state.key)
        return _project(updates, params, new_masks), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
