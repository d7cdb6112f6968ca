"""Test accuracy against inference FLOPs after the zero channels are removed for real: a Pareto study.

Structured methods zero whole channels; :func:`jaxsparse.training._compact_run.compact_run` (what
``jaxsparse compact RUN_DIR`` runs) removes them and reports the FLOPs per example of the smaller
dense model (:func:`jaxsparse.inspection.layer_flops`), its parameter count and its test accuracy.
Every point here is one harness run (:func:`jaxsparse.training.train`, AdamW with cosine decay, the
harness defaults) followed by ``compact_run(..., batch_sizes=())`` (no speed timing); the accuracy
is the compacted model's test accuracy after the last step, and the FLOPs fraction is the compacted
model's FLOPs over the dense model's. Workloads (:data:`benchmarks.accuracy.sweep.DATASET_SETTINGS`):
``mnist1d`` / LeNet-5, 3000 steps, and ``digits`` / MLP 64-256-256-10, 1000 steps. The classifier
(``Dense_2``) is kept dense in every structured run (its filters are the classes); every other
kernel, the first convolution included, may lose filters. The sparsity-schedule methods use
``update_every`` 50; ``dense_first_layer`` is off. Curves, 3 seeds per point:

* ``dense``: the full model, one point;
* ``ssl GROUPS`` (Wen et al. 2016, ``--method ssl``, the paper's subgradient with ``|w| < 1e-4``
  zeroed): group lasso on ``filter``, ``channel``, ``shape`` and ``filter,shape`` (LeNet-5), and
  ``filter``, ``channel``, ``filter,channel`` (MLP: a dense kernel's ``shape`` groups are its
  ``channel`` groups), at the strengths :data:`SSL_LAMBDAS`, chosen by a 1-seed probe to span
  "little removed" to "much removed"; the last 20% of the steps fine-tune with the zero groups frozen;
* ``l1_filter`` (Li et al. 2017): each layer's fraction 0.25 / 0.5 / 0.75 of its filters of smallest
  L1 norm removed at 80% of the steps, then the same fine-tuning;
* ``gradual_magnitude channel`` and ``rigl channel``: output-channel masks at sparsity
  0.25 / 0.5 / 0.75, ``uniform``, masks updated every 50 steps until 75% of the steps;
* ``small dense`` (Liu et al. 2019's baseline): the model with every hidden width scaled by 0.75 /
  0.5 / 0.25 (LeNet-5: both convolutions and both hidden dense layers, via :class:`ScaledLeNet5`,
  since :class:`jaxsparse.models.LeNet5` has no width attributes; MLP: ``hidden_sizes``), trained from
  scratch. ``Config`` has no model-options field and nothing is added to the library: these runs use
  a short loop in this module (:func:`train_small_dense`) over the harness's own pieces, the same
  optimizer and schedule (``make_optimizer``), initialisation key, batches (``train_batches``), step
  (``make_train_step``) and evaluation, so at width 1 it is the harness's dense run
  (``tests/test_benchmarks.py`` checks it). Their FLOPs are counted the same way, over the full model's.

``--depth`` adds depth-wise SSL on ``digits`` / ResNet-20 (1000 steps, classifier ``output`` dense):
dense and ``--ssl-groups depth`` at :data:`DEPTH_LAMBDAS` (0.01, 0.1, 1; the paper's is 0.007), with the
residual blocks whose inner convolutions were compacted to 0 channels counted per seed
(:func:`removed_blocks`; ResNet-20 minus ``k`` blocks has ``20 - 2k`` weight layers).

What "removed" means: compaction removes a channel when it is provably dead or constant. A masked
filter whose bias is not masked still emits ``relu(b)``, a constant: where that channel feeds a dense
layer, compaction folds the constant into the layer's result and removes the channel; where it feeds
a convolution (LeNet-5's first convolution into its second), it is kept, since the convolution's
padding makes the term vary near the borders (:data:`NOTE`). SSL's ``filter`` groups take the
filter's bias and norm (traced from the model), so its zeroed filters are dead. The CSV keeps the
mask density next to the FLOPs fraction, so any gap is visible.

Runs are appended to ``<out>.csv`` as they finish and skipped when the file holds them already, so an
interrupted run resumes. The summary (``<out>.json``, ``<out>.md``, ``<out>.png``) gives per workload
and point the mean ± sample std of the test accuracy and of the FLOPs fraction, the parameters after
compaction, which points are on the Pareto front (no other point at most as many FLOPs and more
accurate), each small dense model against the best structured point at no more FLOPs, and for one
SSL run per workload the groups zeroed per layer (from the compacted shapes, and the all-zero kernel
positions left inside the compacted kernels, the ``shape`` groups that compaction cannot remove).

Rerun from the repository root::

    python -m benchmarks.accuracy.compaction             # 2 workloads, 3 seeds, 141 runs: 18 min on 2 shared cores
    python -m benchmarks.accuracy.compaction --depth     # + 12 ResNet-20 runs (resumes the above): 12 min more
    python -m benchmarks.accuracy.compaction --quick     # four 20-step runs: ~20 s (CI; + 2 with --depth)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from matplotlib.figure import Figure

from benchmarks.accuracy import sweep
from benchmarks.common import COMPILATION_CACHE, append_csv_rows, argument_parser, output_path, write_results
from jaxsparse.training import Config

DATASETS = ("mnist1d", "digits")
KEEP_DENSE = {"lenet5": "Dense_2", "mlp": "Dense_2", "resnet20": "output"}
"""Each model's classifier: its output channels are the classes."""
SSL_GROUPS = {"lenet5": ("filter", "channel", "shape", "filter,shape"), "mlp": ("filter", "channel", "filter,channel")}
SSL_LAMBDAS = {"mnist1d": (0.001, 0.002, 0.004), "digits": (0.001, 0.003, 0.01)}
"""From a 1-seed probe of ``filter,shape`` / ``filter``: mnist1d 0.002 -> 61% of the FLOPs, 0.01 -> 10% (and
51% accuracy); digits 0.002 -> 61%, 0.01 -> 52%, 0.05 -> 78% (the subgradient under Adam stops zeroing)."""
FRACTIONS = (0.25, 0.5, 0.75)
"""Sparsities of ``l1_filter`` (its fraction of filters), ``gradual_magnitude`` and ``rigl`` channel masks."""
DEPTH_WORKLOAD = ("digits", "resnet20", 1000)
"""``--depth``: depth-wise SSL (whole residual blocks) on ResNet-20, data set, model and steps."""
DEPTH_LAMBDAS = (0.01, 0.1, 1.0)
"""``--depth``'s strengths: near the paper's 0.007 for ResNet-20 depth, then 10x and 100x, since a block's group has
~10^4-10^5 weights and its subgradient per weight is ``lambda / sqrt(n)`` against Adam-normalised data gradients."""
WIDTHS = (0.75, 0.5, 0.25)
"""Width multipliers of the small dense models."""
FINETUNE_FRACTION = 0.2
SCHEDULED = ("gradual_magnitude", "rigl")
"""Methods with channel masks on the harness's mask schedule (every 50 steps until 75%)."""
METHODS = ("dense", "ssl", "l1_filter", *SCHEDULED, "small_dense")
COLUMNS = (
    "dataset",
    "model",
    "steps",
    "method",
    "groups",
    "knob",
    "seed",
    "accuracy",
    "accuracy_before_compaction",
    "predictions_differing",
    "flops_dense",
    "flops_after",
    "flops_fraction",
    "params_dense",
    "params_after",
    "params_fraction",
    "mask_density",
    "layers",
    "wall_time_s",
    "git_commit",
)
KEY = COLUMNS[:7]
NUMERIC = {
    "steps": int,
    "knob": float,
    "seed": int,
    "accuracy": float,
    "accuracy_before_compaction": float,
    "predictions_differing": int,
    "flops_dense": int,
    "flops_after": int,
    "flops_fraction": float,
    "params_dense": int,
    "params_after": int,
    "params_fraction": float,
    "mask_density": float,
    "wall_time_s": float,
}


