"""A fixed 300-step run of every built-in algorithm, for comparing two versions of the library.

``python -m tests.port_reference OUT.npz`` writes the final masks and parameters of each run. The
file ``tests/data/port_reference.npz`` was written by the commit before the core-v2 port
(58c9684); ``tests/test_port.py`` reruns the same script on the current code and compares.
It uses only the public API that both versions share.
"""

import sys

import jax
import numpy as np
import optax

import jaxsparse as jsp
from tests.helpers import make_batch, make_mlp, make_train_step

STEPS = 300
SIZES = (16, 48, 32, 4)


def algorithms() -> dict:
    """Every built-in algorithm, with short update intervals so that 300 steps hold many updates."""
    return {
        "static": jsp.static(0.8),
        "set": jsp.set_(0.8, update_every=10, end_step=250),
        "rigl": jsp.rigl(0.8, update_every=10, end_step=250),
        "rigl_uniform": jsp.rigl(0.9, distribution="uniform", update_every=7, end_step=280, dense_first_layer=True),
        "top_kast": jsp.top_kast(0.8, 0.6, update_every=5),
        "gradual_magnitude": jsp.gradual_magnitude(0.9, end_step=200, update_every=20),
        "gradual_magnitude_global": jsp.gradual_magnitude(0.85, end_step=150, update_every=10, scope="global"),
    }


def run(algorithm) -> dict[str, np.ndarray]:
    """Masks and params after ``STEPS`` steps of sgd-momentum with weight decay, as flat arrays."""
    params = make_mlp(jax.random.key(0), SIZES)
    tx = jsp.sparsify(
        optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.05, momentum=0.9)), algorithm, key=jax.random.key(1)
    )
    state = tx.init(params)
    if algorithm.name != "top_kast":  # Top-KAST stores its weights densely
        params = jsp.apply_masks(params, jsp.masks_of(state))
    step = jax.jit(make_train_step(tx))
    for t in range(STEPS):
        params, state = step(params, state, make_batch(jax.random.key(100 + t), 32, SIZES[0], SIZES[-1]))
    out = {}
    for (path, param), mask in zip(
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree.leaves(jsp.masks_of(state), is_leaf=lambda x: x is None),
        strict=True,
    ):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        out[f"param:{name}"] = np.asarray(param)
        if mask is not None:
            out[f"mask:{name}"] = np.asarray(mask)
    return out


def main(path: str) -> None:
    arrays = {}
    for name, algorithm in algorithms().items():
        arrays.update({f"{name}|{key}": value for key, value in run(algorithm).items()})
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
