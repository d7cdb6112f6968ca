"""Movement against magnitude pruning while fine-tuning a pretrained MLP on MNIST-1D (Sanh, Wolf, Rush 2020).

The claim checked (the paper's Figure 2 and Table 1): when a *pretrained* model is fine-tuned to
high sparsity, movement pruning (hard, ``Top_v`` of the accumulated scores) and soft movement
pruning beat magnitude pruning at 10% of the weights or fewer, while magnitude pruning is ahead at
low sparsity. The paper fine-tunes BERT-base on SQuAD, MNLI and QQP. Here, at small scale:

* **pretraining** (the "language model"): :data:`CORPUS_SIZE` = 30,000 fresh MNIST-1D signals
  (``mnist1d.data.make_dataset`` with seed :data:`CORPUS_SEED` = 43, the package's data set being
  seed 42, and **no shear**, ``shear_scale = 0``; every other generation argument the package's),
  of which the classes 0-4 only: 13,600 to pretrain on, 400 for validation and 1,000 for test.
  ``jaxsparse.models.create_model("mlp")`` (40-256-256-5), dense, AdamW at ``3e-3`` with cosine
  decay, weight decay ``1e-4``, batch 128, :data:`PRETRAIN_STEPS` = 4000 steps (37 epochs). One
  pretrained model per seed;
* **fine-tuning, the transfer task** (the "downstream task"): the package's data set
  (``jaxsparse.data.load_dataset("mnist1d")``, sheared as published), classes 5-9 relabelled 0-4:
  its 2,007 training signals of those classes split into 1,606 to fine-tune on and the first 401
  for validation, its 493 test signals of those classes for test. The task is new twice over:
  digits the pretraining never saw, and sheared signals. A fresh 256x5 head replaces the
  pretrained one, as a classifier on top of BERT is new;
* **fine-tuning, the same task** (the setting of the paper's from-scratch discussion, where
  magnitude is known to be strong): the pretrained model, its head kept, trained on for the same
  steps on its own pretraining data, tested on the 1,000 held-out corpus signals;
* **what is pruned**: both hidden kernels (40x256 and 256x256, 75,776 weights), each to the target
  sparsity (``distribution="uniform"``, ``scope="layer"``: the paper's per-matrix ``Top_v``); the
  head and the biases stay dense, as the paper's classifier does;
* **fine-tuning, every method alike**: Adam, learning rate decayed linearly to 0 (the paper's
  schedule, without its warm-up), batch 64, :data:`FINETUNE_STEPS` = 1500 steps (60 epochs of the
  transfer set); the same batches and the same fresh head for every method of a seed. The
  learning rate is chosen on the *validation* split, by dense fine-tuning on a separate tuning seed
  (:data:`TUNING_SEED`), from :data:`LEARNING_RATES`; the transfer task is also run at a tenth of it
  (the ``gentle`` regime), since how far fine-tuning moves the weights is what the paper's argument
  turns on;
* **the schedule**: Zhu & Gupta's cubic ramp from 0 at 10% of fine-tuning to the target at 80%,
  then a cool-down at the target (the paper's warm-up of one epoch in ten and cool-down of two).
  Both methods recompute their masks on every step (``update_every=1``), as the authors' code
  recomputes ``Top_v`` in every forward pass:

  - ``magnitude``: ``jaxsparse.gradual_magnitude`` (``|W|``, pruned weights stay pruned);
  - ``movement``: ``jaxsparse.movement`` (hard): ``Top_v`` of ``S = -sum_t dL/dW' * W``, weights
    stored densely, so a pruned weight can come back;
  - ``soft_movement``: ``jaxsparse.movement(variant="soft")``, ``S > tau`` with the penalty
    ``lambda sum sigmoid(S)`` and ``tau = logit(0.1)`` (the authors'). Its sparsity is not a
    target: for each target, study and score learning rate ``alpha_S`` in
    :data:`SCORE_LEARNING_RATES`, ``lambda`` is bisected (in ``log lambda``) on the tuning seed until
    the reached sparsity is within :data:`SOFT_TOLERANCE` of the target, and among the ``alpha_S``
    that land, the one with the best *validation* accuracy is kept. Test accuracy is never read
    while tuning (the CSV's ``tune`` rows have none). ``lambda`` is searched within
    :data:`LOG_PENALTY_RANGE`, and a decade step that moves the sparsity by less than
    :data:`SATURATED` ends the search: at a large ``alpha_S`` the sparsity saturates (scores that
    movement drives up early reach the sigmoid's flat top, where the penalty's gradient vanishes),
    e.g. near 92% at ``alpha_S = 1e4`` on the transfer task, whatever ``lambda``. The eval seeds then
    reach whatever sparsity they reach, and the tables give it;
* **references**, per seed: dense fine-tuning (``dense``); for the transfer task a linear probe
  (``linear_probe``: the pretrained features frozen, only the new head trained, same optimizer) and
  training from scratch on the fine-tuning set (``scratch``: fresh initialisation, the pretraining
  recipe for the fine-tuning steps); for the same task the pretrained model as it is
  (``pretrained``). Dense fine-tuning above the probe shows the task needs the pretrained weights
  adapted, above scratch that pretraining helps.

Every fine-tuned row also records ``relative_change``, ``||W - W_pre|| / ||W_pre||`` over the
pruned kernels (stored weights), and for pruned rows ``overlap``, the fraction of the kept weights
that are also among the largest ``|W_pre|`` of the *pretrained* kernel at the same per-layer
count: the paper's explanation is that magnitude pruning keeps what was large before fine-tuning.

The summary gives mean ± standard error (``std / sqrt(n)``) over seeds, in %. Every method of a seed
fine-tunes the same pretrained model on the same batches, so each margin's standard error is that
of the mean of the per-seed differences (``paired``); the unpaired one is recorded beside it. The
claim counts as holding at a sparsity where movement − magnitude is positive and beyond
:data:`SIGNIFICANT_SE` paired standard errors (a weak bar at 3 seeds: the 95% t-quantile at 2
degrees of freedom is 4.3).

Rows are appended to ``<out>.csv`` as each run finishes, tuning probes included, and a rerun skips
every run already there (the tuning replays from the CSV).

Rerun from the repository root::

    python -m benchmarks.accuracy.movement             # 329 runs: ~13 min on 2 cores shared with another job
    python -m benchmarks.accuracy.movement --quick     # a 32-wide MLP, tens of steps: seconds (CI)

References:
  Sanh, Wolf, Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020.
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression", 2017.
  Greydanus, "Scaling down deep learning", arXiv:2011.14439, 2020 (MNIST-1D).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import jaxsparse as jsp
from benchmarks.common import COMPILATION_CACHE, RESULTS, append_csv_rows, argument_parser, output_path, write_results
from jaxsparse.data import generate_mnist1d
from jaxsparse.models import create_model
from jaxsparse.training import compilation_cache, git_commit

CORPUS_SIZE = 30_000
CORPUS_SEED = 43
CORPUS_SHEAR = 0.0
PRETRAIN_CLASSES = 5
"""Classes ``0 .. 4`` are pretrained on; the transfer task is classes ``5 .. 9``."""
HELD_OUT = (400, 1000)
"""The corpus signals of the pretraining classes kept out of pretraining: validation, then test (same task)."""
VALIDATION_FRACTION = 0.2
HIDDEN = (256, 256)
PRETRAIN_STEPS = 4000
PRETRAIN_BATCH = 128
PRETRAIN_LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
FINETUNE_STEPS = 1500
FINETUNE_BATCH = 64
RAMP = (0.1, 0.8)
"""The cubic ramp's begin and end, as fractions of fine-tuning (the paper: 1 and 8 epochs of 10)."""
LEARNING_RATES = (3e-4, 1e-3, 3e-3)
"""The fine-tuning learning rates dense fine-tuning chooses from on the validation split."""
GENTLE = 0.1
"""The ``gentle`` regime fine-tunes the transfer task at this fraction of the chosen learning rate."""
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.97)
CLAIM_SPARSITIES = (0.9, 0.95, 0.97)
"""10% of the weights or fewer, where the paper reports movement ahead."""
LOW_SPARSITIES = (0.5,)
"""Where the paper reports magnitude ahead (checked, not part of the claim's verdict)."""
SCORE_LEARNING_RATES = (1e2, 1e3, 1e4)
SOFT_TOLERANCE = 0.005
SOFT_START = -3.0
"""``log10 lambda`` of the first probe; each probe after moves a decade until the target is bracketed, then bisects."""
SOFT_PROBES = 10
"""Probes per (target, ``alpha_S``) at most."""
LOG_PENALTY_RANGE = (-8.0, 2.0)
"""``log10 lambda`` is searched within these bounds."""
SATURATED = 0.002
"""A decade step that moves the reached sparsity less than this ends the search: ``lambda`` no longer controls it.

This happens at large ``alpha_S``: a score that movement drives up early reaches the flat top of the sigmoid,
where the penalty's gradient ``lambda sigma'(S)`` vanishes, so no ``lambda`` prunes it."""
TUNING_SEED = 100
SEEDS = 3
SIGNIFICANT_SE = 2.0
STUDIES = (("transfer", "chosen"), ("transfer", "gentle"), ("same_task", "chosen"))
SPARSE_METHODS = ("magnitude", "movement", "soft_movement")
REFERENCES = {"transfer": ("dense", "linear_probe", "scratch"), "same_task": ("pretrained", "dense")}
METHODS = ("pretrained", "dense", "linear_probe", "scratch", *SPARSE_METHODS)
QUICK = {
    "corpus_size": 3000,
    "hidden": (32, 32),
    "pretrain_steps": 40,
    "finetune_steps": 40,
    "sparsities": (0.9,),
    "claim_sparsities": (0.9,),
    "learning_rates": (1e-3,),
    "score_learning_rates": (1e3,),
    "soft_probes": 2,
    "seeds": 1,
    "studies": (("transfer", "chosen"), ("same_task", "chosen")),
}
DATA_CACHE = RESULTS / "quick" / "data"
"""Both data sets' arrays, cached on disk (git-ignored): generating the corpus takes seconds."""
COLUMNS = (
    "phase",
    "setting",
    "regime",
    "learning_rate",
    "seed",
    "method",
    "target_sparsity",
    "penalty",
    "score_learning_rate",
    "measured_sparsity",
    "layer_sparsity",
    "validation_accuracy",
    "test_accuracy",
    "relative_change",
    "overlap",
    "hidden",
    "pretrain_steps",
    "finetune_steps",
    "corpus_size",
    "wall_time_s",
    "git_commit",
)
_TEXT = ("phase", "setting", "regime", "method", "layer_sparsity", "hidden", "git_commit")
_INTS = ("seed", "pretrain_steps", "finetune_steps", "corpus_size")