@dataclasses.dataclass(frozen=True)
class Point:
    """One run: ``knob`` is SSL's lambda, the sparsity (``l1_filter``, channel masks) or the width multiplier.

    ``groups`` is SSL's group types (``"-"`` for the other methods); dense has knob 1 (full width).
    """

    dataset: str
    model: str
    steps: int
    method: str
    groups: str
    knob: float
    seed: int

    def key(self) -> tuple[str, ...]:
        return row_key(dataclasses.asdict(self))


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[name]) for name in KEY)


def workload(cell: dict[str, Any]) -> str:
    """A point's panel and table: its data set and model (``digits / mlp``)."""
    return f"{cell['dataset']} / {cell['model']}"


def label(cell: dict[str, Any]) -> str:
    """A point's curve: ``ssl filter,shape``, ``rigl channel``, ``small dense``, ..."""
    method = cell["method"]
    if method == "ssl":
        return f"ssl {cell['groups']}"
    if method in SCHEDULED:
        return f"{method} channel"
    return method.replace("_", " ") if method == "small_dense" else method


def plan(
    datasets: Sequence[str],
    seeds: int,
    steps: int | None = None,
    lambdas: dict[str, Sequence[float]] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    widths: Sequence[float] = WIDTHS,
    methods: Sequence[str] = METHODS,
) -> list[Point]:
    """Every run: per seed and data set, dense, each SSL group set at each lambda, then the other curves.

    Seeds are outermost, so an interrupted study already holds every point at its first seeds.
    """
    points = []
    for seed, dataset in itertools.product(range(seeds), datasets):
        model = sweep.DATASET_SETTINGS[dataset]["model"]
        common = dict(dataset=dataset, model=model, steps=steps or sweep.DATASET_SETTINGS[dataset]["steps"])
        if "dense" in methods:
            points.append(Point(**common, method="dense", groups="-", knob=1.0, seed=seed))
        if "ssl" in methods:
            for groups in SSL_GROUPS[model]:
                for strength in (lambdas or SSL_LAMBDAS)[dataset]:
                    points.append(Point(**common, method="ssl", groups=groups, knob=strength, seed=seed))
        for method in ("l1_filter", *SCHEDULED):
            if method in methods:
                points += [Point(**common, method=method, groups="-", knob=f, seed=seed) for f in fractions]
        if "small_dense" in methods:
            points += [Point(**common, method="small_dense", groups="-", knob=w, seed=seed) for w in widths]
    return points


