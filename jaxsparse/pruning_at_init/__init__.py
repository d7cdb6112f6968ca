"""Pruning at initialisation: masks chosen before training (SNIP, GraSP, SynFlow, random, magnitude).

:func:`prune_at_init` scores every weight of the sparsified leaves once (SynFlow: in rounds) and
keeps the best, with the layout's exact counts, one threshold over all layers (``scope="global"``,
the papers' protocol) or each layer's count (``scope="layer"``). The masks are those an
algorithm's ``init_masks`` returns, so training starts from them with
``sparsify(inner, algorithm, key=..., masks=masks)``. Global selection decides each layer's count,
and may empty a layer: :func:`layer_collapse` names such layers and :func:`fit_layout` gives the
layout whose counts are the masks', which the algorithm must be built with.

Example:
  >>> import jax, jax.numpy as jnp, optax, jaxsparse as jsp
  >>> from jaxsparse.pruning_at_init import fit_layout, layer_collapse, prune_at_init
  >>> params = {"a": jnp.array([[3.0, -1.0], [0.5, 2.0]]), "b": jnp.full((2, 2), 1e-3)}
  >>> layout = jsp.SparsityLayout(0.5, "uniform")
  >>> masks = prune_at_init("magnitude", params, layout, key=jax.random.key(0))
  >>> layer_collapse(params, masks)
  ['b']
  >>> algo = jsp.algorithms.Static(layout=fit_layout(layout, params, masks))
  >>> state = jsp.sparsify(optax.sgd(0.1), algo, key=jax.random.key(1), masks=masks).init(params)

References:
  Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019.
  Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR 2020.
  Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by iteratively
  conserving synaptic flow", NeurIPS 2020.
"""

from jaxsparse.pruning_at_init._collapse import layer_collapse
from jaxsparse.pruning_at_init._fit import fit_layout
from jaxsparse.pruning_at_init._prune import CRITERIA, prune_at_init

__all__ = [
    "CRITERIA",
    "fit_layout",
    "layer_collapse",
    "prune_at_init",
]
