"""The models and training setups the speed benchmarks time: one definition, shared by every script.

Three workloads of the issue's table, each trained with ``optax.sgd(0.1, momentum=0.9)``, dense or
wrapped by ``jsp.sparsify`` around one of the unstructured methods at 90% sparsity (ERK), with masks
updated every 100 steps:

* MLP 784-1024-1024-10, batch 128 (the classic sparse-training MLP; random inputs);
* ResNet-20 on 32x32x3 inputs, batch 128 (He et al. 2016's CIFAR ResNet, with batch norm);
* a Transformer block stack: ``vit`` with one-token patches on 64 tokens of width 256, 4 pre-norm
  encoder blocks (4 heads, MLP width 1024), batch 32.

The structure variants (:data:`STRUCTURE_VARIANTS`) time RigL at each mask structure, SR-STE and
SRigL on the MLP, all at 50% uniform sparsity (what 2:4 fixes) over the two hidden kernels (the
10-wide classifier kept dense, as 4x4 blocks do not divide it).

Every step is :func:`jaxsparse.training.make_train_step`, the step ``jaxsparse train`` runs
(jitted, params and optimizer state donated), so a benchmark times what users run.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

import jaxsparse as jsp
from jaxsparse.algorithms import lookup, registered
from jaxsparse.masks import parse_structure
from jaxsparse.models import create_model
from jaxsparse.training import make_train_step

__all__ = [
    "FULL_WORKLOADS",
    "METHODS",
    "QUICK_WORKLOADS",
    "SPARSITY",
    "STRUCTURE_SETTINGS",
    "STRUCTURE_VARIANTS",
    "UPDATE_EVERY",
    "Trainer",
    "Workload",
    "END_STEP",
    "build_trainer",
    "make_algorithm",
    "setup",
]

METHODS = tuple(method.name for method in registered() if method.default_structure in (None, "unstructured"))
"""Every registered algorithm whose masks are unstructured by default (``jaxsparse.algorithms.registered``).

The others (N:M STE, whose 2:4 fixes the sparsity at 50%, and SRigL) are timed among the
:data:`STRUCTURE_VARIANTS`.
"""
SPARSITY = 0.9
UPDATE_EVERY = 100
# Mask updates stay live for the whole benchmark (it only ever runs a few thousand steps).
END_STEP = 10**6
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, its input and batch size, and how many interleaved rounds to time it for."""

    label: str
    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    options: dict[str, Any]
    rounds: int


FULL_WORKLOADS = (
    Workload("MLP 784-1024-1024-10", "mlp", (784,), 128, {"hidden_sizes": (1024, 1024)}, rounds=40),
    Workload("ResNet-20 32x32", "resnet20", (32, 32, 3), 128, {}, rounds=8),
    Workload(
        "Transformer 4x256",
        "vit",
        (64, 256),
        32,
        {"patch_size": 1, "dim": 256, "depth": 4, "num_heads": 4, "mlp_dim": 1024},
        rounds=15,
    ),
)
QUICK_WORKLOADS = (Workload("MLP 32-64-64-10", "mlp", (32,), 8, {"hidden_sizes": (64, 64)}, rounds=2),)
STRUCTURE_SETTINGS: dict[str, Any] = {"sparsity": 0.5, "distribution": "uniform", "keep_dense": ("Dense_2",)}
"""The layout every structure variant shares, so that only the structure differs."""
STRUCTURE_VARIANTS: dict[str, tuple[str, str]] = {
    "rigl unstructured": ("rigl", "unstructured"),
    "rigl 2:4": ("rigl", "2:4"),
    "rigl block:4x4": ("rigl", "block:4x4"),
    "rigl channel": ("rigl", "channel"),
    "rigl fan_in": ("rigl", "fan_in"),
    "nm_sr_ste 2:4": ("nm_sr_ste", "2:4"),
    "srigl fan_in": ("srigl", "fan_in"),
}
"""Label: (method, structure name); the first is the baseline the others are divided by."""


def make_algorithm(
    method: str,
    structure: str | None = None,
    *,
    sparsity: float = SPARSITY,
    distribution: str = "erk",
    keep_dense: tuple[str, ...] = (),
) -> jsp.SparseAlgorithm:
    """``method`` at 90% sparsity (ERK), updating masks every 100 steps, its options at their defaults.

    Built from the registry, so a newly registered algorithm is benchmarked too (Top-KAST's default
    backward set is 80% sparse). ``structure`` is a :func:`jaxsparse.masks.parse_structure` name
    (``None``: the method's own); the keywords change the layout.
    """
    return lookup(method).make(
        sparsity,
        distribution=distribution,
        keep_dense=keep_dense,
        structure=None if structure is None else parse_structure(structure),
        update_every=UPDATE_EVERY,
        end_step=END_STEP,
    )


@dataclasses.dataclass
class Trainer:
    """A compiled train step and the state it advances (its buffers are donated on every call)."""

    step_fn: Any
    params: Any
    model_state: Any
    opt_state: Any
    batch: dict[str, jax.Array]

    def step(self, at: int | None = None) -> tuple[Any, ...]:
        """Runs one step and keeps its outputs; ``at`` first sets a sparse state's step counter.

        Setting the counter to a multiple of ``UPDATE_EVERY`` selects the mask-update branch of the
        same compiled function; any other value selects the normal branch.
        """
        if at is not None:
            self.opt_state = self.opt_state._replace(step=jnp.asarray(at, jnp.int32))
        self.params, self.model_state, self.opt_state, loss = self.step_fn(
            self.params, self.model_state, self.opt_state, self.batch
        )
        return self.params, self.model_state, self.opt_state, loss


def setup(workload: Workload, seed: int, models: Any = None) -> tuple[Any, Any, Any, dict[str, jax.Array], jax.Array]:
    """``(model, params, model_state, batch, mask_key)`` of ``workload``: initialised parameters and a random batch.

    ``models`` is the ``jaxsparse.models`` module to build with (another version's, to compare versions).
    """
    create = create_model if models is None else models.create_model
    model = create(workload.model, num_classes=NUM_CLASSES, input_shape=workload.input_shape, **workload.options)
    init_key, input_key, label_key, mask_key = jax.random.split(jax.random.key(seed), 4)
    init = jax.jit(functools.partial(model.init, train=False))  # one program, not one per op
    variables = dict(init(init_key, jnp.zeros((1, *workload.input_shape))))
    params = variables.pop("params")
    batch = {
        "inputs": jax.random.normal(input_key, (workload.batch_size, *workload.input_shape)),
        "labels": jax.random.randint(label_key, (workload.batch_size,), 0, NUM_CLASSES),
    }
    return model, params, variables, batch, mask_key


def build_trainer(workload: Workload, method: str, seed: int = 0, **algorithm: Any) -> Trainer:
    """The trainer of ``workload`` with ``method`` (``"dense"`` or one of :data:`METHODS`) on a random batch.

    ``algorithm`` is passed to :func:`make_algorithm` (a structure, a layout).
    """
    model, params, variables, batch, mask_key = setup(workload, seed)
    inner = optax.sgd(0.1, momentum=0.9)
    sparse = method != "dense"
    tx = jsp.sparsify(inner, make_algorithm(method, **algorithm), key=mask_key) if sparse else inner
    opt_state = jax.jit(tx.init)(params)
    if sparse and not opt_state.algorithm.stores_dense:  # Top-KAST keeps its weights dense
        params = jsp.apply_masks(params, jsp.masks_of(opt_state))
    return Trainer(make_train_step(model, tx, sparse), params, variables, opt_state, batch)