@dataclasses.dataclass(frozen=True)
class Setup:
    """One study's sizes and grids (the full run's by default, :data:`QUICK` for ``--quick``)."""

    corpus_size: int = CORPUS_SIZE
    hidden: tuple[int, ...] = HIDDEN
    pretrain_steps: int = PRETRAIN_STEPS
    finetune_steps: int = FINETUNE_STEPS
    sparsities: tuple[float, ...] = SPARSITIES
    claim_sparsities: tuple[float, ...] = CLAIM_SPARSITIES
    learning_rates: tuple[float, ...] = LEARNING_RATES
    score_learning_rates: tuple[float, ...] = SCORE_LEARNING_RATES
    soft_probes: int = SOFT_PROBES
    seeds: int = SEEDS
    studies: tuple[tuple[str, str], ...] = STUDIES

    @property
    def ramp(self) -> tuple[int, int]:
        """``(begin_step, end_step)`` of the cubic ramp."""
        return round(RAMP[0] * self.finetune_steps), round(RAMP[1] * self.finetune_steps)

    def identity(self) -> dict[str, Any]:
        """The fields every CSV row carries, so a rerun at other sizes never mixes its rows with these."""
        return {
            "hidden": "x".join(map(str, self.hidden)),
            "pretrain_steps": self.pretrain_steps,
            "finetune_steps": self.finetune_steps,
            "corpus_size": self.corpus_size,
        }


