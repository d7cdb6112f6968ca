"""One-shot pruning of trained models on MNIST-1D: six criteria, before and after a short fine-tune.

Each dense model is trained to convergence, pruned once by each criterion of
:data:`jaxsparse.one_shot.CRITERIA` (magnitude, Taylor, OBD, WoodFisher, SparseGPT, Wanda, with
:func:`jaxsparse.one_shot.prune_one_shot`), evaluated, then fine-tuned for a few hundred steps on its
fixed masks (``jaxsparse.algorithms.Static`` with ``masks=result.masks``) and evaluated again.

* **data**: MNIST-1D (``jaxsparse.data.load_dataset("mnist1d")``: 4,000 train / 1,000 test);
* **models**: ``mlp`` (40-256-256-10), ``lenet5`` (1-D convolutions 6/16, dense 120/84/10) and
  ``vit`` (20 patches of 2, width 64, 2 blocks, 4 heads), from ``jaxsparse.models.create_model``;
* **dense training**: the sweep's MNIST-1D setting for every model (:data:`DENSE_STEPS` = 3000
  steps, batch 128, the harness's AdamW at 3e-3 with cosine decay, weight decay 1e-4, clipping at
  1), 3 seeds. Every model fits its training set (loss about 1e-3). The trained parameters are cached per
  (model, seed) next to the output (``<out>_dense/``), so a rerun prunes without retraining;
* **layers**: every kernel but the first and the last (they stay dense for every criterion, as
  SparseGPT and Wanda keep an LLM's embeddings and head dense, and as Gale et al. 2019 keep the first
  layer): the MLP's middle kernel (65,536 of its 78,336 kernel weights); LeNet-5's second
  convolution and first two dense kernels; the ViT's 12 attention and MLP kernels (the patch
  projection, the position embedding, an embedding that SparseGPT and Wanda refuse, and the head
  stay dense). The layer-wise ``uniform`` distribution gives each sparsified kernel the target
  sparsity, and every criterion prunes each layer to exactly that count (``scope="layer"``);
* **sparsities**: 50/60/70/80/90% unstructured, and 2:4 (exactly 2 of every 4 consecutive inputs,
  on every criterion: the four gradient criteria through the structure's group selection, SparseGPT
  and Wanda natively). At 2:4 LeNet-5's second convolution also stays dense (its 5 x 6 inputs
  leave no group of 4), and the ViT's query/key/value kernels ``(64, heads, head_dim)`` group along
  their input axis (``NM(2, 4, axis=0)``);
* **calibration**: :data:`CALIBRATIONS` = 128 and 1024 training examples (the 128 the first of the
  1024), drawn per seed, in batches of 128. Magnitude reads no data: it is run once per cell and
  listed under both sizes. Taylor, OBD and WoodFisher use per-example gradients of the mean
  cross-entropy (WoodFisher: block-diagonal inverse Fisher, blocks of 128, damping 1e-5, then OBS
  compensation of the kept weights); SparseGPT (lazy blocks of 128, damping 1% of the mean Hessian
  diagonal) and Wanda run layer by layer on the inputs of the partly pruned model (the papers'
  sequential protocol);
* **fine-tune**: :data:`FINETUNE_STEPS` = 300 steps of the same AdamW at a tenth of the learning
  rate (3e-4, cosine decay to 0), batch 128, the same batches for every criterion of a seed; the
  parameters stay exactly zero off the masks (checked per run). Every cell is fine-tuned, at both
  calibration sizes.

The grid: 3 models x 3 seeds x 6 sparsities x (1 magnitude + 5 criteria x 2 calibration sizes),
594 prunings and fine-tunes. Rows go to ``<out>.csv`` as each (model, seed) finishes its prunings,
one row per pruning, and a rerun skips the rows already there.

The claims checked (:func:`orderings`), on every model at each calibration size, without
fine-tuning: (a) SparseGPT >= Wanda >= magnitude at 50% and 60% (Frantar & Alistarh 2023; Sun et
al. 2024, on LLMs; 2:4 reported beside them), and (b) WoodFisher >= OBD >= magnitude one-shot at
every unstructured sparsity (Singh & Alistarh 2020, whose magnitude baseline is also layer-wise).
Every criterion prunes the same dense network of a seed with the same calibration set, so each
margin's standard error is that of the mean of the per-seed differences (``paired``); the
unpaired standard error of the house's other studies is recorded beside it. A claim counts as
holding where the margin is positive, as significant beyond 2 standard errors (with 3 seeds, a
weak bar: the 95% t-quantile at 2 degrees of freedom is 4.3).

Tables give mean ± standard error over seeds (``std / sqrt(n)``), in %.

Rerun from the repository root::

    python -m benchmarks.accuracy.one_shot             # 594 prunings: ~22 min on 2 cores
    python -m benchmarks.accuracy.one_shot --quick     # a 32-wide MLP, 3 criteria at 50%: seconds (CI)

References:
  Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023.
  Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024.
  Singh & Alistarh, "WoodFisher: Efficient Second-Order Approximation for Neural Network Compression",
  NeurIPS 2020.
  Gale, Elsen, Hooker, "The State of Sparsity in Deep Neural Networks", arXiv:1902.09574, 2019.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import jaxsparse as jsp
from benchmarks.common import COMPILATION_CACHE, RESULTS, append_csv_rows, argument_parser, output_path, write_results
from jaxsparse.data import generate_mnist1d
from jaxsparse.masks import NM, SparsityLayout
from jaxsparse.one_shot import CRITERIA, prune_one_shot
from jaxsparse.training import Config, compilation_cache, git_commit, make_optimizer

DATASET = "mnist1d"
MODELS = ("mlp", "lenet5", "vit")
SEEDS = 3
DENSE_STEPS = 3000
LEARNING_RATE = 3e-3
BATCH_SIZE = 128
FINETUNE_STEPS = 300
FINETUNE_LEARNING_RATE = 3e-4
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9)
NM_LABEL = "2:4"
LEVELS = (*(f"{s:g}" for s in SPARSITIES), NM_LABEL)
"""The columns of every table: the unstructured sparsities, then 2:4."""
CALIBRATIONS = (128, 1024)
CALIBRATION_BATCH = 128
CALIBRATION_SEED = 43
"""The seed of the fresh calibration signals (the package's own data set is generated with 42)."""
CALIBRATION_POOL = 5000
FINETUNED_CALIBRATIONS = {"vit": (1024,)}
"""Calibration sizes whose prunings are fine-tuned (every size elsewhere): the ViT's fine-tunes take most of the
budget, so its 128-example prunings are reported one-shot only. Magnitude is always fine-tuned."""
KEEP_DENSE = {
    "mlp": ("^Dense_0/", "^Dense_2/"),
    "lenet5": ("^Conv_0/", "^Dense_2/"),
    "vit": ("^embedding/patches/", "pos_embedding", "^output/"),
}
"""Each model's first and last kernel (and the ViT's position embedding): dense for every criterion."""
NM_KEEP_DENSE = {"lenet5": ("^Conv_1/",)}
"""Kernels no 2:4 group fits: LeNet-5's second convolution, 5 taps x 6 input channels."""
NM_STRUCTURE = {
    "vit": ((r"attention/(query|key|value)/", NM(2, 4, axis=0)), ("", NM(2, 4))),
}
"""Per-layer 2:4 where the input axis is not ``-2``: flax's q/k/v kernels are ``(features, heads, head_dim)``."""
ORDER = ("magnitude", "taylor", "obd", "woodfisher", "sparsegpt", "wanda")
CLAIMS = {
    "a": {
        "chain": ("sparsegpt", "wanda", "magnitude"),
        "levels": ("0.5", "0.6"),
        "extra_levels": (NM_LABEL,),
        "source": "Frantar & Alistarh 2023; Sun et al. 2024 (LLMs, no fine-tuning)",
    },
    "b": {
        "chain": ("woodfisher", "obd", "magnitude"),
        "levels": tuple(f"{s:g}" for s in SPARSITIES),
        "extra_levels": (NM_LABEL,),
        "source": "Singh & Alistarh 2020 (one-shot, no fine-tuning)",
    },
}
"""Each claim: a chain of criteria, each at least the next, at ``levels`` (``extra_levels``: reported, not claimed)."""
SIGNIFICANT_SE = 2.0
QUICK = {
    "models": ("mlp",),
    "model_options": {"mlp": {"hidden_sizes": (32, 32)}},
    "criteria": ("magnitude", "sparsegpt", "wanda"),
    "levels": ("0.5",),
    "calibrations": (64,),
    "seeds": 1,
    "dense_steps": 100,
    "finetune_steps": 20,
}
DATA_CACHE = RESULTS / "quick" / "data"
COLUMNS = (
    "dataset",
    "model",
    "seed",
    "criterion",
    "level",
    "sparsity",
    "calibration",
    "dense_accuracy",
    "accuracy",
    "test_loss",
    "finetuned_accuracy",
    "finetuned_test_loss",
    "measured_sparsity",
    "exact_counts",
    "zero_off_mask",
    "prune_time_s",
    "finetune_time_s",
    "dense_steps",
    "finetune_steps",
    "git_commit",
)
KEY = ("dataset", "model", "seed", "criterion", "level", "calibration", "dense_steps", "finetune_steps")


@dataclasses.dataclass(frozen=True)
class Setup:
    """A study's sizes: steps of the dense training and of the fine-tune, model options."""

    dense_steps: int = DENSE_STEPS
    finetune_steps: int = FINETUNE_STEPS
    model_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def options(self, model: str) -> dict[str, Any]:
        return dict(dict(self.model_options).get(model, ()))


def quick_setup() -> Setup:
    """The sizes of ``--quick``: :data:`QUICK`'s steps and model options."""
    options = tuple((model, tuple(values.items())) for model, values in QUICK["model_options"].items())
    return Setup(dense_steps=QUICK["dense_steps"], finetune_steps=QUICK["finetune_steps"], model_options=options)


def layout(model: str, level: str) -> SparsityLayout:
    """The layout of ``level`` (``"0.5"`` ... ``"0.9"`` or ``"2:4"``): uniform over the kernels of ``model``.

    Example:
      >>> [p is not None for p in layout("mlp", "0.5").plan({f"Dense_{i}": {"kernel": jnp.ones((4, 4))}
      ...                                                      for i in range(3)})]
      [False, True, False]
    """
    keep = KEEP_DENSE[model]
    if level != NM_LABEL:
        return SparsityLayout(float(level), "uniform", keep_dense=keep)
    return SparsityLayout(
        None,
        "uniform",
        keep_dense=keep + NM_KEEP_DENSE.get(model, ()),
        structure=NM_STRUCTURE.get(model, NM(2, 4)),
    )


class Study:
    """One model on one data set: data, dense training, evaluation, pruning and the masked fine-tune, jitted."""

    def __init__(self, model_name: str, setup: Setup):
        from jaxsparse.data import load_dataset
        from jaxsparse.models import create_model

        data = load_dataset(DATASET, data_dir=DATA_CACHE)
        self.name, self.setup = model_name, setup
        self.model = create_model(
            model_name, num_classes=data.num_classes, input_shape=data.input_shape, **setup.options(model_name)
        )
        self.x, self.y = jnp.asarray(data.train.inputs), jnp.asarray(data.train.labels)
        self.x_test, self.y_test = jnp.asarray(data.test.inputs), jnp.asarray(data.test.labels)
        self._dense = self._trainer(make_optimizer(Config(steps=setup.dense_steps, learning_rate=LEARNING_RATE)))
        self._dense_steps = setup.dense_steps

    def apply(self, params, x: jax.Array) -> jax.Array:
        return self.model.apply({"params": params}, x, train=False)

    def loss(self, params, batch) -> jax.Array:
        """The mean cross-entropy of a batch ``(x, y)``: ``loss_fn`` of the gradient criteria."""
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(self.apply(params, x), y).mean()

    def apply_fn(self, params, batch) -> jax.Array:
        """The logits of a batch ``(x, y)``: ``apply_fn`` of SparseGPT and Wanda."""
        return self.apply(params, batch[0])

    def init(self, key: jax.Array):
        return self.model.init(key, self.x[:1], train=False)["params"]

    @functools.partial(jax.jit, static_argnums=0)
    def evaluate(self, params) -> tuple[jax.Array, jax.Array]:
        """Test accuracy and mean test loss."""
        logits = self.apply(params, self.x_test)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, self.y_test).mean()
        return jnp.mean(jnp.argmax(logits, -1) == self.y_test), loss

    def _trainer(self, tx: optax.GradientTransformation, masked: bool = False):
        """``train(params, state, key, steps)``: ``steps`` steps of ``tx`` on batches drawn with ``key``."""

        def step(key, i, carry):
            params, state = carry
            index = jax.random.randint(jax.random.fold_in(key, i), (BATCH_SIZE,), 0, self.x.shape[0])
            at = jsp.forward_params(params, state) if masked else params
            grads = jax.grad(self.loss)(at, (self.x[index], self.y[index]))
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        @functools.partial(jax.jit, static_argnums=3)
        def train(params, state, key, steps):
            return jax.lax.fori_loop(0, steps, functools.partial(step, key), (params, state))

        return train, tx

    def train_dense(self, key: jax.Array):
        init_key, batch_key = jax.random.split(key)
        train, tx = self._dense
        params = self.init(init_key)
        params, _ = train(params, tx.init(params), batch_key, self._dense_steps)
        return jax.block_until_ready(params)

    @functools.cache  # noqa: B019 (one Study per model and process)
    def _finetuner(self, level: str):
        inner = make_optimizer(Config(steps=self.setup.finetune_steps, learning_rate=FINETUNE_LEARNING_RATE))
        algorithm = jsp.algorithms.Static(layout=layout(self.name, level))
        train, _ = self._trainer(jsp.sparsify(inner, algorithm, key=jax.random.key(0)), masked=True)
        return inner, algorithm, train

    def finetune(self, level: str, params, masks, key: jax.Array):
        """``finetune_steps`` of the fine-tune's AdamW on the fixed ``masks``; the masks come back unchanged."""
        inner, algorithm, train = self._finetuner(level)
        # The state's masks are the handed-in ones; update reads masks from the state only, so one
        # compiled loop per layout serves every criterion's masks.
        state = jsp.sparsify(inner, algorithm, key=key, masks=masks).init(params)
        params, state = train(params, state, key, self.setup.finetune_steps)
        return jax.block_until_ready(params), jsp.masks_of(state)

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def _squared_gradients(self, params, x, y, level: str) -> tuple[jax.Array, jax.Array]:
        chosen = [plan is not None for plan in layout(self.name, level).plan(params)]

        def one(xi, yi):
            return jax.grad(self.loss)(params, (xi[None], yi[None]))

        grads = jax.tree.leaves(jax.vmap(one)(x, y))
        squares = sum(jnp.sum(jnp.square(g)) for g, c in zip(grads, chosen, strict=True) if c)
        return squares, self.loss(params, (x, y)) * x.shape[0]

    def fisher_scale(self, params, x: jax.Array, y: jax.Array, level: str = "0.5") -> dict[str, float]:
        """The mean loss and the mean empirical Fisher diagonal ``(1/N) sum_n g_n^2`` over the sparsified kernels."""
        squares = total = 0.0
        for i in range(0, x.shape[0], CALIBRATION_BATCH):
            s, t = self._squared_gradients(params, x[i : i + CALIBRATION_BATCH], y[i : i + CALIBRATION_BATCH], level)
            squares, total = squares + float(s), total + float(t)
        weights = sum(math.prod(plan.shape) for plan in layout(self.name, level).plan(params) if plan)
        return {"mean_loss": total / x.shape[0], "fisher_diagonal_mean": squares / x.shape[0] / weights}