def depth_plan(seeds: int, steps: int | None = None, lambdas: Sequence[float] = DEPTH_LAMBDAS) -> list[Point]:
    """``--depth``: dense ResNet-20 and depth-wise SSL at each strength, per seed."""
    dataset, model, default_steps = DEPTH_WORKLOAD
    common = dict(dataset=dataset, model=model, steps=steps or default_steps)
    points = []
    for seed in range(seeds):
        points.append(Point(**common, method="dense", groups="-", knob=1.0, seed=seed))
        points += [Point(**common, method="ssl", groups="depth", knob=strength, seed=seed) for strength in lambdas]
    return points


def removed_blocks(layers: dict[str, dict[str, Any]]) -> list[str]:
    """The residual blocks whose inner convolutions were compacted to 0 channels (only the shortcut is left)."""
    return sorted(
        (name.split("/conv_0/")[0] for name, layer in layers.items() if "/conv_0/" in name and 0 in layer["after"]),
        key=lambda block: int(block.rsplit("_", 1)[-1]),
    )


def depth_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per depth-SSL strength on ResNet-20: blocks removed per seed, accuracy against the dense ResNet-20's."""
    dataset, model, _ = DEPTH_WORKLOAD
    mine = [r for r in rows if (r["dataset"], r["model"]) == (dataset, model)]
    dense = [r["accuracy"] for r in mine if r["method"] == "dense"]
    if not dense:
        return []
    dense_mean, dense_std = _mean_std(dense)
    summary = []
    for strength in sorted({r["knob"] for r in mine if r["method"] == "ssl"}):
        runs = sorted((r for r in mine if r["method"] == "ssl" and r["knob"] == strength), key=lambda r: r["seed"])
        accuracy, accuracy_std = _mean_std([r["accuracy"] for r in runs])
        summary.append(
            {
                "lambda": strength,
                "seeds": len(runs),
                "blocks_removed": [len(removed_blocks(r["layers"])) for r in runs],
                "removed": [removed_blocks(r["layers"]) for r in runs],
                "layers_left": [20 - 2 * len(removed_blocks(r["layers"])) for r in runs],
                "mean": accuracy,
                "std": accuracy_std,
                "dense_mean": dense_mean,
                "dense_std": dense_std,
                "flops_fraction": statistics.mean(r["flops_fraction"] for r in runs),
            }
        )
    return summary


def config(point: Point, update_every: int = 50) -> Config:
    """The harness's settings of a (non-small-dense) point."""
    finetune = (("finetune_steps", max(1, round(FINETUNE_FRACTION * point.steps))),)
    method, sparsity, structure, options = point.method, None, None, ()
    if method == "small_dense":
        method = "dense"
    elif method == "ssl":
        options = (("ssl_groups", point.groups), ("ssl_lambda", point.knob), *finetune)
    elif method == "l1_filter":
        sparsity, options = point.knob, finetune
    elif method in SCHEDULED:
        sparsity, structure = point.knob, "channel"
    sparse = method != "dense"
    return Config(
        method=method,
        sparsity=sparsity,
        structure=structure,
        distribution="uniform",
        dense_first_layer=False,
        keep_dense=KEEP_DENSE[point.model] if sparse else None,
        dataset=point.dataset,
        model=point.model,
        steps=point.steps,
        update_every=update_every,
        seed=point.seed,
        eval_every=point.steps,
        checkpoint_every=point.steps,
        keep_checkpoints=1,
        options=options,
    )


