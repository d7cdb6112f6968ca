"""From a :class:`Config` to the objects a run trains with: the algorithm and the optimizer."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxsparse as jsp
from jaxsparse.algorithms import ModelSpec, lookup
from jaxsparse.masks import default_filter, leaf_name
from jaxsparse.training._config import Config, ConfigError

__all__ = ["make_algorithm", "make_optimizer", "model_spec"]


def model_spec(model: nn.Module, input_shape: tuple[int, ...]) -> ModelSpec:
    """The harness's model as a method may trace it: ``apply(params, x)`` in evaluation mode, on shapes only.

    The collections other than ``params`` (batch statistics) are bound as zeros: a trace reads
    their shapes, not their values.
    """
    inputs = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), inputs)
    others = {name: tree for name, tree in variables.items() if name != "params"}

    def apply_fn(params, x):
        state = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), others)
        return model.apply({"params": params, **state}, x, train=False)

    return ModelSpec(apply_fn, variables["params"], inputs)


def make_algorithm(config: Config, model: ModelSpec | None = None) -> jsp.SparseAlgorithm | None:
    """The registered algorithm of ``config.method``, built from its settings, or ``None`` for dense training.

    Dense training uses the plain inner optimizer rather than ``sparsify`` at sparsity 0: the
    baseline then measures exactly what an ordinary optax training loop does, with none of the
    wrapper's per-step masking, so a sparse-vs-dense gap is the algorithm's and nothing else's.

    Every dynamic method updates masks on the grid ``begin_step, begin_step + update_every, ...``
    up to :attr:`Config.mask_end_step` (75% of training unless set, as in RigL).

    Args:
      config: the run's settings.
      model: the model to be trained (:func:`model_spec`), for methods that trace it.

    Raises:
      ConfigError: the method refuses these settings (e.g. ``srigl`` at a structure other than
        ``fan_in``); the message is the method's.

    Example:
      >>> make_algorithm(Config(method="rigl", steps=1000)).schedule.end_step
      750
    """
    if config.method == "dense":
        return None
    try:
        # The schedule make_optimizer steps with, for methods whose proximal step scales with it.
        settings = config.settings()._replace(learning_rate=learning_rate_schedule(config), model=model)
        return lookup(config.method).build(settings)
    except ValueError as error:
        raise ConfigError(f"--method {config.method} with structure={config.structure!r}: {error}") from None


def learning_rate_schedule(config: Config) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` over ``warmup_steps``, then constant or cosine decay to 0.

    Example:
      >>> schedule = learning_rate_schedule(Config(learning_rate=1.0, steps=100, warmup_steps=10))
      >>> float(schedule(10)), float(schedule(100))
      (1.0, 0.0)
    """
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, config.steps)
    if config.warmup_steps == 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
            optax.constant_schedule(config.learning_rate),
        ],
        [config.warmup_steps],
    )


def _is_kernel(params: optax.Params) -> optax.Params:
    """Weight decay applies to kernels only (the default sparsity filter's choice), not to biases or norm scales."""
    return jax.tree_util.tree_map_with_path(lambda path, p: default_filter(leaf_name(path), p), params)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """The inner optax optimizer: optional global-norm clipping, then sgd (momentum) / adam / adamw.

    ``adamw`` decays weights decoupled from the gradient statistics (Loshchilov & Hutter 2019);
    ``sgd`` and ``adam`` add ``weight_decay * theta`` to the gradient first (L2 regularisation).

    Example:
      >>> import jax.numpy as jnp
      >>> tx = make_optimizer(Config(optimizer="sgd", steps=10))
      >>> state = tx.init({"w": jnp.ones((2, 2))})
    """
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        core = optax.adamw(schedule, weight_decay=config.weight_decay, mask=_is_kernel)
    else:
        step = optax.sgd(schedule, momentum=config.momentum) if config.optimizer == "sgd" else optax.adam(schedule)
        core = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=_is_kernel), step)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), core)
    return core