# ----- data --------------------------------------------------------------------------------------


Split = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Task:
    """A fine-tuning task: its training, validation and test splits, and whether it needs a new head."""

    name: str
    train: Split
    validation: Split
    test: Split
    new_head: bool


def _corpus(size: int) -> Split:
    """``size`` fresh MNIST-1D signals (seed :data:`CORPUS_SEED`, no shear), cached in :data:`DATA_CACHE`."""
    version = importlib.metadata.version("mnist1d")
    path = DATA_CACHE / "mnist1d" / f"corpus-{version}-n{size}-seed{CORPUS_SEED}-shear{CORPUS_SHEAR:g}.npz"
    if path.exists():
        with np.load(path) as saved:
            return saved["x"], saved["y"]
    data = generate_mnist1d(num_samples=size, seed=CORPUS_SEED, shear_scale=CORPUS_SHEAR, train_split=1.0)
    x, y = data["x"][..., None].astype(np.float32), data["y"].astype(np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as file:
        np.savez(file, x=x, y=y)
    os.replace(partial, path)
    return x, y


def make_tasks(setup: Setup) -> tuple[Split, dict[str, Task]]:
    """The pretraining set and both fine-tuning tasks (see the module docstring)."""
    from jaxsparse.data import load_dataset

    x, y = _corpus(setup.corpus_size)
    keep = y < PRETRAIN_CLASSES
    x, y = x[keep], y[keep]
    held = sum(HELD_OUT) if setup.corpus_size == CORPUS_SIZE else len(y) // 5
    n_val = HELD_OUT[0] if setup.corpus_size == CORPUS_SIZE else held // 3
    pretrain = (x[:-held], y[:-held])
    same_val, same_test = (x[-held:][:n_val], y[-held:][:n_val]), (x[-held:][n_val:], y[-held:][n_val:])

    data = load_dataset("mnist1d", data_dir=DATA_CACHE)

    def classes(split) -> Split:
        inputs, labels = np.asarray(split.inputs), np.asarray(split.labels)
        chosen = labels >= PRETRAIN_CLASSES
        return inputs[chosen], (labels[chosen] - PRETRAIN_CLASSES).astype(np.int32)

    xt, yt = classes(data.train)
    n = round(VALIDATION_FRACTION * len(yt))
    tasks = {
        "transfer": Task("transfer", (xt[n:], yt[n:]), (xt[:n], yt[:n]), classes(data.test), new_head=True),
        "same_task": Task("same_task", pretrain, same_val, same_test, new_head=False),
    }
    return pretrain, tasks


def batch_indices(n: int, steps: int, batch: int, seed: Sequence[int]) -> np.ndarray:
    """``[steps, batch]`` example indices: a fresh permutation per epoch (the last partial batch dropped)."""
    rng = np.random.default_rng(list(seed))
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch) for _ in range(epochs)]
    return np.concatenate(rows)[:steps].astype(np.int32)


# ----- training ----------------------------------------------------------------------------------


