"""The parameters the forward pass must see, with the right gradient flowing back.

* Masked algorithms (static, SET, RigL, magnitude pruning): the value is ``theta * m`` and the
  gradient is passed straight through, dense: ``d/d theta = dL/d(theta * m)``. RigL needs exactly
  this dense gradient to rank inactive positions, and the optimizer wrapper restricts it to the
  mask itself.
* Top-KAST: the value is ``theta * A`` and the gradient is restricted to ``B``:
  ``d/d theta = 1_B * dL/d(theta * A)`` (Jayakumar et al. 2020, eq. 3).

Which one applies is the algorithm's own choice (``SparseAlgorithm.forward_params``), read from the
state. So whether the user differentiates with respect to ``forward_params(...)``'s output or
through it, the wrapper receives what the algorithm needs.

``apply_masks`` is the same projection as plain values, for the two places no gradient flows:
making the model sparse at init, and the model to deploy.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxsparse import masks as masks_lib
from jaxsparse.masks import Masks, Params, check_masks, mask_leaves, masked
from jaxsparse.transform._state import find_sparsify_state, resolve_masks

__all__ = ["apply_masks", "forward_params"]


def forward_params(params: Params, state: Any) -> Params:
    """The parameters to feed the forward pass: ``theta * m`` (Top-KAST: ``theta * A``).

    Args:
      params: the (dense-storage) parameters.
      state: a :func:`~jaxsparse.sparsify` state, any optax state holding one, or a mask tree
        shaped like the params (then the gradient is passed straight through).

    Returns:
      Parameters of the same structure and dtypes; differentiating through them yields the dense
      gradient (masked algorithms) or the ``B``-restricted gradient (Top-KAST).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> w, m = jnp.array([2.0, 3.0]), jnp.array([True, False])
      >>> forward_params({"w": w}, {"w": m})["w"].tolist()
      [2.0, 0.0]
      >>> jax.grad(lambda w: forward_params({"w": w}, {"w": m})["w"].sum())(w).tolist()
      [1.0, 1.0]
    """
    found = find_sparsify_state(state)
    if found is not None:
        return found.algorithm.forward_params(params, found.masks)
    masks: Masks = state
    check_masks(params, masks)
    leaves = [
        p if m is None else masked(p, m, None)
        for p, m in zip(jax.tree.leaves(params), mask_leaves(params, masks), strict=True)
    ]
    return jax.tree.unflatten(jax.tree.structure(params), leaves)


def apply_masks(params: Params, state_or_masks: Any) -> Params:
    """Projects parameters onto the forward masks: ``theta * masks_of(state)``, exactly ``0`` off them.

    Call it once after ``tx.init`` so the model is sparse from step 0 (the first update would
    project it anyway), and to get the sparse model to deploy. For Top-KAST the forward masks are
    the set ``A``: the projection is the inference model, while training keeps the dense storage and
    feeds ``forward_params`` to the forward pass.

    Args:
      params: the parameter pytree (flax nnx ``Param``-boxed states included; the boxes are kept).
      state_or_masks: a :func:`~jaxsparse.sparsify` state, any optax state holding one (chain,
        ``MultiSteps``, ``inject_hyperparams``, ``nnx.Optimizer.opt_state``), or a mask tree.

    Returns:
      The projected parameters, with the structure and dtypes of ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jaxsparse as jsp
      >>> params = {"w": jnp.ones((4, 4))}
      >>> state = jsp.sparsify(optax.sgd(0.1), jsp.static(0.75), key=jax.random.key(0)).init(params)
      >>> int((apply_masks(params, state)["w"] != 0).sum())
      4
    """
    return masks_lib.apply_masks(params, resolve_masks(state_or_masks))
