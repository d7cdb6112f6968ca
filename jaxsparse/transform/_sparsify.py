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
* sets the parameter values the algorithm asks for where masks changed (``on_mask_change``: grown
  weights to ``grow_init``, a rewind, ...), and
* skips the optimizer step if ``skip_optimizer_on_update`` (the RigL reference's behaviour). Then
  the inner optimizer's moments stay untouched but its integer step counters advance, so its
  learning-rate schedules and Adam's bias correction follow the real step, as in the reference.

An algorithm's regulariser adds its gradient to the loss gradient, and its proximal step (if any)
maps the parameters after the optimizer step (``u`` is chosen so that ``theta + u`` is the proximal
point, exactly ``0`` where it is ``0``).

Normal and mask-update steps are one compiled function with no retracing: only the mask selection
sits under a ``lax.cond`` (so it runs only on update steps), while the slot reset, growth and
projection are element-wise selects that are no-ops on normal steps and fuse with the optimizer.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsparse._explicit import explicit_sharding
from jaxsparse._variables import unboxed
from jaxsparse.algorithms import AlgorithmState, ParamReset, SparseAlgorithm
from jaxsparse.masks import LayerPlan, Masks, Params, expand_masks, leaf_name, mask_leaves
from jaxsparse.transform._slots import reset_slots, slot_owners
from jaxsparse.transform._state import SparsifyState

__all__ = ["sparsify"]

# Keys of parameter actions come from their own stream of a step's key; the algorithm's rule
# folds leaf indices into the same step key, so the two never share a key.
_ACTION_STREAM = 0x7FFFFFFE


def _where_mask(tree: Params, masks: Masks, off) -> Params:
    """``tree`` on the mask, ``off(leaf)`` elsewhere; unmasked leaves unchanged."""
    leaves = [
        x if m is None else jnp.where(m, x, off(x))
        for x, m in zip(jax.tree.leaves(tree), mask_leaves(tree, masks), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


def _restrict(grads: Params, masks: Masks) -> Params:
    return _where_mask(grads, masks, lambda g: jnp.zeros((), g.dtype))


def _project(updates: Params, params: Params, masks: Masks, stores_dense: bool) -> Params:
    """Updates in the parameters' dtypes that land ``params`` exactly on the trainable mask.

    Masked algorithms: ``u = -theta`` off the mask (``theta + u == 0`` exactly). Dense storage
    (Top-KAST): off the mask the update is 0, so those weights keep their values. Some optimizers
    (adafactor with momentum) return float32 updates for bfloat16 params; they are cast back.
    """
    updates = jax.tree.map(lambda u, p: u.astype(p.dtype), updates, params)
    if stores_dense:
        return _restrict(updates, masks)
    leaves = [
        u if m is None else jnp.where(m, u, -p)
        for u, p, m in zip(jax.tree.leaves(updates), jax.tree.leaves(params), mask_leaves(params, masks), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _stored_params(params: Params, masks: Masks, stores_dense: bool) -> Params:
    """The parameters as the optimizer should see them: on the trainable mask, or dense."""
    return params if stores_dense else _where_mask(params, masks, lambda p: jnp.zeros((), p.dtype))


def _changed(params: Params, old: Masks, new: Masks) -> Masks:
    pairs = zip(mask_leaves(params, old), mask_leaves(params, new), strict=True)
    leaves = [None if a is None else a != b for a, b in pairs]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _apply_reset(updates: Params, params: Params, reset: ParamReset) -> Params:
    """Where ``reset.where``, move the weight to ``reset.values`` (plus this step's optimizer update)."""
    leaves = [
        u if v is None else jnp.where(w, (v - p) + u, u)
        for u, p, v, w in zip(
            jax.tree.leaves(updates),
            jax.tree.leaves(params),
            jax.tree.structure(params).flatten_up_to(reset.values),
            mask_leaves(params, reset.where),
            strict=True,
        )
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def _hold_moments(stepped: optax.OptState, held: optax.OptState, hold: jax.Array) -> optax.OptState:
    """``held`` where ``hold``, except integer leaves (step counters), which take their ``stepped`` value."""

    def choose(new, old):
        if jnp.issubdtype(jnp.result_type(new), jnp.integer):
            return new
        return jnp.where(hold, old, new)

    return jax.tree.map(choose, stepped, held)


def _restarted(state: optax.OptState, fresh: optax.OptState, reset: ParamReset) -> optax.OptState:
    """``fresh`` (the inner optimizer's ``init``) where ``reset.restart_optimizer``, else ``state``.

    Integer leaves (step counters) restart at ``reset.optimizer_step`` when it is given.
    """

    def restart(f, s):
        if reset.optimizer_step is not None and jnp.issubdtype(jnp.result_type(s), jnp.integer):
            f = jnp.full(jnp.shape(s), reset.optimizer_step)
        return jnp.where(reset.restart_optimizer, jnp.asarray(f, jnp.result_type(s)), s)

    return jax.tree.map(restart, fresh, state)


def _proximal(updates, params, algorithm: SparseAlgorithm, masks, plans, step) -> Params:
    """Updates that land ``params`` on the regulariser's proximal point of ``params + updates``."""
    regularizer = algorithm.regularizer
    if regularizer is None:
        return updates
    target = regularizer.proximal(optax.apply_updates(params, updates), masks, plans, step)
    if target is None:
        return updates
    return jax.tree.map(lambda t, p: jnp.where(t == 0, -p, t - p).astype(p.dtype), target, params)


def _follow_param_shardings(state: SparsifyState, params: Params) -> SparsifyState:
    """Ties every parameter-shaped leaf of ``state`` to its parameter, so ``jit`` shards it alike.

    Under ``jax.jit(tx.init)`` with automatic mesh axes a freshly made mask or zero slot depends on
    no input, and XLA would place it on one device. A select whose two branches are the leaf
    itself, predicated on the parameter, changes no value but gives sharding propagation a data
    dependence on the parameter. Under explicit axes the leaves are already created sharded.
    """
    by_path = dict(jax.tree_util.tree_leaves_with_path(params))

    def follow(leaf, owner):
        if owner is None:
            return leaf
        param = by_path[owner]
        if explicit_sharding(param) is not None:
            return leaf
        return jnp.where(param == param, leaf, leaf)

    leaves, treedef = jax.tree.flatten(state)
    return jax.tree.unflatten(
        treedef, [follow(*entry) for entry in zip(leaves, slot_owners(state, params), strict=True)]
    )


@functools.partial(jax.jit, static_argnums=0)
def _init_masks(algorithm: SparseAlgorithm, params: Params, key: jax.Array) -> Masks:
    """``algorithm.init_masks`` compiled once per algorithm and parameter shapes.

    ``tx.init`` is usually called eagerly; run op by op, every selection would compile its
    branches anew.
    """
    return algorithm.init_masks(params, key)


def _check_handed_in(
    algorithm: SparseAlgorithm, params: Params, masks: Masks, state: AlgorithmState | None, key: jax.Array
) -> None:
    """Masks (and algorithm state) given to ``sparsify`` must fit the layout: shapes, and exact counts."""
    algorithm.check_masks(params, masks)
    plans = algorithm.plan(params)
    if algorithm.fixed_counts and not any(isinstance(m, jax.core.Tracer) for m in jax.tree.leaves(masks)):
        with jax.ensure_compile_time_eval():
            shapes = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
            reference = _init_masks(algorithm, shapes, key)
            # Under jax.jit(tx.init) the masks are constants: compare them now, not as traced values.
            for view in (algorithm.forward_masks, algorithm.trainable_masks):
                for plan, want, got in zip(
                    plans, mask_leaves(params, view(reference)), mask_leaves(params, view(masks)), strict=True
                ):
                    if plan is None:
                        continue
                    expected = np.asarray(plan.structure.row_sums(jnp.asarray(want)))
                    actual = np.asarray(plan.structure.row_sums(jnp.asarray(got)))
                    if (expected != actual).any():
                        row = int(np.flatnonzero(expected != actual)[0])
                        where = "" if plan.rows == 1 else f" in row {row} of its {plan.rows} ({plan.structure!r})"
                        raise ValueError(
                            f"the mask handed in for {plan.name!r} has {actual[row]} active entries{where}, but "
                            f"{algorithm.name}'s layout keeps exactly {expected[row]} of {plan.row_size}: compute the "
                            "masks for this algorithm's layout (its sparsity, distribution and structure), or build "
                            "the algorithm with the layout the masks were made for."
                        )
    if state is None:
        return
    expected = jax.eval_shape(algorithm.init_state, params, masks)
    try:
        pairs = jax.tree.structure(expected).flatten_up_to(state)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"the algorithm state handed in does not match {algorithm.name}'s: its structure is "
            f"{jax.tree.structure(expected)}; pass a state from algo.init_state(params, masks) or a checkpoint "
            f"of the same algorithm. Details: {error}"
        ) from None
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), pairs, strict=True):
        if (jnp.shape(got), jnp.result_type(got)) != (want.shape, want.dtype):
            raise ValueError(
                f"algorithm state at {leaf_name(path)!r} has shape {jnp.shape(got)} and dtype {jnp.result_type(got)}, "
                f"expected {want.shape} and {want.dtype}: pass the state of this algorithm for these params."
            )


def _is_accumulator(node: Any) -> bool:
    return isinstance(node, optax.MultiStepsState)


def _check_not_accumulating(algorithm: SparseAlgorithm, inner_state: optax.OptState) -> None:
    """Refuses ``sparsify(MultiSteps(...))`` when mask-update steps skip the inner optimizer.

    Inside ``sparsify`` a ``MultiSteps`` sees micro-batches, so skipping "the optimizer step" on a
    mask-update step would drop that micro-batch from the accumulation (its counter advancing, its
    gradient never added). The two compositions that keep every micro-batch are named in the error.
    """
    if not algorithm.skip_optimizer_on_update or algorithm.schedule is None:
        return
    if any(_is_accumulator(node) for node in jax.tree.leaves(inner_state, is_leaf=_is_accumulator)):
        raise ValueError(
            f"sparsify(MultiSteps(...), {algorithm.name}) with skip_optimizer_on_update=True would drop every "
            "mask-update micro-batch from the gradient accumulation. Either accumulate outside: "
            "optax.MultiSteps(jaxsparse.sparsify(...), every_k_schedule=k) (update_every then counts optimizer "
            "steps, and masks are chosen from the accumulated gradient), or build the algorithm with "
            "skip_optimizer_on_update=False (update_every then counts micro-steps)."
        )


def _check_state_fits(
    state: SparsifyState, algorithm: SparseAlgorithm, params: Params, inner: optax.GradientTransformation
) -> None:
    """A state handed to ``update`` must come from a ``tx`` configured like this one.

    Compares what fixes the state's structure (the algorithm's kind, the layout's plan of these
    params, the inner optimizer's state structure) in Python, so a mismatch names the difference
    instead of failing deep inside a ``lax.cond`` or the inner optimizer. Params unlike the ones the
    state was built for are left to ``check_masks``, whose message names the leaf.
    """
    fix = (
        "pass the state returned by this tx's init (or restored with it as the template), or update with the tx "
        "that built it."
    )
    if not isinstance(state, SparsifyState):
        raise TypeError(f"sparsify.update needs the state from its own init, got {type(state).__name__}: {fix}")
    if type(state.algorithm) is not type(algorithm) or state.algorithm.name != algorithm.name:
        raise ValueError(
            f"this state was built for {state.algorithm.name} ({type(state.algorithm).__name__}), but this tx runs "
            f"{algorithm.name} ({type(algorithm).__name__}): {fix}"
        )
    leaves = jax.tree.leaves(params)
    if state.param_structure != jax.tree.structure(unboxed(params)) or any(
        old is not None and old.shape != tuple(jnp.shape(leaf)) for old, leaf in zip(state.plans, leaves, strict=True)
    ):
        return
    plans = algorithm.plan(params)
    differ = [
        (new.name if new is not None else old.name, old, new)
        for old, new in zip(state.plans, plans, strict=False)
        if old != new
    ]
    if len(state.plans) != len(plans) or differ:
        details = "; ".join(
            f"{name}: {'dense' if old is None else f'sparsity {old.sparsity:.4g}'} in the state, "
            f"{'dense' if new is None else f'sparsity {new.sparsity:.4g}'} here"
            for name, old, new in differ[:6]
        )
        raise ValueError(
            f"this state was built with another sparsity layout ({details or 'a different number of leaves'}), "
            f"e.g. another sparsity, distribution, keep_dense or layer_sparsity: {fix}"
        )
    if jax.tree.structure(state.inner_state) != jax.tree.structure(jax.eval_shape(inner.init, params)):
        raise ValueError(f"this state's inner optimizer state has another structure than this tx's optimizer: {fix}")


def sparsify(
    inner: optax.GradientTransformation,
    algorithm: SparseAlgorithm,
    *,
    key: jax.Array,
    masks: Masks | None = None,
    algorithm_state: AlgorithmState | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that it trains sparse with ``algorithm``.

    The update is ``u_t = P_{m_{t+1}}(inner(g_t \\odot m, ...))``: the inner optimizer runs on the
    masked gradient and ``P`` projects onto the (possibly new) masks, so that
    ``theta_{t+1} = theta_t + u_t`` is exactly zero off ``m_{t+1}``.

    Args:
      inner: any optax gradient transformation (a chain, ``inject_hyperparams``, ``MultiSteps``...).
      algorithm: e.g. ``rigl(...)``, ``set_(...)``, ``top_kast(...)``, ``static(...)``.
      key: the random key of initial masks and stochastic updates (keyword-only, never hidden).
      masks: masks to start from instead of ``algorithm.init_masks`` (e.g. computed from a loss
        and a batch, or restored from a checkpoint), as ``algorithm.init_masks`` would return them
        (group level; a ``MaskPair`` for Top-KAST). ``init`` checks them against the layout:
        shapes, and the exact counts of algorithms whose counts are fixed.
      algorithm_state: the algorithm's state to start from instead of ``algorithm.init_state``.

    Returns:
      A ``GradientTransformationExtraArgs`` whose ``update(grads, state, params)`` requires params
      and forwards extra keyword arguments to ``inner``.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxsparse.algorithms import static
      >>> from jaxsparse.masks import apply_masks
      >>> from jaxsparse.transform import masks_of
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
    dense = algorithm.stores_dense

    def expanded_trainable(params: Params, plans: list[LayerPlan | None], masks_now: Masks) -> Masks:
        return expand_masks(params, algorithm.trainable_masks(masks_now), plans)

    def init_fn(params: Params) -> SparsifyState:
        if params is None:
            raise ValueError("sparsify.init needs params: call tx.init(params) with the parameter pytree.")
        plans = algorithm.plan(params)
        if masks is None:
            start = _init_masks(algorithm, params, init_key)
        else:
            _check_handed_in(algorithm, params, masks, algorithm_state, init_key)
            start = masks
        inner_state = inner.init(_stored_params(params, expanded_trainable(params, plans, start), dense))
        _check_not_accumulating(algorithm, inner_state)
        state = SparsifyState(
            inner_state=inner_state,
            masks=start,
            algorithm_state=algorithm.init_state(params, start) if algorithm_state is None else algorithm_state,
            step=jnp.zeros((), jnp.int32),
            key=step_key,
            algorithm=algorithm,
            plans=tuple(plans),
            # nnx.Optimizer inits on Param-boxed params and updates on bare ones: record the bare structure.
            param_structure=jax.tree.structure(unboxed(params)),
        )
        return _follow_param_shardings(state, params)

    def update_fn(grads: Params, state: SparsifyState, params: Params | None = None, **extra_args: Any):
        if params is None:
            raise ValueError(
                f"sparsify({algorithm.name}) needs params to keep them on the mask: call "
                "tx.update(grads, state, params)."
            )
        if jax.tree.structure(grads) != jax.tree.structure(params):
            raise ValueError("grads do not match params: pass gradients of the loss with respect to the same pytree.")
        _check_state_fits(state, algorithm, params, inner)
        algorithm.check_masks(params, state.masks)
        plans = algorithm.plan(params)
        old_masks, step = state.masks, state.step
        this_key = jax.random.fold_in(state.key, step)
        regularizer = algorithm.regularizer
        penalty = None if regularizer is None else regularizer.gradient(params, old_masks, plans, step)
        objective_grads = grads if penalty is None else jax.tree.map(jnp.add, grads, penalty)
        new_masks, algo_state = algorithm.update_with_state(
            params, old_masks, grads, step, this_key, state.algorithm_state
        )
        new_trainable = expanded_trainable(params, plans, new_masks)

        if algorithm.schedule is None:  # masks never change: no slot reset, growth or skip
            updates, inner_state = inner.update(
                _restrict(objective_grads, new_trainable), state.inner_state, params, **extra_args
            )
        else:
            # Only the selection sits under a cond (in update_with_state). The rest is element-wise
            # work that XLA fuses with the optimizer's own arithmetic (and with apply_updates) as
            # long as no cond boundary splits it; on normal steps `changed` is all False and those
            # selects are no-ops.
            is_update = algorithm.is_update_step(step)
            old_trainable = expanded_trainable(params, plans, old_masks)
            # inner.init(params) is traced, not run: XLA folds it to constants for the usual optimizers.
            fresh_state = inner.init(_stored_params(params, new_trainable, dense))
            action_key = jax.random.fold_in(this_key, _ACTION_STREAM)
            reset = algorithm.on_mask_change(params, old_trainable, new_trainable, algo_state, action_key, is_update)
            restart = None if reset is None else reset.restart_optimizer
            held = reset_slots(state.inner_state, fresh_state, params, _changed(params, old_trainable, new_trainable))
            if restart is not None:
                held = _restarted(held, fresh_state, reset)
            updates, inner_state = inner.update(_restrict(objective_grads, new_trainable), held, params, **extra_args)
            if algorithm.skip_optimizer_on_update:
                updates = jax.tree.map(lambda u: jnp.where(is_update, jnp.zeros((), u.dtype), u), updates)
                inner_state = _hold_moments(inner_state, held, is_update)
                if restart is not None:  # no step was taken: the optimizer is exactly as new
                    inner_state = _restarted(inner_state, fresh_state, reset)
            if reset is not None:
                updates = _apply_reset(updates, params, reset)
        updates = _project(updates, params, new_trainable, dense)
        updates = _proximal(updates, params, algorithm, new_masks, plans, step)
        new_state = state._replace(
            inner_state=inner_state,
            masks=new_masks,
            algorithm_state=algo_state,
            step=optax.safe_int32_increment(step),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