class Trainer:
    """Jitted training of the MLP on index batches, and its accuracy; the pruned kernels' names."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.model = create_model("mlp", num_classes=PRETRAIN_CLASSES, input_shape=(40, 1), hidden_sizes=setup.hidden)
        self.head = f"Dense_{len(setup.hidden)}"

        @jax.jit
        def accuracy(params, x, y):
            return jnp.mean(jnp.argmax(self.model.apply({"params": params}, x, train=False), -1) == y)

        self._accuracy = accuracy
        self.pruned = [name for name in self.init(jax.random.key(0)) if name != self.head]

    def init(self, key: jax.Array) -> dict:
        return self.model.init(key, jnp.zeros((1, 40, 1)), train=False)["params"]

    def train(self, params, tx: optax.GradientTransformation, data: Split, indices: np.ndarray, sparse: bool):
        """``(params, state)`` after a step of ``tx`` per row of ``indices``; ``sparse``: a masked forward pass."""

        def loss(p, x, y):
            logits = self.model.apply({"params": p}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def run(params, x, y, indices):
            def step(i, carry):
                p, state = carry
                batch = indices[i]
                grads = jax.grad(loss)(jsp.forward_params(p, state) if sparse else p, x[batch], y[batch])
                updates, state = tx.update(grads, state, p)
                return optax.apply_updates(p, updates), state

            return jax.lax.fori_loop(0, indices.shape[0], step, (params, tx.init(params)))

        x, y = data
        return jax.block_until_ready(run(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(indices)))

    def accuracy(self, params, data: Split) -> float:
        return float(self._accuracy(params, jnp.asarray(data[0]), jnp.asarray(data[1])))


def _kernels(params, names: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(params[name]["kernel"]) for name in names]


def _mask_kernels(masks, names: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(masks[name]["kernel"]) for name in names]


def _relative_change(final: Sequence[np.ndarray], start: Sequence[np.ndarray]) -> float:
    change = sum(float(np.sum(np.square(a - b))) for a, b in zip(final, start, strict=True))
    return math.sqrt(change / sum(float(np.sum(np.square(b))) for b in start))


def _overlap(masks: Sequence[np.ndarray], pretrained: Sequence[np.ndarray]) -> float:
    """Of the kept weights, the fraction among each layer's largest ``|W_pre|`` at the same count."""
    shared = kept = 0
    for mask, weights in zip(masks, pretrained, strict=True):
        count = int(mask.sum())
        top = np.zeros(mask.size, bool)
        top[np.argsort(-np.abs(weights).ravel(), kind="stable")[:count]] = True
        shared += int(np.sum(top & mask.ravel()))
        kept += count
    return shared / kept if kept else float("nan")


@dataclasses.dataclass(frozen=True)
class Run:
    """One fine-tuning run's identity (the CSV key, without the sizes)."""

    phase: str
    setting: str
    regime: str
    learning_rate: float
    seed: int
    method: str
    target_sparsity: float = 0.0
    penalty: float = float("nan")
    score_learning_rate: float = float("nan")

    def key(self) -> tuple:
        return tuple(_key_part(getattr(self, field.name)) for field in dataclasses.fields(self))


def _key_part(value):
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


class Study:
    """The pretrained models, the tasks and the runs, each run done once and kept in the CSV."""

    def __init__(self, setup: Setup, csv_path: Path):
        self.setup, self.csv_path = setup, csv_path
        self.trainer = Trainer(setup)
        self.pretrain_data, self.tasks = make_tasks(setup)
        self.commit = git_commit()
        self.rows = {
            _row_key(row): row
            for row in read_rows(csv_path)
            if all(str(row[name]) == str(value) for name, value in setup.identity().items())
        }
        self._pretrained: dict[int, dict] = {}

    def pretrained(self, seed: int) -> dict:
        """The dense model pretrained on the corpus for ``seed`` (deterministic, so retrained rather than stored)."""
        if seed not in self._pretrained:
            key = jax.random.fold_in(jax.random.key(seed), 0)
            tx = optax.adamw(
                optax.cosine_decay_schedule(PRETRAIN_LEARNING_RATE, self.setup.pretrain_steps),
                weight_decay=WEIGHT_DECAY,
            )
            indices = batch_indices(len(self.pretrain_data[1]), self.setup.pretrain_steps, PRETRAIN_BATCH, (seed, 0))
            self._pretrained[seed], _ = self.trainer.train(
                self.trainer.init(key), tx, self.pretrain_data, indices, False
            )
        return self._pretrained[seed]

    def algorithm(self, run: Run):
        begin, end = self.setup.ramp
        shared = dict(distribution="uniform", begin_step=begin, end_step=end, dense_last_layer=True)
        if run.method == "magnitude":
            return jsp.gradual_magnitude(run.target_sparsity, update_every=1, **shared)
        if run.method == "movement":
            return jsp.movement(run.target_sparsity, **shared)
        return jsp.movement(
            run.target_sparsity,
            variant="soft",
            penalty=run.penalty,
            score_learning_rate=run.score_learning_rate,
            **shared,
        )

    def get(self, run: Run) -> dict[str, Any]:
        """``run``'s row: from the CSV, or trained now and appended to it."""
        key = run.key()
        if key not in self.rows:
            row = self._train(run)
            append_rows(self.csv_path, [row])
            self.rows[key] = row
        return self.rows[key]

    def _train(self, run: Run) -> dict[str, Any]:
        setup, trainer, task = self.setup, self.trainer, self.tasks[run.setting]
        start_time = time.perf_counter()
        keys = jax.random.split(jax.random.fold_in(jax.random.key(run.seed), 1), 3)  # head, scratch, masks
        pretrained = self.pretrained(run.seed)
        start = dict(pretrained)
        if task.new_head:
            start[trainer.head] = trainer.init(keys[0])[trainer.head]
        indices = batch_indices(len(task.train[1]), setup.finetune_steps, FINETUNE_BATCH, (run.seed, 1))
        decay = optax.linear_schedule(run.learning_rate, 0.0, setup.finetune_steps)
        masks = None
        if run.method == "pretrained":
            final = start
        elif run.method == "scratch":
            tx = optax.adamw(
                optax.cosine_decay_schedule(PRETRAIN_LEARNING_RATE, setup.finetune_steps), weight_decay=WEIGHT_DECAY
            )
            final, _ = trainer.train(trainer.init(keys[1]), tx, task.train, indices, False)
        elif run.method == "linear_probe":
            labels = {name: jax.tree.map(lambda _, n=name: "head" if n == trainer.head else "frozen", leaf)
                      for name, leaf in start.items()}  # fmt: skip
            tx = optax.multi_transform({"head": optax.adam(decay), "frozen": optax.set_to_zero()}, labels)
            final, _ = trainer.train(start, tx, task.train, indices, False)
        elif run.method == "dense":
            final, _ = trainer.train(start, optax.adam(decay), task.train, indices, False)
        else:
            tx = jsp.sparsify(optax.adam(decay), self.algorithm(run), key=keys[2])
            stored, state = trainer.train(start, tx, task.train, indices, True)
            final, masks = jsp.forward_params(stored, state), _mask_kernels(jsp.masks_of(state), trainer.pruned)
        stored_kernels = _kernels(final if masks is None else stored, trainer.pruned)
        pretrained_kernels = _kernels(pretrained, trainer.pruned)
        if masks is None:
            measured, layers, overlap = 0.0, "", float("nan")
        else:
            measured = 1.0 - sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
            layers = " ".join(f"{1.0 - float(m.mean()):.4f}" for m in masks)
            overlap = _overlap(masks, pretrained_kernels)
        return {
            **dataclasses.asdict(run),
            "measured_sparsity": measured,
            "layer_sparsity": layers,
            "validation_accuracy": trainer.accuracy(final, task.validation),
            # Tuning never reads the test split.
            "test_accuracy": float("nan") if run.phase == "tune" else trainer.accuracy(final, task.test),
            "relative_change": _relative_change(stored_kernels, pretrained_kernels),
            "overlap": overlap,
            **setup.identity(),
            "wall_time_s": time.perf_counter() - start_time,
            "git_commit": self.commit,
        }


