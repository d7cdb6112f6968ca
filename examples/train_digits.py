"""Sparse training of a small MLP on scikit-learn's digits (8x8 images, 10 classes, no download).

The project's end-to-end job: a 64-256-256-10 ReLU MLP written in plain JAX, trained with
``optax.chain(clip_by_global_norm(1.0), adamw(lr))`` wrapped by :func:`jaxsparse.sparsify`.

Run from the repository root::

    python examples/train_digits.py                                  # RigL, 90% sparse, ERK
    python examples/train_digits.py --method dense                   # the dense baseline
    python examples/train_digits.py --method set --sparsity 0.95 --distribution uniform

Other code (e.g. ``tests/test_end_to_end.py``) imports :func:`train` from this file.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import jaxsparse as jsp

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is optional (``pip install jaxsparse[train]``)
    tqdm = None

METHODS = ("dense", "static", "set", "rigl", "top_kast", "gradual_magnitude")
SPLIT_SEED = 0  # the train/test split never depends on the training seed
TEST_SIZE = 0.25
HIDDEN = (256, 256)

DEFAULTS = dict(
    method="rigl",
    sparsity=0.9,
    distribution="erk",
    steps=2000,
    batch_size=128,
    seed=0,
    lr=1e-3,
    weight_decay=1e-4,
    update_every=50,
)


def load_data(split_seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits, split 75/25 stratified with a fixed seed; features standardized on the train split."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=split_seed)
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train).astype(np.float32)
    x_test = scaler.transform(x_test).astype(np.float32)
    return x_train, y_train, x_test, y_test


def init_mlp(rng: np.random.Generator, sizes: tuple[int, ...]) -> dict:
    """He-normal kernels and zero biases, named ``Dense_i/{kernel,bias}`` like flax.linen.

    Drawn with NumPy: on CPU this saves the seconds XLA would spend compiling a random initializer.
    """
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        kernel = rng.normal(0.0, np.sqrt(2.0 / n_in), (n_in, n_out)).astype(np.float32)
        params[f"Dense_{i}"] = {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(n_out, jnp.float32)}
    return params


def mlp(params: dict, x: jax.Array) -> jax.Array:
    n = len(params)
    for i in range(n):
        layer = params[f"Dense_{i}"]
        x = x @ layer["kernel"] + layer["bias"][None, :]  # explicit broadcast: rank-promotion safe
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()


def make_algorithm(
    method: str, sparsity: float, distribution: str, steps: int, update_every: int
) -> jsp.SparseAlgorithm | None:
    """The jaxsparse algorithm for ``method`` (``None`` for dense); mask updates stop at 75% of training."""
    end_step = int(0.75 * steps)
    if method == "dense":
        return None
    if method == "static":
        return jsp.static(sparsity, distribution=distribution)
    if method in ("set", "rigl"):
        factory = jsp.set_ if method == "set" else jsp.rigl
        return factory(sparsity, distribution=distribution, update_every=update_every, end_step=end_step)
    if method == "top_kast":
        # Backward set twice as dense as the forward set (the paper's 90% forward / 80% backward).
        return jsp.top_kast(sparsity, max(0.0, 2 * sparsity - 1), distribution=distribution)
    if method == "gradual_magnitude":
        return jsp.gradual_magnitude(
            sparsity, distribution=distribution, begin_step=steps // 10, end_step=end_step, update_every=update_every
        )
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")


def train(
    method: str = DEFAULTS["method"],
    sparsity: float = DEFAULTS["sparsity"],
    seed: int = DEFAULTS["seed"],
    steps: int = DEFAULTS["steps"],
    *,
    distribution: str = DEFAULTS["distribution"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    update_every: int = DEFAULTS["update_every"],
    verbose: bool = False,
    log_every: int = 200,
) -> dict:
    """Trains the MLP on digits and returns its test accuracy.

    Returns:
      A dict with ``accuracy`` (test), ``train_accuracy``, ``params`` (for sparse methods exactly
      zero off the mask, except Top-KAST, which stores weights densely), ``state`` (the optimizer
      state; a :class:`jaxsparse.SparsifyState` unless ``method == "dense"``), ``algorithm``,
      ``initial_masks`` (forward masks after ``tx.init``; ``None`` for dense) and ``seconds``.
    """
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = load_data()
    x_train_d, y_train_d = jnp.asarray(x_train), jnp.asarray(y_train)
    x_test_d, y_test_d = jnp.asarray(x_test), jnp.asarray(y_test)

    init_rng, batch_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    params = init_mlp(init_rng, (x_train.shape[1], *HIDDEN, 10))
    inner = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr, weight_decay=weight_decay))
    algorithm = make_algorithm(method, sparsity, distribution, steps, update_every)
    sparse = algorithm is not None

    if sparse:
        tx = jsp.sparsify(inner, algorithm, key=jax.random.key(seed))
        state = jax.jit(tx.init)(params)  # one compilation instead of many eager ops
        params = jsp.apply_masks(params, jsp.masks_of(state))
        initial_masks = jsp.masks_of(state)
    else:
        tx = inner
        state = jax.jit(tx.init)(params)
        initial_masks = None

    def model_params(params, state):
        return jsp.forward_params(params, state) if sparse else params

    @jax.jit
    def train_step(params, state, idx):
        x, y = x_train_d[idx], y_train_d[idx]
        loss, grads = jax.value_and_grad(loss_fn)(model_params(params, state), x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    @jax.jit
    def accuracy(params, state, x, y):
        return jnp.mean(jnp.argmax(mlp(model_params(params, state), x), axis=-1) == y)

    # Batch order: a fresh permutation of the training set every epoch, from the training seed.
    per_epoch = len(x_train) // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([batch_rng.permutation(len(x_train))[: per_epoch * batch_size] for _ in range(epochs)])
    batches = order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)

    progress = tqdm(range(steps), desc=method, disable=not verbose) if tqdm is not None else range(steps)
    for step in progress:
        params, state, loss = train_step(params, state, batches[step])
        if verbose and (step + 1) % log_every == 0:
            if tqdm is not None:
                progress.set_postfix(loss=f"{float(loss):.4f}")
            else:
                print(f"step {step + 1:5d}/{steps}  loss {float(loss):.4f}", flush=True)

    return dict(
        accuracy=float(accuracy(params, state, x_test_d, y_test_d)),
        train_accuracy=float(accuracy(params, state, x_train_d, y_train_d)),
        params=params,
        state=state,
        algorithm=algorithm,
        initial_masks=initial_masks,
        seconds=time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default=DEFAULTS["method"])
    parser.add_argument("--sparsity", type=float, default=DEFAULTS["sparsity"])
    parser.add_argument("--distribution", choices=jsp.distributions.DISTRIBUTIONS, default=DEFAULTS["distribution"])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    parser.add_argument("--update-every", type=int, default=DEFAULTS["update_every"])
    args = parser.parse_args(argv)

    result = train(
        args.method,
        args.sparsity,
        args.seed,
        args.steps,
        distribution=args.distribution,
        batch_size=args.batch_size,
        lr=args.lr,
        update_every=args.update_every,
        verbose=True,
    )
    setting = "" if args.method == "dense" else f" sparsity={args.sparsity} distribution={args.distribution}"
    print(f"method={args.method}{setting} seed={args.seed} steps={args.steps}")
    print(f"train accuracy {result['train_accuracy']:.4f}")
    print(f"test accuracy  {result['accuracy']:.4f}  ({result['seconds']:.1f} s)")
    if args.method == "dense":
        count = sum(leaf.size for leaf in jax.tree.leaves(result["params"]))
        print(f"dense model: {count} parameters")
    else:
        print(jsp.summary(result["params"], result["state"]))


if __name__ == "__main__":
    main()
