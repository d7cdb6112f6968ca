"""Pruning a trained model in one shot: magnitude, Taylor, OBD, WoodFisher (OBS), SparseGPT and Wanda.

:func:`prune_one_shot` takes trained parameters, a :class:`~jaxsparse.masks.SparsityLayout` (which
leaves, how sparse, at what structure), a criterion and calibration batches, and returns the
pruned parameters with their masks. The masks are those an algorithm's ``init_masks`` returns, so
a short fine-tune with any algorithm starts from them:
``sparsify(inner, jsp.static(...), key=..., masks=result.masks)``.

The criteria differ in what they read (see :func:`prune_one_shot`):

* ``magnitude``: the weights alone;
* ``taylor``, ``obd``, ``woodfisher``: gradients of a loss on the batches (``loss_fn``);
* ``sparsegpt``, ``wanda``: each kernel's *inputs* on the batches, found by tracing ``apply_fn``'s
  jaxpr for the product the kernel enters (:mod:`jaxsparse.one_shot._capture` lists what cannot be
  traced: a kernel used twice, transformed before its product, grouped convolutions, and weights
  under ``scan``/``while``/``cond``; each is refused with the layer named).

During training, gradual pruning takes the criteria that need no calibration pass:
``gradual_magnitude(..., criterion="taylor" | "obd")``. The others need per-example gradients or
layer inputs over calibration data and are one-shot.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxsparse as jsp
  >>> params = {"w": jax.random.normal(jax.random.key(0), (8, 4))}
  >>> x = jax.random.normal(jax.random.key(1), (32, 8))
  >>> result = jsp.one_shot.prune_one_shot(
  ...     "sparsegpt", params, jsp.SparsityLayout(0.5, "uniform"), key=jax.random.key(2),
  ...     apply_fn=lambda p, b: b @ p["w"], batches=[x])
  >>> int(result.masks["w"].sum()), bool(jnp.all(result.params["w"][~result.masks["w"]] == 0))
  (16, True)
"""

from jaxsparse.one_shot._prune import CRITERIA, OneShotResult, prune_one_shot

__all__ = [
    "CRITERIA",
    "OneShotResult",
    "prune_one_shot",
]