def _row_key(row: dict[str, Any]) -> tuple:
    return Run(**{field.name: row[field.name] for field in dataclasses.fields(Run)}).key()


# ----- tuning ------------------------------------------------------------------------------------


def choose_learning_rate(study: Study, setting: str) -> tuple[float, list[dict[str, Any]]]:
    """The fine-tuning learning rate of :data:`LEARNING_RATES` with the best dense validation accuracy (tuning seed)."""
    rows = [
        study.get(Run("tune", setting, "chosen", rate, TUNING_SEED, "dense")) for rate in study.setup.learning_rates
    ]
    best = max(rows, key=lambda row: row["validation_accuracy"])  # the first of equals: the smallest rate
    return best["learning_rate"], rows


def bisect_penalty(probe: Callable[[float], float], target: float, probes: int, seen: dict[float, float]) -> float:
    """``log10 lambda`` whose reached sparsity is nearest ``target``, after at most ``probes`` new probes.

    ``probe(log10 lambda)`` is the reached sparsity (increasing in ``lambda``); ``seen`` holds earlier
    probes (``log10 lambda -> sparsity``), which bracket the target before any new probe is made. The
    next probe is a function of ``seen`` alone, so a rerun that finds the probes in the CSV replays them.
    """

    def nearest() -> float:
        return min(seen, key=lambda x: (abs(seen[x] - target), x))

    for _ in range(probes):
        if seen and abs(seen[nearest()] - target) <= SOFT_TOLERANCE:
            break
        below = [x for x, s in seen.items() if s < target]
        above = [x for x, s in seen.items() if s > target]
        back = None  # a decade step: the probe a decade behind the last one
        if below and above:
            x = (max(below) + min(above)) / 2
        elif below:
            x, back = max(below) + 1.0, max(below) - 1.0
        elif above:
            x, back = min(above) - 1.0, min(above) + 1.0
        else:
            x = SOFT_START
        if x in seen or not LOG_PENALTY_RANGE[0] <= x <= LOG_PENALTY_RANGE[1]:
            break  # the bracket cannot shrink further, or lambda would leave the range searched
        if back in seen and abs(seen[(x + back) / 2] - seen[back]) < SATURATED:
            break  # the last decade step barely moved the sparsity
        seen[x] = probe(x)
    return nearest()


def tune_soft(study: Study, setting: str, regime: str, rate: float, target: float) -> dict[str, Any]:
    """``alpha_S`` and ``lambda`` for the soft variant at ``target`` (see the module docstring): the chosen probe.

    Each probe is a ``tune`` run tagged with the target it was made for. The probes of the targets
    before this one (in the setup's order) at the same ``alpha_S`` join the bracket: in the first run
    they are all there when this target's turn comes, so a rerun makes the same choices.
    """
    earlier = study.setup.sparsities[: study.setup.sparsities.index(target) + 1]
    candidates = []
    for alpha in study.setup.score_learning_rates:
        found = {
            # Probes sit at dyadic points of log10 lambda, which 12 decimals recover exactly from the CSV.
            round(math.log10(row["penalty"]), 12): row
            for row in study.rows.values()
            if _soft_probe_of(row, setting, regime, rate)
            and row["score_learning_rate"] == alpha
            and row["target_sparsity"] in earlier
        }
        made_here = sum(row["target_sparsity"] == target for row in found.values())

        def probe(x: float, alpha=alpha, found=found) -> float:
            run = Run("tune", setting, regime, rate, TUNING_SEED, "soft_movement", target, 10.0**x, alpha)
            found[x] = study.get(run)
            return found[x]["measured_sparsity"]

        seen = {x: row["measured_sparsity"] for x, row in found.items()}
        candidates.append(found[bisect_penalty(probe, target, max(study.setup.soft_probes - made_here, 0), seen)])
    landed = [row for row in candidates if abs(row["measured_sparsity"] - target) <= SOFT_TOLERANCE]
    if landed:
        chosen = max(landed, key=lambda row: row["validation_accuracy"])
    else:
        chosen = min(candidates, key=lambda row: abs(row["measured_sparsity"] - target))
    return {
        "setting": setting,
        "regime": regime,
        "target_sparsity": target,
        "score_learning_rate": chosen["score_learning_rate"],
        "penalty": chosen["penalty"],
        "tuning_sparsity": chosen["measured_sparsity"],
        "tuning_validation_accuracy": chosen["validation_accuracy"],
        "landed": bool(landed),
        "candidates": [
            {k: row[k] for k in ("score_learning_rate", "penalty", "measured_sparsity", "validation_accuracy")}
            for row in candidates
        ],
        "probes": sum(
            1
            for row in study.rows.values()
            if _soft_probe_of(row, setting, regime, rate) and row["target_sparsity"] == target
        ),
    }