def calibration_evidence(directory: Path, setup: Setup, models: Sequence[str], seeds: int) -> list[dict[str, Any]]:
    """Why fresh calibration data: each cached dense model's loss and Fisher scale on its training set and on them.

    For every (model, seed) whose dense parameters are cached: the mean loss and the mean Fisher
    diagonal over the sparsified kernels (at the 50% layout) on the first :data:`CALIBRATIONS` ``[-1]``
    training examples and on the seed's calibration examples, against WoodFisher's damping.
    """
    size = max(CALIBRATIONS)
    evidence = []
    for model in models:
        study = None
        for seed in range(seeds):
            path = dense_path(directory, setup, model, seed)
            if not path.exists():
                continue
            study = study or Study(model, setup)
            params = flax.serialization.from_bytes(study.init(jax.random.key(0)), path.read_bytes())
            calibration_key = jax.random.split(jax.random.key(seed), 4)[1]
            batches = calibration_batches(calibration_key, size)
            x = jnp.concatenate([b[0] for b in batches])
            y = jnp.concatenate([b[1] for b in batches])
            evidence.append(
                {
                    "model": model,
                    "seed": seed,
                    "examples": int(x.shape[0]),
                    "training_set": study.fisher_scale(params, study.x[:size], study.y[:size]),
                    "calibration_pool": study.fisher_scale(params, x, y),
                    "woodfisher_damping": 1e-5,
                }
            )
    return evidence


