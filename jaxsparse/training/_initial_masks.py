"""``jaxsparse train --init CRITERION``: the run's initial masks scored at initialisation.

Pruning at initialisation (:mod:`jaxsparse.pruning_at_init`) scores the freshly initialised
model and keeps the best weights at the run's sparsity; the method then trains from those masks
(``static`` is the papers' protocol: the masks never change). The scores use:

* **SNIP** the gradient of the training loss on the run's first training batch (the batch step 0
  trains on), as Lee et al. (2019) score one mini-batch;
* **GraSP** the same batch, with the logits divided by the temperature ``T = 200`` of Wang et al.'s
  code;
* **SynFlow** no data: the network in inference mode on an all-ones input;
* **random** and **magnitude** no data.

With ``--init-scope global`` (the papers' protocol) one threshold over all layers decides each
layer's count, so the method is rebuilt on a layout with exactly those per-layer counts
(:func:`~jaxsparse.pruning_at_init.fit_layout`); a dynamic method then keeps them, as it keeps its
distribution's. Everything is a pure function of the config, so a resumed run recomputes the same
masks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxsparse as jsp
from jaxsparse.data import Dataset
from jaxsparse.masks import Masks, Params
from jaxsparse.pruning_at_init import fit_layout, layer_collapse, prune_at_init
from jaxsparse.training._config import Config, ConfigError

__all__ = ["GRASP_TEMPERATURE", "InitialMasks", "initial_masks"]

GRASP_TEMPERATURE = 200.0
"""The temperature GraSP's code divides the logits by when scoring (Wang et al. 2020)."""


@dataclasses.dataclass(frozen=True)
class InitialMasks:
    """What ``--init`` chose: the algorithm fitted to the masks, the masks, and the layers left empty."""

    algorithm: jsp.SparseAlgorithm
    masks: Masks
    collapsed: list[str]

    def report(self, config: Config) -> dict[str, Any]:
        """The ``init`` entry of ``summary.json``."""
        return {
            "criterion": config.init,
            "scope": config.init_scope,
            "layer_collapse": len(self.collapsed),
            "collapsed_layers": self.collapsed,
        }


def initial_masks(
    config: Config,
    algorithm: jsp.SparseAlgorithm,
    model: nn.Module,
    dataset: Dataset,
    variables: dict[str, Any],
    batch: dict[str, Any],
    key: jax.Array,
) -> InitialMasks:
    """Scores ``variables["params"]`` by ``config.init`` and fits ``algorithm`` to the masks.

    Raises:
      ConfigError: the criterion refuses these settings (e.g. global scope under N:M); the message
        is the criterion's, with the flag that fixes it.
    """
    params: Params = variables["params"]
    model_state = {name: value for name, value in variables.items() if name != "params"}
    temperature = GRASP_TEMPERATURE if config.init == "grasp" else 1.0

    def apply_fn(p, inputs):
        return model.apply({"params": p, **model_state}, inputs, train=False)

    def loss_fn(p, b):
        logits = apply_fn(p, b["inputs"]) / temperature
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["labels"]).mean()

    try:
        masks = prune_at_init(
            config.init,
            params,
            algorithm.layout,
            key=key,
            loss_fn=loss_fn,
            batches=[jax.tree.map(jnp.asarray, batch)],
            apply_fn=apply_fn,
            inputs=jnp.zeros((1, *dataset.input_shape), jnp.float32),
            scope=config.init_scope,
            rounds=config.init_rounds,
        )
    except (ValueError, FloatingPointError) as error:  # SynFlow out of float32's range says so
        raise ConfigError(f"--init {config.init} (--init-scope {config.init_scope}): {error}") from None
    fitted = dataclasses.replace(algorithm, layout=fit_layout(algorithm.layout, params, masks))
    return InitialMasks(fitted, masks, layer_collapse(params, masks))