def _soft_probe_of(row, setting, regime, rate) -> bool:
    return (
        row["phase"] == "tune"
        and row["method"] == "soft_movement"
        and (row["setting"], row["regime"], row["learning_rate"]) == (setting, regime, rate)
    )


# ----- the study -----------------------------------------------------------------------------------


def run_study(study: Study) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every tuning and evaluation run of the setup's studies: the eval rows, and what tuning chose."""
    setup = study.setup
    chosen_rates, tuning = {}, {"learning_rate": {}, "soft": []}
    eval_rows = []
    for setting, regime in setup.studies:
        if setting not in chosen_rates:
            chosen_rates[setting], rows = choose_learning_rate(study, setting)
            tuning["learning_rate"][setting] = {
                "chosen": chosen_rates[setting],
                "validation_accuracy": {repr(row["learning_rate"]): row["validation_accuracy"] for row in rows},
            }
            print(f"{setting}: fine-tuning learning rate {chosen_rates[setting]:g} (validation)", flush=True)
        rate = chosen_rates[setting] * (GENTLE if regime == "gentle" else 1.0)
        softs = {}
        for target in setup.sparsities:
            softs[target] = tune_soft(study, setting, regime, rate, target)
            tuning["soft"].append(dict(softs[target], learning_rate=rate))
            print(
                f"{setting}/{regime} soft at {target:g}: alpha_S {softs[target]['score_learning_rate']:g}, lambda "
                f"{softs[target]['penalty']:.3g}, reached {softs[target]['tuning_sparsity']:.4f} on the tuning seed",
                flush=True,
            )
        for seed in range(setup.seeds):
            for method in REFERENCES[setting]:
                eval_rows.append(study.get(Run("eval", setting, regime, rate, seed, method)))
            for target in setup.sparsities:
                for method in SPARSE_METHODS:
                    soft = softs[target]
                    extra = (soft["penalty"], soft["score_learning_rate"]) if method == "soft_movement" else ()
                    eval_rows.append(study.get(Run("eval", setting, regime, rate, seed, method, target, *extra)))
            done = [row for row in eval_rows if (row["setting"], row["regime"], row["seed"]) == (setting, regime, seed)]
            print(
                f"{setting}/{regime} seed {seed}: "
                + ", ".join(
                    f"{row['method']}@{row['target_sparsity']:g} {row['test_accuracy']:.3f}"
                    for row in done
                    if row["method"] != "soft_movement"
                ),
                flush=True,
            )
    return eval_rows, tuning


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows in the CSV at ``path`` (none if it does not exist), numbers parsed."""
    if not path.exists():
        return []
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    return [
        {name: value if name in _TEXT else int(value) if name in _INTS else float(value) for name, value in row.items()}
        for row in rows
    ]


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    append_csv_rows(path, COLUMNS, rows)


# ----- the summary ---------------------------------------------------------------------------------


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard error over seeds of each cell (setting, regime, method, target sparsity)."""
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["setting"], row["regime"], row["method"], row["target_sparsity"]), []).append(row)
    table = []
    for (setting, regime, method, target), group in sorted(cells.items(), key=lambda c: _cell_order(c[0])):
        accuracy, se = _mean_se([row["test_accuracy"] for row in group])
        sparsity, sparsity_se = _mean_se([row["measured_sparsity"] for row in group])
        finite = [row["overlap"] for row in group if not math.isnan(row["overlap"])]
        table.append(
            {
                "setting": setting,
                "regime": regime,
                "learning_rate": group[0]["learning_rate"],
                "method": method,
                "target_sparsity": target,
                "seeds": len(group),
                "mean": accuracy,
                "se": se,
                "std": statistics.stdev(r["test_accuracy"] for r in group) if len(group) > 1 else 0.0,
                "validation_mean": statistics.mean(row["validation_accuracy"] for row in group),
                "measured_sparsity": sparsity,
                "measured_sparsity_se": sparsity_se,
                "relative_change": statistics.mean(row["relative_change"] for row in group),
                "overlap": statistics.mean(finite) if finite else None,
                "per_seed": {row["seed"]: row["test_accuracy"] for row in group},
            }
        )
    return table