def dense_dir_of(out: Path) -> Path:
    """Where the dense parameters are cached by default: ``<out>_dense/`` next to the output."""
    return out.parent / f"{out.stem}_dense"


def dense_path(directory: Path, setup: Setup, model: str, seed: int) -> Path:
    options = "".join(f"-{name}{'x'.join(map(str, np.atleast_1d(v)))}" for name, v in setup.options(model).items())
    return directory / f"{DATASET}-{model}{options}-steps{setup.dense_steps}-seed{seed}.msgpack"


def dense_params(study: Study, directory: Path, seed: int, key: jax.Array):
    """The trained dense parameters of ``seed``: read from the cache in ``directory``, or trained and written there."""
    path = dense_path(directory, study.setup, study.name, seed)
    template = study.init(jax.random.key(0))
    if path.exists():
        return flax.serialization.from_bytes(template, path.read_bytes()), 0.0
    start = time.perf_counter()
    params = study.train_dense(key)
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(flax.serialization.to_bytes(params))
    partial.replace(path)
    return params, seconds


@functools.cache
def calibration_pool() -> tuple[jax.Array, jax.Array]:
    """:data:`CALIBRATION_POOL` fresh MNIST-1D signals: the package's generator and settings under another seed.

    The trained models fit their 4,000 training signals (training loss about 1e-3): per-example
    gradients there are nearly zero (the Fisher diagonal's mean is 1e-7, under WoodFisher's damping
    of 1e-5) and carry no information about the loss of pruned weights. Fresh signals of the same
    distribution are data the model has not fit, as an LLM's calibration text is. They are
    standardised by their own global mean and standard deviation, as the package standardises its
    5,000 (:func:`jaxsparse.data.load_dataset`), and cached on disk.
    """

    path = DATA_CACHE / "mnist1d" / f"calibration-seed{CALIBRATION_SEED}-{CALIBRATION_POOL}.npz"
    if not path.exists():
        data = generate_mnist1d(seed=CALIBRATION_SEED, num_samples=CALIBRATION_POOL)
        x = np.concatenate([data["x"], data["x_test"]])[..., None].astype(np.float32)
        y = np.concatenate([data["y"], data["y_test"]]).astype(np.int32)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        with partial.open("wb") as file:
            np.savez(file, x=x, y=y)
        partial.replace(path)
    with np.load(path) as saved:
        return jnp.asarray(saved["x"]), jnp.asarray(saved["y"])