class ScaledLeNet5(nn.Module):
    """:class:`jaxsparse.models.LeNet5` with its widths as attributes (the same layers and names at the defaults).

    Attributes:
      num_classes: the number of logits.
      features: the two convolutions' filters.
      widths: the two hidden dense layers' widths.
    """

    num_classes: int
    features: tuple[int, int] = (6, 16)
    widths: tuple[int, int] = (120, 84)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train
        dims = x.ndim - 2
        window = (2,) * dims
        for features in self.features:
            x = nn.relu(nn.Conv(features, (5,) * dims, padding="SAME")(x))
            x = nn.max_pool(x, window, strides=window)
        x = x.reshape(x.shape[0], -1)
        for width in self.widths:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def scaled_model(name: str, width: float, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    """``name`` (``lenet5`` or ``mlp``) with every hidden width times ``width``, rounded, at least 1."""
    from jaxsparse.models import create_model

    def scale(sizes: Sequence[int]) -> tuple[int, ...]:
        return tuple(max(1, round(width * size)) for size in sizes)

    if name == "mlp":
        return create_model("mlp", num_classes=num_classes, input_shape=input_shape, hidden_sizes=scale((256, 256)))
    if name == "lenet5":
        return ScaledLeNet5(num_classes=num_classes, features=scale((6, 16)), widths=scale((120, 84)))
    raise ValueError(f"no width-scaled version of {name!r}; choose lenet5 or mlp.")


def model_flops(model: nn.Module, variables: dict[str, Any], example: jax.Array) -> int:
    """Dense FLOPs of one example through ``model``, counted as ``jaxsparse compact`` counts them."""
    from jaxsparse.inspection import layer_flops

    rest = {k: v for k, v in variables.items() if k != "params"}
    apply = functools.partial(model.apply, train=False)
    return int(
        sum(layer_flops(lambda p, r, x: apply({"params": p, **r}, x), variables["params"], rest, example).values())
    )


def _count(tree: Any) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def train_small_dense(point: Point, update_every: int = 50) -> dict[str, Any]:
    """Trains the width-scaled model of ``point`` as the harness trains a dense run, and measures it.

    The harness's own optimizer (``make_optimizer``), initialisation key (the first half of
    ``split(key(seed))``), batches, jitted step and evaluation over the whole test split.
    """
    from jaxsparse.data import load_dataset, train_batches
    from jaxsparse.models import create_model
    from jaxsparse.training import make_optimizer, make_train_step
    from jaxsparse.training._loop import _init_variables, _make_evaluate

    settings = config(point, update_every)
    dataset = load_dataset(settings.dataset, data_dir=settings.data_dir)
    model = scaled_model(point.model, point.knob, dataset.num_classes, dataset.input_shape)
    init_key, _ = jax.random.split(jax.random.key(settings.seed))
    variables = _init_variables(model, dataset, init_key)
    params = variables.pop("params")
    model_state = variables
    tx = make_optimizer(settings)
    opt_state = jax.jit(tx.init)(params)
    step_fn = make_train_step(model, tx, sparse=False)
    batches = train_batches(dataset, batch_size=settings.batch_size, seed=settings.seed)
    for step in range(settings.steps):
        params, model_state, opt_state, _ = step_fn(params, model_state, opt_state, batches[step])
    _, accuracy = _make_evaluate(model, dataset, settings.eval_batch_size, sparse=False)(params, model_state, opt_state)
    full = create_model(point.model, num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    example = np.zeros((1, *dataset.input_shape), np.float32)
    full_variables = jax.eval_shape(lambda: full.init(jax.random.key(0), example, train=False))
    small_variables = {"params": params, **model_state}
    flops_dense, flops_after = model_flops(full, full_variables, example), model_flops(model, small_variables, example)
    params_dense, params_after = _count(full_variables["params"]), _count(params)
    layers = {
        "/".join(str(getattr(k, "key", k)) for k in path): {"after": list(leaf.shape)}
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if getattr(path[-1], "key", "") == "kernel"
    }
    return {
        "accuracy": accuracy,
        "accuracy_before_compaction": accuracy,
        "predictions_differing": 0,
        "flops_dense": flops_dense,
        "flops_after": flops_after,
        "params_dense": params_dense,
        "params_after": params_after,
        "mask_density": 1.0,
        "layers": layers,
    }


def _zero_positions(kernel: np.ndarray) -> tuple[int, int]:
    """A conv kernel's all-zero positions across its filters (SSL's ``shape`` groups), and its positions."""
    positions = int(np.prod(kernel.shape[:-1]))
    if kernel.size == 0:  # every filter removed (a depth-SSL block): every position is empty
        return positions, positions
    flat = np.abs(kernel).reshape(positions, kernel.shape[-1]).max(axis=-1)
    return int(np.sum(flat == 0)), positions


def train_compacted(point: Point, update_every: int = 50) -> dict[str, Any]:
    """Trains ``point`` with the harness in a temporary folder, compacts it and reads the compaction report."""
    from jaxsparse.training import train
    from jaxsparse.training._compact_run import compact_run

    with tempfile.TemporaryDirectory() as out_dir:
        result = train(config(point, update_every).replace(out_dir=out_dir), progress=False)
        report = compact_run(out_dir, batch_sizes=())
        arrays = np.load(Path(out_dir) / "compact" / "params.npz")
        stored = json.loads((Path(out_dir) / "compact" / "kept.json").read_text())
        kernels = _kernels_by_name(arrays, stored)
    layers = {}
    for layer in report["layers"]:
        name = layer["name"].removeprefix("params/")
        if not name.endswith("kernel"):
            continue
        entry = {"before": layer["before"], "after": layer["after"]}
        if len(layer["before"]) >= 3 and name in kernels:
            entry["zero_positions"], entry["positions"] = _zero_positions(kernels[name])
        layers[name] = entry
    return {
        "accuracy": report["test_accuracy"]["compacted"],
        "accuracy_before_compaction": result.accuracy,
        "predictions_differing": report["test_accuracy"]["predictions_differing"],
        "flops_dense": report["flops_per_example"]["before"],
        "flops_after": report["flops_per_example"]["after"],
        "params_dense": report["parameters"]["before"],
        "params_after": report["parameters"]["after"],
        "mask_density": 1.0 - result.metrics[-1]["sparsity"],
        "layers": layers,
    }


def _kernels_by_name(arrays: Any, stored: dict[str, Any]) -> dict[str, np.ndarray]:
    """The compacted kernels by leaf name (without ``params/``), from ``save_compacted``'s files."""
    return {
        leaf["name"].removeprefix("params/"): np.asarray(arrays[leaf["name"]])
        for leaf in stored["leaves"]
        if leaf["name"].endswith("kernel") and leaf["name"] in arrays.files
    }


def train_one(point: Point, cache_dir: str, update_every: int = 50) -> dict[str, Any]:
    """Trains and measures ``point``; returns its CSV row."""
    from jaxsparse.training import compilation_cache, git_commit

    start = time.perf_counter()
    with compilation_cache(cache_dir):
        run = train_small_dense if point.method == "small_dense" else train_compacted
        measured = run(point, update_every)
    return {
        **dataclasses.asdict(point),
        **measured,
        "flops_fraction": measured["flops_after"] / measured["flops_dense"],
        "params_fraction": measured["params_after"] / measured["params_dense"],
        "layers": json.dumps(measured["layers"], separators=(",", ":")),
        "wall_time_s": time.perf_counter() - start,
        "git_commit": git_commit(),
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The finished runs in ``path`` (none if it does not exist), numbers and the layers' JSON parsed."""
    if not path.exists():
        return []
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    parsed = []
    for row in rows:
        row = {name: NUMERIC.get(name, str)(value) for name, value in row.items()}
        row["layers"] = json.loads(row["layers"])
        parsed.append(row)
    return parsed


def run_all(points: Sequence[Point], csv_path: Path, jobs: int, update_every: int = 50) -> list[dict[str, Any]]:
    """Trains the points ``csv_path`` does not hold yet, appending each row as it finishes."""
    done = {row_key(row) for row in read_rows(csv_path)}
    todo = [point for point in points if point.key() not in done]
    for point in todo:
        config(point, update_every)  # a conflicting setting stops the study before anything trains
    print(f"{len(points)} runs, {len(points) - len(todo)} already in {csv_path}, {len(todo)} to train", flush=True)
    cache = str(COMPILATION_CACHE)
    if jobs == 1:
        _record_all((train_one(point, cache, update_every) for point in todo), csv_path, len(todo))
    else:
        context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(train_one, point, cache, update_every) for point in todo]
            _record_all((future.result() for future in futures), csv_path, len(todo))
    return read_rows(csv_path)


def _record_all(rows: Iterable[dict[str, Any]], csv_path: Path, total: int) -> None:
    for index, row in enumerate(rows, 1):
        append_csv_rows(csv_path, COLUMNS, [row])
        print(
            f"[{index}/{total}] {row['dataset']} {label(row)} {row['knob']:g} seed {row['seed']}: accuracy "
            f"{row['accuracy']:.4f}, FLOPs {row['flops_fraction']:.3f}, params {row['params_after']} "
            f"({row['wall_time_s']:.0f} s)",
            flush=True,
        )


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of the accuracy and FLOPs fraction, per workload and point."""
    fields = ("dataset", "model", "steps", "method", "groups", "knob")
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[name] for name in fields), []).append(row)
    table = []
    for cell, group in sorted(cells.items()):
        accuracy, accuracy_std = _mean_std([row["accuracy"] for row in group])
        flops, flops_std = _mean_std([row["flops_fraction"] for row in group])
        entry = dict(zip(fields, cell, strict=True))
        table.append(
            {
                **entry,
                "label": label(entry),
                "seeds": len(group),
                "mean": accuracy,
                "std": accuracy_std,
                "flops_fraction": flops,
                "flops_fraction_std": flops_std,
                "params_after": statistics.mean(row["params_after"] for row in group),
                "params_fraction": statistics.mean(row["params_fraction"] for row in group),
                "mask_density": statistics.mean(row["mask_density"] for row in group),
                "predictions_differing": sum(row["predictions_differing"] for row in group),
            }
        )
    return table


def pareto_front(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells no other cell dominates (at most the FLOPs and a higher mean accuracy, or fewer FLOPs and as high)."""

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return (a["flops_fraction"] <= b["flops_fraction"] and a["mean"] > b["mean"]) or (
            a["flops_fraction"] < b["flops_fraction"] and a["mean"] >= b["mean"]
        )

    front = [c for c in cells if not any(dominates(other, c) for other in cells if other is not c)]
    return sorted(front, key=lambda c: c["flops_fraction"])


def small_dense_checks(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each small dense model against the most accurate structured point at no more FLOPs (and the reverse).

    The margin is the structured point's mean accuracy minus the small model's, in points and in
    standard errors (:func:`benchmarks.accuracy.sweep.difference`); ``None`` where no structured
    point is as cheap.
    """
    checks = []
    for name in sorted({workload(c) for c in table}):
        cells = [c for c in table if workload(c) == name]
        structured = [c for c in cells if c["method"] not in ("dense", "small_dense")]
        for small in sorted((c for c in cells if c["method"] == "small_dense"), key=lambda c: -c["flops_fraction"]):
            cheaper = [c for c in structured if c["flops_fraction"] <= small["flops_fraction"]]
            best = max(cheaper, key=lambda c: c["mean"], default=None)
            margin = sweep.difference(best, small) if best is not None else None
            checks.append(
                {
                    "workload": name,
                    "small_dense_width": small["knob"],
                    "small_dense_flops_fraction": small["flops_fraction"],
                    "small_dense_accuracy": small["mean"],
                    "best_structured": None if best is None else f"{best['label']} {best['knob']:g}",
                    "best_structured_flops_fraction": None if best is None else best["flops_fraction"],
                    "best_structured_accuracy": None if best is None else best["mean"],
                    "structured_wins": None if margin is None else margin["margin_points"] > 0,
                    **(margin or {"margin_points": None, "margin_in_std_errors": None}),
                }
            )
    return checks


def groups_zeroed(
    rows: Sequence[dict[str, Any]], dataset: str, model: str, groups: str, strength: float
) -> dict[str, Any] | None:
    """Per kernel of one SSL run (seed 0): filters and channels kept of their totals, and zero kernel positions."""
    run = next(
        (
            r
            for r in rows
            if (r["dataset"], r["model"], r["method"], r["groups"], r["knob"], r["seed"])
            == (dataset, model, "ssl", groups, strength, 0)
        ),
        None,
    )
    if run is None:
        return None
    return {
        "workload": f"{dataset} / {model}",
        "groups": groups,
        "lambda": strength,
        "accuracy": run["accuracy"],
        "flops_fraction": run["flops_fraction"],
        "layers": run["layers"],
    }


NOTE = (
    "What removal means here: compaction removes a channel when it is provably dead or constant. A masked filter "
    "whose bias is not masked (`l1_filter`, the channel masks of `gradual_magnitude` and `rigl`) emits relu(b), a "
    "constant: where it feeds a dense layer the constant is folded into that layer's result and the channel is "
    "removed; where it feeds a convolution (LeNet-5's first convolution into its second) it is kept. SSL's `filter` "
    "groups include the filter's bias, so its zeroed filters are dead. Compare the FLOPs fraction with the mask "
    "density for any gap."
)


def _fmt(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown(record: dict[str, Any]) -> str:
    """The Pareto tables, the front, the small-dense comparison and the groups-zeroed tables."""
    table = record["table"]
    lines = [
        "Test accuracy of the compacted model (%) and its inference FLOPs per example as a fraction of the dense "
        "model's, mean ± sample std over seeds; parameters after compaction (mean); mask density is the fraction of "
        "weights on the masks at the end (1 for dense, small dense and SSL before freezing).",
        "",
    ]
    for name in sorted({workload(c) for c in table}):
        cells = sorted((c for c in table if workload(c) == name), key=lambda c: -c["flops_fraction"])
        first = cells[0]
        front = {id(c) for c in pareto_front(cells)}
        lines += [
            f"### {name} ({first['steps']} steps, {first['seeds']} seeds)",
            "",
            "| method | knob | accuracy (%) | FLOPs fraction | params after | mask density | Pareto front |",
            "|---|---:|---:|---:|---:|---:|:---:|",
        ]
        for c in cells:
            lines.append(
                f"| {c['label']} | {c['knob']:g} | {_fmt(c['mean'], c['std'])} | "
                f"{_fmt(c['flops_fraction'], c['flops_fraction_std'], 1.0, 3)} | {c['params_after']:,.0f} | "
                f"{c['mask_density']:.3f} | {'yes' if id(c) in front else ''} |"
            )
        points = ", ".join(
            f"{c['label']} {c['knob']:g} ({c['flops_fraction']:.3f}, {100 * c['mean']:.1f}%)"
            for c in pareto_front(cells)
        )
        lines += ["", f"Pareto front of {name}, cheapest first (FLOPs fraction, accuracy): {points}.", ""]
    lines += [
        "### Small dense models against the best structured point at no more FLOPs",
        "",
        "| workload | width | small dense FLOPs | small dense acc. | best structured (knob) | its FLOPs | its acc. | "
        "winner | margin (points) | margin (SE) |",
        "|---|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for check in record["small_dense_checks"]:
        if check["best_structured"] is None:
            lines.append(
                f"| {check['workload']} | {check['small_dense_width']:g} | {check['small_dense_flops_fraction']:.3f} | "
                f"{100 * check['small_dense_accuracy']:.1f} | none as cheap | | | small dense | | |"
            )
            continue
        se = check["margin_in_std_errors"]
        lines.append(
            f"| {check['workload']} | {check['small_dense_width']:g} | {check['small_dense_flops_fraction']:.3f} | "
            f"{100 * check['small_dense_accuracy']:.1f} | {check['best_structured']} | "
            f"{check['best_structured_flops_fraction']:.3f} | {100 * check['best_structured_accuracy']:.1f} | "
            f"{'structured' if check['structured_wins'] else 'small dense'} | {check['margin_points']:+.2f} | "
            f"{'-' if se is None else f'{se:+.1f}'} |"
        )
    checks = record["small_dense_checks"]
    wins = sum(bool(check["structured_wins"]) for check in checks)
    lines += [
        "",
        f"A structured point at no more FLOPs beats the small dense model at {wins} of {len(checks)} widths "
        "(margins beyond about 2 SE exceed seed noise).",
        "",
        NOTE,
        "",
    ]
    for entry in record["groups_zeroed"]:
        lines += [
            f"### Groups zeroed per layer: {entry['workload']}, ssl {entry['groups']}, lambda {entry['lambda']:g}, "
            f"seed 0 (accuracy {100 * entry['accuracy']:.1f}%, FLOPs fraction {entry['flops_fraction']:.3f})",
            "",
            "| kernel | shape before | shape after | filters kept | input channels kept | zero kernel positions left |",
            "|---|---|---|---:|---:|---:|",
        ]
        for name, layer in entry["layers"].items():
            before, after = layer["before"], layer["after"]
            zero = f"{layer['zero_positions']} / {layer['positions']}" if "positions" in layer else "-"
            lines.append(
                f"| {name} | {tuple(before)} | {tuple(after)} | {after[-1]} / {before[-1]} | "
                f"{after[-2]} / {before[-2]} | {zero} |"
            )
        lines.append("")
    if record["depth"]:
        dense = record["depth"][0]
        lines += [
            f"### Depth-wise SSL on {' / '.join(map(str, DEPTH_WORKLOAD[:2]))} ({DEPTH_WORKLOAD[2]} steps): residual "
            f"blocks removed (inner convolutions compacted to 0 channels); dense ResNet-20: "
            f"{_fmt(dense['dense_mean'], dense['dense_std'])}%",
            "",
            "| lambda | seeds | blocks removed (per seed) | layers left (per seed) | accuracy (%) | "
            "vs dense (points) | FLOPs fraction |",
            "|---:|---:|---|---|---:|---:|---:|",
        ]
        for entry in record["depth"]:
            lines.append(
                f"| {entry['lambda']:g} | {entry['seeds']} | {entry['blocks_removed']} | {entry['layers_left']} | "
                f"{_fmt(entry['mean'], entry['std'])} | {100 * (entry['mean'] - entry['dense_mean']):+.2f} | "
                f"{entry['flops_fraction']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


CURVES = (
    "dense",
    *(f"ssl {groups}" for groups in ("filter", "channel", "shape", "filter,shape", "filter,channel", "depth")),
    "l1_filter",
    "gradual_magnitude channel",
    "rigl channel",
    "small dense",
)


def plot(record: dict[str, Any]) -> Figure:
    """Accuracy against the FLOPs fraction (log x), one panel per workload, one curve per method, error bars."""
    import matplotlib.pyplot as plt

    table = record["table"]
    panels = sorted({workload(c) for c in table})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name in CURVES:
            cells = sorted(
                (c for c in table if workload(c) == panel and c["label"] == name), key=lambda c: c["flops_fraction"]
            )
            if not cells:
                continue
            style = {"marker": "*", "markersize": 12, "color": "black"} if name == "dense" else {"marker": "o"}
            if name == "small dense":
                style = {"marker": "s", "color": "black", "linestyle": "--"}
            ax.errorbar(
                [c["flops_fraction"] for c in cells],
                [100 * c["mean"] for c in cells],
                xerr=[c["flops_fraction_std"] for c in cells],
                yerr=[100 * c["std"] for c in cells],
                capsize=3,
                label=name,
                **style,
            )
        for cell in table:
            if workload(cell) == panel and cell["method"] == "dense":
                ax.axhline(100 * cell["mean"], color="black", linewidth=0.8, alpha=0.4)
        ax.set_xscale("log")
        ax.set_xlim(right=1.15)
        ax.set_title(f"{panel}: accuracy after compaction")
        ax.set_xlabel("inference FLOPs after compaction / dense")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Accuracy vs FLOPs after removing zero channels (mean ± std over seeds)")
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per point (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="override every data set's number of steps")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, one process each")
    parser.add_argument(
        "--depth", action="store_true", help="also depth-wise SSL on digits / ResNet-20 (dense and DEPTH_LAMBDAS)"
    )
    args = parser.parse_args(argv)
    update_every, lambdas, fractions, widths, methods = 50, None, FRACTIONS, WIDTHS, args.methods
    if args.quick:
        args.datasets, args.seeds = ["digits"], 1
        args.steps, update_every = args.steps or sweep.QUICK_STEPS, sweep.QUICK_UPDATE_EVERY
        lambdas, fractions, widths = {"digits": (0.01,)}, (0.5,), (0.5,)
        methods = [m for m in ("dense", "ssl", "l1_filter", "small_dense") if m in args.methods]
    out = output_path(args, "accuracy", "compaction")
    out.parent.mkdir(parents=True, exist_ok=True)
    points = plan(args.datasets, args.seeds, args.steps, lambdas, fractions, widths, methods)
    if args.quick:
        points = [p for p in points if p.method != "ssl" or p.groups == "filter"]
    if args.depth:
        points += depth_plan(args.seeds, args.steps, DEPTH_LAMBDAS[1:2] if args.quick else DEPTH_LAMBDAS)
    rows = run_all(points, out.with_suffix(".csv"), args.jobs, update_every)
    wanted = {point.key() for point in points}
    rows = [row for row in rows if row_key(row) in wanted]
    table = aggregate(rows)
    zeroed = []
    for dataset in args.datasets:
        model = sweep.DATASET_SETTINGS[dataset]["model"]
        strengths = (lambdas or SSL_LAMBDAS)[dataset]
        groups = SSL_GROUPS[model][-1] if not args.quick else "filter"
        entry = groups_zeroed(rows, dataset, model, groups, strengths[len(strengths) // 2])
        if entry is not None:
            zeroed.append(entry)
    record = {
        "benchmark": "accuracy against FLOPs after compaction",
        "quick": args.quick,
        "settings": {
            "datasets": {name: sweep.DATASET_SETTINGS[name] for name in args.datasets},
            "steps_override": args.steps,
            "keep_dense": KEEP_DENSE,
            "depth": {"workload": DEPTH_WORKLOAD, "lambdas": DEPTH_LAMBDAS} if args.depth else None,
            "ssl_groups": SSL_GROUPS,
            "ssl_lambdas": lambdas or SSL_LAMBDAS,
            "fractions": list(fractions),
            "widths": list(widths),
            "finetune_fraction": FINETUNE_FRACTION,
            "harness": "jaxsparse.training.Config defaults otherwise (AdamW, cosine decay, masks every 50 steps)",
            "accuracy": "test accuracy of the compacted model after the last step",
            "flops": "jaxsparse compact's FLOPs per example after compaction over the dense model's",
        },
        "table": table,
        "pareto_front": {
            name: [f"{c['label']} {c['knob']:g}" for c in pareto_front([c for c in table if workload(c) == name])]
            for name in sorted({workload(c) for c in table})
        },
        "small_dense_checks": small_dense_checks(table),
        "groups_zeroed": zeroed,
        "depth": depth_summary(rows),
    }
    text = markdown(record)
    out.with_suffix(".md").write_text(text)
    write_results(record, out, plot)
    print(text)
    return record


if __name__ == "__main__":
    main()