def _cell_order(cell: tuple) -> tuple:
    setting, regime, method, target = cell
    return (setting, regime, target, METHODS.index(method))


def paired_margin(better: dict[str, Any], worse: dict[str, Any]) -> dict[str, Any]:
    """``better - worse`` in points, with the paired standard error (per-seed differences) and the unpaired one."""
    seeds = sorted(set(better["per_seed"]) & set(worse["per_seed"]))
    differences = [better["per_seed"][s] - worse["per_seed"][s] for s in seeds]
    margin, paired = _mean_se(differences)
    unpaired = math.sqrt(better["se"] ** 2 + worse["se"] ** 2)
    return {
        "margin_points": 100 * margin,
        "paired_se_points": 100 * paired,
        "margin_in_paired_se": margin / paired if paired > 0 else None,
        "margin_in_unpaired_se": margin / unpaired if unpaired > 0 else None,
        "seeds": len(seeds),
        "seeds_ahead": sum(d > 0 for d in differences),
    }


def margins(table: Sequence[dict[str, Any]], setup: Setup) -> list[dict[str, Any]]:
    """At every study and sparsity: movement − magnitude and soft movement − magnitude, and the verdicts."""
    cells = {(c["setting"], c["regime"], c["method"], c["target_sparsity"]): c for c in table}
    checks = []
    for setting, regime in setup.studies:
        for target in setup.sparsities:
            magnitude = cells.get((setting, regime, "magnitude", target))
            for method in ("movement", "soft_movement"):
                cell = cells.get((setting, regime, method, target))
                if magnitude is None or cell is None:
                    continue
                margin = paired_margin(cell, magnitude)
                se = margin["margin_in_paired_se"]
                significant = se is not None and abs(se) > SIGNIFICANT_SE
                checks.append(
                    {
                        "setting": setting,
                        "regime": regime,
                        "target_sparsity": target,
                        "claim": f"{method} > magnitude",
                        "paper_level": target in setup.claim_sparsities,
                        "low_sparsity": target in LOW_SPARSITIES,
                        "soft_sparsity": cell["measured_sparsity"] if method == "soft_movement" else None,
                        "holds": margin["margin_points"] > 0 and significant,
                        "reversed": margin["margin_points"] < 0 and significant,
                        **margin,
                    }
                )
    return checks


def _pct(cell: dict[str, Any] | None) -> str:
    return "" if cell is None else f"{100 * cell['mean']:.1f} ± {100 * cell['se']:.1f}"


def _gap(check: dict[str, Any] | None) -> str:
    if check is None:
        return ""
    se = check["margin_in_paired_se"]
    ratio = "-" if se is None else f"{se:+.1f}"
    return f"{check['margin_points']:+.1f} ({ratio} SE, {check['seeds_ahead']}/{check['seeds']})"


TITLES = {
    ("transfer", "chosen"): "Transfer (new digits, sheared signals, new head), learning rate chosen on validation",
    ("transfer", "gentle"): "Transfer, gentle fine-tuning (a tenth of the chosen learning rate)",
    ("same_task", "chosen"): "Same task (pretraining data and classes, head kept), learning rate chosen on validation",
}


def markdown(table: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]], setup: Setup) -> str:
    """Per study: the references, then accuracy per sparsity with the two margins over magnitude."""
    cells = {(c["setting"], c["regime"], c["method"], c["target_sparsity"]): c for c in table}
    by = {(c["setting"], c["regime"], c["target_sparsity"], c["claim"]): c for c in checks}
    lines = []
    for setting, regime in setup.studies:
        refs = [cells.get((setting, regime, method, 0.0)) for method in REFERENCES[setting]]
        if not any(refs):
            continue
        rate = next(c for c in refs if c is not None)["learning_rate"]
        lines += [
            f"**{TITLES[(setting, regime)]}** (learning rate {rate:g}). References: "
            + ", ".join(
                f"{method.replace('_', ' ')} {_pct(c)}"
                + (f" (weights moved {c['relative_change']:.2f})" if method == "dense" else "")
                for method, c in zip(REFERENCES[setting], refs, strict=True)
                if c is not None
            )
            + ".",
            "",
            "| sparsity | magnitude | movement | soft movement (sparsity reached) | movement − magnitude | "
            "soft − magnitude | kept ∩ top-\\|W_pre\\|: magnitude / movement |",
            "|---|---|---|---|---|---|---|",
        ]
        for target in setup.sparsities:
            magnitude, movement = (cells.get((setting, regime, m, target)) for m in ("magnitude", "movement"))
            soft = cells.get((setting, regime, "soft_movement", target))
            if magnitude is None:
                continue
            reached = "" if soft is None else f" ({100 * soft['measured_sparsity']:.1f}%)"
            overlap = " / ".join(
                "" if c is None or c["overlap"] is None else f"{c['overlap']:.2f}" for c in (magnitude, movement)
            )
            lines.append(
                f"| {100 * target:g}% | {_pct(magnitude)} | {_pct(movement)} | {_pct(soft)}{reached} | "
                f"{_gap(by.get((setting, regime, target, 'movement > magnitude')))} | "
                f"{_gap(by.get((setting, regime, target, 'soft_movement > magnitude')))} | {overlap} |"
            )
        lines.append("")
    return "\n".join(lines)