def calibration_batches(key: jax.Array, size: int, pool=None) -> list[tuple[jax.Array, jax.Array]]:
    """``size`` examples of ``pool`` in a seed's fixed random order, in batches of :data:`CALIBRATION_BATCH`.

    ``pool`` is ``(x, y)``, by default :func:`calibration_pool`; the smaller sizes are the first
    examples of the larger ones.
    """
    x, y = calibration_pool() if pool is None else pool
    order = jax.random.permutation(key, x.shape[0])[:size]
    return [
        (x[order[i : i + CALIBRATION_BATCH]], y[order[i : i + CALIBRATION_BATCH]])
        for i in range(0, size, CALIBRATION_BATCH)
    ]


def _expanded(plans, masks, params) -> list[np.ndarray | None]:
    leaves = jax.tree.structure(params).flatten_up_to(masks)
    return [
        None if plan is None else np.asarray(plan.structure.expand(mask, plan.shape))
        for plan, mask in zip(plans, leaves, strict=True)
    ]


def mask_checks(layout_: SparsityLayout, pruned, masks) -> tuple[float, bool, bool]:
    """The sparsity of the sparsified kernels; whether every layer has exactly its count, and is zero off its mask."""
    plans = layout_.plan(pruned)
    expanded = _expanded(plans, masks, pruned)
    leaves = jax.tree.leaves(pruned)
    on = sum(int(m.sum()) for m in expanded if m is not None)
    total = sum(m.size for m in expanded if m is not None)
    group_leaves = jax.tree.structure(pruned).flatten_up_to(masks)
    exact = all(
        plan is None or int(np.sum(np.asarray(mask))) == plan.active
        for plan, mask in zip(plans, group_leaves, strict=True)
    )
    zero = all(m is None or not np.any(np.asarray(leaf)[~m]) for m, leaf in zip(expanded, leaves, strict=True))
    return 1.0 - on / total, exact, zero


