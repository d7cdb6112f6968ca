"""Small models and data shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsparse as jsp


def make_mlp(key: jax.Array, sizes: tuple[int, ...], dtype=jnp.float32) -> dict:
    """A dict MLP ``{"layer_i": {"kernel", "bias"}}`` with LeCun-normal kernels."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"layer_{i}"] = {
            "kernel": (jax.random.normal(sub, (n_in, n_out)) / jnp.sqrt(n_in)).astype(dtype),
            "bias": jnp.zeros((n_out,), dtype),
        }
    return params


def mlp_loss(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    n_layers = len(params)
    for i in range(n_layers):
        x = x @ params[f"layer_{i}"]["kernel"] + params[f"layer_{i}"]["bias"][None, :]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
    return optax.softmax_cross_entropy_with_integer_labels(x.astype(jnp.float32), y).mean()


def make_batch(key: jax.Array, n: int, n_in: int, n_classes: int) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, n_in)), jax.random.randint(ky, (n,), 0, n_classes)


def make_train_step(tx: optax.GradientTransformationExtraArgs):
    """The documented sparse train step for :func:`mlp_loss` (not jitted: wrap it as the test needs)."""

    def step(params, state, batch):
        grads = jax.grad(mlp_loss)(jsp.forward_params(params, state), batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def registered_algorithms(sparsity: float = 0.8, **settings) -> dict:
    """Every registered algorithm (built-ins and the worked example), built from the same small settings.

    Defaults: ERK, masks updated every 2 steps from step 0 to step 100; GaP with 2 partitions
    (the test MLPs have 3 kernels) of 2 steps each, for 2 rounds; IMP's rounds of 2 steps.
    """
    shared = dict(update_every=2, begin_step=0, end_step=100, steps=2)
    shared.update(settings)
    return {method.name: _make(method, sparsity, shared) for method in jsp.algorithms.registered()}


def _make(method: jsp.algorithms.Method, sparsity: float, shared: dict) -> jsp.SparseAlgorithm:
    """``method`` at ``sparsity``, or at the sparsity its default structure fixes (N:M)."""
    default = method.default_structure
    fixed = None if default is None else jsp.masks.fixed_sparsity(jsp.masks.parse_structure(default))
    return method.make(sparsity if fixed is None else None, options=SMALL_OPTIONS, **shared)


SMALL_OPTIONS = {"gap_partitions": 2, "gap_steps_per_phase": 2, "gap_rounds": 2}
"""Method options that fit the small test models (each method reads only its own)."""


def leaf_bytes(tree) -> list[bytes]:
    """Every leaf's raw bytes (typed PRNG keys as their key data), for bit-for-bit comparisons."""

    def raw(leaf):
        is_key = jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(leaf) if is_key else leaf).tobytes()

    return [raw(leaf) for leaf in jax.tree.leaves(tree)]


def without_wall_time(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall times, which no two runs share."""
    return [{key: value for key, value in row.items() if key != "wall_time"} for row in rows]


def killed_and_resumed(run: dict, tmp_path, monkeypatch, kill_at: int):
    """``train(Config(**run))`` uninterrupted, and killed when asking for batch ``kill_at`` then resumed.

    Returns:
      ``(reference, resumed)``, the two :class:`~jaxsparse.training.TrainResult`.
    """
    import pytest

    import jaxsparse.training._loop as loop
    from jaxsparse.training import Config, train

    reference = train(Config(**run, out_dir=str(tmp_path / "reference")), progress=False)
    real = loop.train_batches

    class Killed(Exception):
        """The simulated kill: raised when the loop asks for the batch of step ``kill_at``."""

    class Dying:
        def __init__(self, batches):
            self.batches = batches

        def __getitem__(self, step):
            if step == kill_at:
                raise Killed
            return self.batches[step]

    monkeypatch.setattr(loop, "train_batches", lambda *a, **k: Dying(real(*a, **k)))
    with pytest.raises(Killed):
        train(Config(**run, out_dir=str(tmp_path / "resumed")), progress=False)
    monkeypatch.setattr(loop, "train_batches", real)
    resumed = train(Config(**run, out_dir=str(tmp_path / "resumed")), resume=True, progress=False)
    return reference, resumed