def tuning_markdown(tuning: dict[str, Any]) -> str:
    """The soft variant's chosen ``alpha_S`` and ``lambda`` per study and target, and what they reached."""
    lines = [
        "| study | target | alpha_S | lambda | sparsity on the tuning seed | validation accuracy | landed | probes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for soft in tuning["soft"]:
        lines.append(
            f"| {soft['setting']}/{soft['regime']} | {100 * soft['target_sparsity']:g}% | "
            f"{soft['score_learning_rate']:g} | {soft['penalty']:.3g} | {100 * soft['tuning_sparsity']:.2f}% | "
            f"{100 * soft['tuning_validation_accuracy']:.1f} | "
            f"{'yes' if soft['landed'] else 'no'} | {soft['probes']} |"
        )
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any]) -> Figure:
    """Test accuracy against the weights remaining, one panel per study, with the dense references."""
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    table, studies = record["table"], [tuple(s) for s in record["settings"]["studies"]]
    fig, axes = plt.subplots(1, len(studies), figsize=(5.2 * len(studies), 4.2), squeeze=False)
    styles = {"magnitude": ("tab:blue", "o"), "movement": ("tab:red", "s"), "soft_movement": ("tab:orange", "^")}
    lines = {"dense": ("black", "--"), "linear_probe": ("tab:gray", ":"), "scratch": ("tab:green", "-."),
             "pretrained": ("tab:gray", ":")}  # fmt: skip
    for ax, (setting, regime) in zip(axes[0], studies, strict=True):
        cells = [c for c in table if (c["setting"], c["regime"]) == (setting, regime)]
        for method, (color, style) in lines.items():
            ref = next((c for c in cells if c["method"] == method), None)
            if ref is not None:
                ax.axhline(100 * ref["mean"], color=color, linestyle=style, label=method.replace("_", " "))
        for method, (color, marker) in styles.items():
            points = [c for c in cells if c["method"] == method]
            if points:
                ax.errorbar(
                    [100 * (1 - c["measured_sparsity"]) for c in points],
                    [100 * c["mean"] for c in points],
                    yerr=[100 * c["se"] for c in points],
                    color=color,
                    marker=marker,
                    markersize=4,
                    capsize=2,
                    label=method.replace("_", " "),
                )
        ax.set_xscale("log")
        ax.set_xticks([round(100 * (1 - target), 6) for target in record["settings"]["sparsities"]])
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining in the pruned kernels (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{setting.replace('_', ' ')}, {regime}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Fine-tuning a pretrained MLP 40-256-256-5 on MNIST-1D (mean ± s.e. over seeds)", fontsize=10)
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds 0 .. N-1 (default {SEEDS})")
    args = parser.parse_args(argv)
    setup = Setup(**QUICK) if args.quick else Setup()
    if args.seeds is not None:
        setup = dataclasses.replace(setup, seeds=args.seeds)
    out = output_path(args, "accuracy", "movement")
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    started = time.perf_counter()
    with compilation_cache(COMPILATION_CACHE):
        study = Study(setup, csv_path)
        print(f"{len(study.rows)} runs already in {csv_path}", flush=True)
        rows, tuning = run_study(study)
    table = aggregate(rows)
    checks = margins(table, setup)
    every = list(study.rows.values())
    record = {
        "benchmark": "movement vs magnitude pruning while fine-tuning a pretrained MLP on MNIST-1D (Sanh et al. 2020)",
        "quick": args.quick,
        "settings": {
            **dataclasses.asdict(setup),
            "ramp_steps": setup.ramp,
            "corpus": f"{setup.corpus_size} MNIST-1D signals, seed {CORPUS_SEED}, shear {CORPUS_SHEAR}, classes 0-4",
            "transfer_task": "jaxsparse.data mnist1d (seed 42, shear 0.75), classes 5-9 relabelled 0-4, new head",
            "same_task": "the pretraining data, head kept; test on held-out corpus signals",
            "pretraining": (
                f"adamw({PRETRAIN_LEARNING_RATE}) cosine, weight decay {WEIGHT_DECAY}, batch {PRETRAIN_BATCH}"
            ),
            "fine_tuning": f"adam, linear decay to 0, batch {FINETUNE_BATCH}, masks recomputed every step",
            "pruned": "both hidden kernels, uniform per layer (scope layer); head and biases dense",
            "soft_threshold": "logit(0.1)",
            "soft_tolerance": SOFT_TOLERANCE,
            "tuning_seed": TUNING_SEED,
            "gentle_fraction": GENTLE,
            "significant_paired_se": SIGNIFICANT_SE,
            "low_sparsities": LOW_SPARSITIES,
        },
        "tuning": tuning,
        "table": table,
        "margins": checks,
        "runs": len(every),
        "train_wall_time_s": sum(row["wall_time_s"] for row in every),
        "script_wall_time_s": time.perf_counter() - started,
    }
    text = markdown(table, checks, setup)
    out.with_suffix(".md").write_text(
        "Movement vs magnitude pruning while fine-tuning a pretrained MLP on MNIST-1D "
        f"(`python -m benchmarks.accuracy.movement`): test accuracy (%), mean ± standard error over {setup.seeds} "
        "seeds. Margins in points (paired standard errors; seeds ahead). The last column: the fraction of the kept "
        "weights among the largest pretrained magnitudes.\n\n" + text + "\nSoft movement pruning's tuning "
        "(validation split, tuning seed):\n\n" + tuning_markdown(tuning)
    )
    write_results(record, out, plot)
    print(text)
    return record


if __name__ == "__main__":
    main()