def run_seed(
    study: Study,
    seed: int,
    criteria: Sequence[str],
    levels: Sequence[str],
    calibrations: Sequence[int],
    finetuned: Sequence[int] | None,
    done: set[tuple[str, ...]],
    commit: str,
    dense_dir: Path,
    source: str = "fresh",
    woodfisher_damping: float | None = None,
) -> list[dict[str, Any]]:
    """Every pruning of one dense model (trained or read from ``dense_dir``) not in ``done``: its rows.

    Prunings from the calibration sizes in ``finetuned`` and magnitude's are fine-tuned (none if
    ``finetuned`` is ``None``); the others record ``nan`` after the fine-tune. ``source``: the
    calibration examples come from :func:`calibration_pool` (``"fresh"``) or the training set.
    ``woodfisher_damping`` replaces WoodFisher's default damping (``None``: the library's, 1e-5).
    """
    setup = study.setup
    train_key, calibration_key, prune_key, finetune_key = jax.random.split(jax.random.key(seed), 4)
    params, train_seconds = dense_params(study, dense_dir, seed, train_key)
    dense_accuracy = float(study.evaluate(params)[0])
    if train_seconds:
        print(f"{study.name} seed {seed}: dense {dense_accuracy:.3f} ({train_seconds:.0f} s)", flush=True)
    pool = (study.x, study.y) if source == "train" else None
    batches = {size: calibration_batches(calibration_key, size, pool) for size in calibrations}
    rows = []
    for level in levels:
        layout_ = layout(study.name, level)
        for criterion in criteria:
            for size in [0] if criterion == "magnitude" else calibrations:
                row = dict(
                    dataset=DATASET,
                    model=study.name,
                    seed=seed,
                    criterion=criterion,
                    level=level,
                    calibration=size,
                    dense_steps=setup.dense_steps,
                    finetune_steps=setup.finetune_steps,
                )
                if _key(row) in done:
                    continue
                start = time.perf_counter()
                result = prune_one_shot(
                    criterion,
                    params,
                    layout_,
                    key=prune_key,
                    loss_fn=study.loss,
                    apply_fn=study.apply_fn,
                    batches=batches[size] if size else None,
                    damping=woodfisher_damping if criterion == "woodfisher" else None,
                )
                pruned = jax.block_until_ready(result.params)
                prune_seconds = time.perf_counter() - start
                accuracy, loss = study.evaluate(pruned)
                measured, exact, zero = mask_checks(layout_, pruned, result.masks)
                tuned_accuracy = tuned_loss = float("nan")
                finetune_seconds, still_exact, still_zero, unchanged = 0.0, True, True, True
                if finetuned is not None and (size == 0 or size in finetuned):
                    start = time.perf_counter()
                    tuned, masks = study.finetune(level, pruned, result.masks, finetune_key)
                    finetune_seconds = time.perf_counter() - start
                    tuned_accuracy, tuned_loss = study.evaluate(tuned)
                    _, still_exact, still_zero = mask_checks(layout_, tuned, masks)
                    unchanged = all(
                        np.array_equal(a, b)
                        for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(result.masks), strict=True)
                    )
                rows.append(
                    dict(
                        row,
                        sparsity=layout_.sparsity,
                        dense_accuracy=dense_accuracy,
                        accuracy=float(accuracy),
                        test_loss=float(loss),
                        finetuned_accuracy=float(tuned_accuracy),
                        finetuned_test_loss=float(tuned_loss),
                        measured_sparsity=measured,
                        exact_counts=exact and still_exact and unchanged,
                        zero_off_mask=zero and still_zero,
                        prune_time_s=prune_seconds,
                        finetune_time_s=finetune_seconds,
                        git_commit=commit,
                    )
                )
                print(
                    f"{study.name} seed {seed} {level:>4} {criterion:>10} n={size:<4}: {accuracy:.3f} -> "
                    f"{tuned_accuracy:.3f} (dense {dense_accuracy:.3f}; prune {prune_seconds:.1f} s, "
                    f"fine-tune {finetune_seconds:.1f} s)",
                    flush=True,
                )
    return rows


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[name]) for name in KEY)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of the CSV at ``path`` (none if it does not exist), numbers and flags parsed."""
    if not path.exists():
        return []
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    kinds = {
        "seed": int,
        "calibration": int,
        "dense_steps": int,
        "finetune_steps": int,
        "exact_counts": lambda v: v == "True",
        "zero_off_mask": lambda v: v == "True",
    }
    text = ("dataset", "model", "criterion", "level", "git_commit")
    return [
        {name: value if name in text else kinds.get(name, float)(value) for name, value in row.items()} for row in rows
    ]


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    append_csv_rows(path, COLUMNS, rows)


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, sample std, standard error and count; ``None`` if any value is ``nan`` (not fine-tuned)."""
    if any(np.isnan(values)):
        return None
    n = len(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std, "se": std / n**0.5, "seeds": n}


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, criterion, level, calibration): accuracy before and after the fine-tune, over seeds.

    Magnitude (calibration 0) appears once per level, under every calibration size in the tables.
    """
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["model"], row["criterion"], row["level"], row["calibration"]), []).append(row)
    table = []
    for (model, criterion, level, calibration), group in sorted(
        cells.items(), key=lambda item: (item[0][0], ORDER.index(item[0][1]), LEVELS.index(item[0][2]), item[0][3])
    ):
        group = sorted(group, key=lambda row: row["seed"])
        table.append(
            {
                "model": model,
                "criterion": criterion,
                "level": level,
                "calibration": calibration,
                "seeds_run": [row["seed"] for row in group],
                "one_shot": _stats([row["accuracy"] for row in group]),
                "finetuned": _stats([row["finetuned_accuracy"] for row in group]),
                "one_shot_per_seed": [row["accuracy"] for row in group],
                "finetuned_per_seed": [row["finetuned_accuracy"] for row in group],
                "measured_sparsity": statistics.mean(row["measured_sparsity"] for row in group),
                "exact_counts": all(row["exact_counts"] for row in group),
                "zero_off_mask": all(row["zero_off_mask"] for row in group),
                "prune_time_s": statistics.mean(row["prune_time_s"] for row in group),
                "finetune_time_s": statistics.mean(row["finetune_time_s"] for row in group),
            }
        )
    return table


def dense_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model's dense test accuracy over its seeds."""
    per_seed: dict[str, dict[int, float]] = {}
    for row in rows:
        per_seed.setdefault(row["model"], {})[row["seed"]] = row["dense_accuracy"]
    return {
        model: {**_stats(list(seeds.values())), "per_seed": [seeds[s] for s in sorted(seeds)]}
        for model, seeds in per_seed.items()
    }


def _cell(table, model: str, criterion: str, level: str, calibration: int) -> dict[str, Any] | None:
    wanted = 0 if criterion == "magnitude" else calibration
    return next(
        (
            c
            for c in table
            if (c["model"], c["criterion"], c["level"], c["calibration"]) == (model, criterion, level, wanted)
        ),
        None,
    )


def margin(better: dict[str, Any], worse: dict[str, Any], stage: str = "one_shot") -> dict[str, Any]:
    """``better`` minus ``worse`` in points, with the paired standard error (per-seed differences) and the unpaired one.

    Example:
      >>> a = {"seeds_run": [0, 1, 2], "one_shot_per_seed": [0.8, 0.7, 0.9]}
      >>> b = {"seeds_run": [0, 1, 2], "one_shot_per_seed": [0.7, 0.6, 0.8]}
      >>> m = margin(a, b)
      >>> round(m["margin_points"], 6), m["margin_in_paired_std_errors"]
      (10.0, None)
    """
    seeds = sorted(set(better["seeds_run"]) & set(worse["seeds_run"]))
    a = dict(zip(better["seeds_run"], better[f"{stage}_per_seed"], strict=True))
    b = dict(zip(worse["seeds_run"], worse[f"{stage}_per_seed"], strict=True))
    differences = [100 * (a[s] - b[s]) for s in seeds]
    mean = statistics.mean(differences)
    paired = statistics.stdev(differences) / len(seeds) ** 0.5 if len(seeds) > 1 else 0.0
    variances = [statistics.variance(x.values()) / len(x) if len(x) > 1 else 0.0 for x in (a, b)]
    unpaired = 100 * sum(variances) ** 0.5
    # A difference that is the same in every seed has no spread: its margin in standard errors is undefined.
    paired_se = mean / paired if paired > 1e-9 else None
    return {
        "seeds": len(seeds),
        "margin_points": mean,
        "paired_std_error_points": paired,
        "margin_in_paired_std_errors": paired_se,
        "margin_in_unpaired_std_errors": mean / unpaired if unpaired > 1e-9 else None,
        "per_seed_points": differences,
    }


def verdict(check: dict[str, Any]) -> str:
    """``holds`` / ``fails``, and whether beyond :data:`SIGNIFICANT_SE` paired standard errors."""
    se = check["margin_in_paired_std_errors"]
    points = check["margin_points"]
    if points == 0:
        return "tie"
    word = "holds" if points > 0 else "fails"
    if check["seeds"] < 2:
        return f"{word} (one seed)"
    return word if se is None or abs(se) > SIGNIFICANT_SE else f"{word} (within 2 SE)"


def orderings(table: Sequence[dict[str, Any]], calibrations: Sequence[int]) -> list[dict[str, Any]]:
    """Every adjacent pair of each claim's chain, per model, calibration size and level, with no fine-tuning."""
    checks = []
    for name, claim in CLAIMS.items():
        for model in sorted({c["model"] for c in table}):
            for calibration in calibrations:
                for level in (*claim["levels"], *claim["extra_levels"]):
                    for better, worse in itertools.pairwise(claim["chain"]):
                        a = _cell(table, model, better, level, calibration)
                        b = _cell(table, model, worse, level, calibration)
                        if a is None or b is None:
                            continue
                        check = {
                            "claim": name,
                            "model": model,
                            "calibration": calibration,
                            "level": level,
                            "claimed": level in claim["levels"],
                            "pair": f"{better} >= {worse}",
                            **margin(a, b),
                        }
                        check["holds"] = check["margin_points"] >= 0
                        check["verdict"] = verdict(check)
                        checks.append(check)
    return checks


def _accuracy(stats: dict[str, Any]) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['se']:.1f}"


def markdown(
    table: Sequence[dict[str, Any]],
    dense: dict[str, dict[str, Any]],
    checks: Sequence[dict[str, Any]],
    calibrations: Sequence[int],
    setup: Setup,
    evidence: Sequence[dict[str, Any]] = (),
    context: str = "",
) -> str:
    """Per model and calibration size: criterion x level, ``one-shot → fine-tuned``; then the claims' checks."""
    lines = [
        f"One-shot pruning on {DATASET} (`python -m benchmarks.accuracy.one_shot`): test accuracy (%), mean ± "
        f"standard error over seeds, one-shot → after {setup.finetune_steps} fine-tuning steps on the fixed masks. "
        "Magnitude reads no calibration data: the same runs appear under both sizes."
        + (f" {context}" if context else ""),
        "",
    ]
    levels = [level for level in LEVELS if any(c["level"] == level for c in table)]
    header = "| criterion | " + " | ".join(f"{100 * float(lv):g}%" if lv != NM_LABEL else lv for lv in levels) + " |"
    for model in [m for m in MODELS if m in dense] + [m for m in dense if m not in MODELS]:
        d = dense[model]
        lines += [
            f"### {model}",
            "",
            f"Dense: {_accuracy(d)} (n = {d['seeds']}; per seed "
            + ", ".join(f"{100 * a:.1f}" for a in d["per_seed"])
            + ").",
            "",
        ]
        for calibration in calibrations:
            rows = []
            for criterion in ORDER:
                entries = [_cell(table, model, criterion, level, calibration) for level in levels]
                if all(e is None for e in entries):
                    continue
                rows.append(
                    f"| {criterion} | "
                    + " | ".join(
                        ""
                        if e is None
                        else _accuracy(e["one_shot"])
                        + ("" if e["finetuned"] is None else f" → {_accuracy(e['finetuned'])}")
                        for e in entries
                    )
                    + " |"
                )
            if rows:
                lines += [f"Calibration: {calibration} examples.", "", header, "|---" * (len(levels) + 1) + "|"]
                lines += [*rows, ""]
    lines += [
        "### Orderings, one-shot (no fine-tuning)",
        "",
        "Margin of each pair in points (mean of the per-seed differences), in paired standard errors "
        "and in unpaired ones (`sqrt(se_a^2 + se_b^2)`). `holds`: the margin is positive; "
        f"`(within 2 SE)`: its paired margin is under {SIGNIFICANT_SE:g} standard errors. Rows marked * are reported, "
        "not claimed by the paper.",
        "",
        "| claim | model | calibration | sparsity | pair | margin (points) | margin (paired SE) | "
        "margin (unpaired SE) | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def se(value):
        return "-" if value is None else f"{value:+.1f}"

    for c in checks:
        level = c["level"] if c["level"] == NM_LABEL else f"{100 * float(c['level']):g}%"
        lines.append(
            f"| ({c['claim']}){'' if c['claimed'] else ' *'} | {c['model']} | {c['calibration']} | {level} | "
            f"{c['pair']} | {c['margin_points']:+.1f} | {se(c['margin_in_paired_std_errors'])} | "
            f"{se(c['margin_in_unpaired_std_errors'])} | {c['verdict']} |"
        )
    if evidence:
        lines += [
            "",
            "### Calibration data: the training set against fresh signals",
            "",
            "Mean loss and mean empirical Fisher diagonal over the sparsified kernels of each dense model, "
            "on its first training examples and on its calibration examples (WoodFisher's damping: 1e-5).",
            "",
            "| model | seed | loss, training set | loss, calibration | Fisher diagonal, training set | "
            "Fisher diagonal, calibration |",
            "|---|---|---|---|---|---|",
        ]
        for e in evidence:
            train, fresh = e["training_set"], e["calibration_pool"]
            lines.append(
                f"| {e['model']} | {e['seed']} | {train['mean_loss']:.2g} | {fresh['mean_loss']:.3g} | "
                f"{train['fisher_diagonal_mean']:.2g} | {fresh['fisher_diagonal_mean']:.2g} |"
            )
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any]) -> Figure:
    """Accuracy against sparsity per criterion, one-shot (top) and fine-tuned (bottom), per model."""
    import matplotlib.pyplot as plt

    table, dense = record["table"], record["dense"]
    calibration = max(record["settings"]["calibrations"])
    models = [m for m in MODELS if m in dense] + [m for m in dense if m not in MODELS]
    fig, axes = plt.subplots(2, len(models), figsize=(4.5 * len(models), 7), squeeze=False)
    levels = [level for level in LEVELS if any(c["level"] == level for c in table)]
    for column, model in enumerate(models):
        for row, stage in enumerate(("one_shot", "finetuned")):
            ax = axes[row][column]
            ax.axhline(100 * dense[model]["mean"], color="black", linestyle="--", label="dense")
            for criterion in ORDER:
                cells = [(i, _cell(table, model, criterion, level, calibration)) for i, level in enumerate(levels)]
                cells = [(i, c) for i, c in cells if c is not None and c[stage] is not None]
                if not cells:
                    continue
                ax.errorbar(
                    [i for i, _ in cells],
                    [100 * c[stage]["mean"] for _, c in cells],
                    yerr=[100 * c[stage]["se"] for _, c in cells],
                    marker="o",
                    markersize=3,
                    capsize=2,
                    label=criterion,
                )
            ax.set_xticks(range(len(levels)), [lv if lv == NM_LABEL else f"{100 * float(lv):g}%" for lv in levels])
            ax.set_title(f"{model}: {'one-shot' if stage == 'one_shot' else 'after fine-tune'}")
            ax.set_xlabel("sparsity of the pruned kernels")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"One-shot pruning on {record['settings']['dataset']} (calibration {calibration}, mean ± s.e.)")
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--criteria", nargs="+", default=list(ORDER), choices=CRITERIA)
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS, help="sparsities and 2:4")
    parser.add_argument("--calibrations", nargs="+", type=int, default=list(CALIBRATIONS))
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument("--summary-only", action="store_true", help="prune nothing: summarise the CSV")
    parser.add_argument(
        "--calibration-source",
        choices=("fresh", "train"),
        default="fresh",
        help="fresh MNIST-1D signals (default) or the training set the dense models fit (a control)",
    )
    parser.add_argument("--no-finetune", action="store_true", help="report one-shot accuracy only")
    parser.add_argument(
        "--woodfisher-damping", type=float, default=None, help="WoodFisher's damping (default: the library's, 1e-5)"
    )
    parser.add_argument("--dense-dir", type=Path, default=None, help="the dense models' cache (default: <out>_dense/)")
    args = parser.parse_args(argv)
    setup = Setup()
    if args.quick:
        q, setup = QUICK, quick_setup()
        args.models, args.criteria, args.levels = list(q["models"]), list(q["criteria"]), list(q["levels"])
        args.calibrations, args.seeds = list(q["calibrations"]), q["seeds"]
    criteria = [c for c in ORDER if c in args.criteria]
    finetuned_at = {} if args.quick else FINETUNED_CALIBRATIONS
    out = output_path(args, "accuracy", "one_shot")
    out.parent.mkdir(parents=True, exist_ok=True)
    dense_dir = args.dense_dir or dense_dir_of(out)
    csv_path = out.with_suffix(".csv")
    commit = git_commit()
    start = time.perf_counter()
    if not args.summary_only:
        with compilation_cache(COMPILATION_CACHE):
            for model in args.models:
                study = Study(model, setup)
                for seed in range(args.seeds):
                    done = {_key(row) for row in read_rows(csv_path)}
                    finetuned = None if args.no_finetune else finetuned_at.get(model, args.calibrations)
                    rows = run_seed(
                        study,
                        seed,
                        criteria,
                        args.levels,
                        args.calibrations,
                        finetuned,
                        done,
                        commit,
                        dense_dir,
                        args.calibration_source,
                        args.woodfisher_damping,
                    )
                    append_rows(csv_path, rows)
    wall = time.perf_counter() - start
    wanted = set(args.models), set(criteria), set(args.levels), {0, *args.calibrations}
    rows = [
        row
        for row in read_rows(csv_path)
        if (row["dataset"], row["dense_steps"], row["finetune_steps"])
        == (DATASET, setup.dense_steps, setup.finetune_steps)
        and row["seed"] < args.seeds
        and all(value in pool for value, pool in zip(_parts(row), wanted, strict=True))
    ]
    table = aggregate(rows)
    dense = dense_table(rows)
    checks = orderings(table, args.calibrations)
    evidence = calibration_evidence(dense_dir, setup, args.models, args.seeds)
    record = {
        "benchmark": "one-shot pruning of trained models, before and after a short fine-tune",
        "quick": args.quick,
        "settings": {
            "dataset": DATASET,
            "models": args.models,
            "model_options": {m: setup.options(m) for m in args.models},
            "dense_training": f"{setup.dense_steps} steps, batch {BATCH_SIZE}, adamw({LEARNING_RATE}) cosine, "
            "weight decay 1e-4 (kernels), clip 1.0 (the harness defaults)",
            "finetune": f"{setup.finetune_steps} steps, batch {BATCH_SIZE}, adamw({FINETUNE_LEARNING_RATE}) cosine, "
            "static masks from the pruning",
            "criteria": criteria,
            "levels": args.levels,
            "calibrations": args.calibrations,
            "calibration_data": f"{CALIBRATION_POOL} fresh MNIST-1D signals (generator seed {CALIBRATION_SEED}), "
            "never trained on; each seed draws its own"
            if args.calibration_source == "fresh"
            else "the training set (a control: the dense models fit it); each seed draws its own",
            "calibration_source": args.calibration_source,
            "finetuned_calibrations": {
                m: [] if args.no_finetune else list(finetuned_at.get(m, args.calibrations)) for m in args.models
            },
            "calibration_batch": CALIBRATION_BATCH,
            "keep_dense": {m: list(KEEP_DENSE[m]) for m in args.models},
            "keep_dense_at_2_4_also": {m: list(NM_KEEP_DENSE.get(m, ())) for m in args.models},
            "distribution": "uniform (every sparsified kernel at the target), scope layer",
            "woodfisher": "blocks of 128 (library default), damping "
            + ("1e-5 (library default)" if args.woodfisher_damping is None else f"{args.woodfisher_damping:g}"),
            "sparsegpt": "lazy blocks of 128, damping 0.01 (library defaults), sequential",
            "wanda": "per output, sequential",
            "seeds": args.seeds,
            "accuracy": "test accuracy (1,000 examples for MNIST-1D)",
            "std_error": "sample std / sqrt(seeds); margins: paired (per-seed differences) and unpaired",
            "significant_std_errors": SIGNIFICANT_SE,
            "claims": {name: {**claim} for name, claim in CLAIMS.items()},
            "summary_only": args.summary_only,
        },
        "dense": dense,
        "table": table,
        "orderings": checks,
        "calibration_evidence": evidence,
        "all_exact_counts": all(row["exact_counts"] for row in rows),
        "all_zero_off_mask": all(row["zero_off_mask"] for row in rows),
        "prune_time_s_total": sum(row["prune_time_s"] for row in rows),
        "finetune_time_s_total": sum(row["finetune_time_s"] for row in rows),
        "wall_time_s_this_invocation": wall,
    }
    settings = record["settings"]
    context = f"Calibration data: {settings['calibration_data']}. WoodFisher: {settings['woodfisher']}."
    if args.no_finetune:
        context += " No fine-tuning."
    for model, sizes in settings["finetuned_calibrations"].items():
        skipped = [str(n) for n in args.calibrations if n not in sizes]
        if skipped and not args.no_finetune:
            context += (
                f" The {model}'s prunings from {', '.join(skipped)} examples were not fine-tuned (one-shot only)."
            )
    text = markdown(table, dense, checks, args.calibrations, setup, evidence, context)
    out.with_suffix(".md").write_text(text)
    write_results(record, out, plot)
    print(text)
    return record


def _parts(row: dict[str, Any]) -> tuple:
    return row["model"], row["criterion"], row["level"], row["calibration"]


if __name__ == "__main__":
    main()
