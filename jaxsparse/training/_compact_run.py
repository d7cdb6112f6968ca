"""``jaxsparse compact RUN_DIR``: the final model of a training run, with its zero channels removed.

The command rebuilds the run's model from its ``config.json``, restores the final state from the
newest intact checkpoint (the params with the masks applied, so weights are exactly zero off the
masks, and the batch statistics), and hands the whole variables dict to
:func:`jaxsparse.compaction.compact` with ``model.apply(..., train=False)``. Into ``RUN_DIR/compact/``
it writes the compacted model (:func:`jaxsparse.compaction.save_compacted`) and ``report.json`` /
``report.md``: per layer the shapes and FLOPs before and after, the parameter and FLOPs totals,
the test accuracy of both models (they compute the same function, so they agree) and the measured
inference speed of both, jitted, at a few batch sizes.

Why measure the speed. Removing channels is the one kind of sparsity that speeds up a dense
accelerator kernel without sparse kernels, but the speedup is not the FLOPs ratio: small layers
are bound by memory and dispatch, not arithmetic. The report gives both, side by side.

Reading a run leaves it as it was: damaged checkpoints are skipped (and named on stderr), not moved
aside as a resume does. (Opening the checkpoints still removes the temporary folder of a checkpoint
that a killed process left half-written, as every opening of them does.)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsparse as jsp
from jaxsparse.compaction import CompactModel, compact, save_compacted
from jaxsparse.data import Dataset, eval_batches, load_dataset, train_batches
from jaxsparse.inspection import layer_flops
from jaxsparse.models import create_model
from jaxsparse.training._build import make_algorithm, make_optimizer, model_spec
from jaxsparse.training._checkpoint import Checkpoints, DamagedCheckpointError
from jaxsparse.training._config import Config, ConfigError
from jaxsparse.training._initial_masks import initial_masks
from jaxsparse.training._loop import _INIT_MASKS_STREAM, _first, _init_variables, _initial_state, _model_params
from jaxsparse.training._replicas import Replicas

__all__ = ["add_compact_parser", "compact_run", "run_compact_command"]

_BATCH_SIZES = (1, 32, 256)
_TIMING_BUDGET_S = 0.25
"""Wall time spent timing one model at one batch size, after its warm-up."""


def add_compact_parser(commands: Any) -> argparse.ArgumentParser:
    """Adds the ``compact`` subcommand to ``jaxsparse``'s subparsers."""
    parser = commands.add_parser(
        "compact",
        help="remove a trained run's zero channels: a smaller dense model with the same outputs",
        description=(
            "Restore the final model of the run in RUN_DIR, remove its zero channels for real "
            "(jaxsparse.compaction.compact), and write the smaller model (params.npz, kept.json), report.json and "
            "report.md (shapes, parameters, FLOPs, test accuracy and measured inference speed, before and after) "
            "into RUN_DIR/compact."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the results folder of a jaxsparse train run")
    parser.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=_BATCH_SIZES,
        metavar="B,B,...",
        help="batch sizes at which to time both models (default: 1,32,256)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: RUN_DIR/compact)")
    parser.add_argument(
        "--on-unsupported",
        choices=("error", "keep"),
        default="error",
        help="an operation compaction cannot follow blocks removing zero channels: fail (error), or keep them",
    )
    return parser


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive integers")
    return sizes


def _read_config(run_dir: Path) -> Config:
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder; give the results folder of a jaxsparse train run.")
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(
            f"{run_dir}: no config.json there, so it is not a jaxsparse results folder; give the folder that "
            "jaxsparse train wrote (its --out)."
        )
    return Config.from_file(saved)


def _template(config: Config, model: Any, dataset: Dataset) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The state a checkpoint of this run holds, at step 0, as :func:`~jaxsparse.training.train` builds it."""
    algorithm = make_algorithm(config, model_spec(model, dataset.input_shape))
    sparse = algorithm is not None
    replicas = Replicas.for_algorithm(algorithm, config.batch_size)
    init_key, mask_key = jax.random.split(jax.random.key(config.seed))
    variables = _init_variables(model, dataset, init_key)
    masks = None
    if config.init is not None:
        batch = train_batches(dataset, batch_size=config.batch_size, seed=config.seed)[0]
        key = jax.random.fold_in(mask_key, _INIT_MASKS_STREAM)
        chosen = initial_masks(config, algorithm, model, dataset, variables, batch, key)
        algorithm, masks = chosen.algorithm, chosen.masks
    optimizer = make_optimizer(config)
    tx = jsp.sparsify(optimizer, algorithm, key=mask_key, masks=masks) if sparse else optimizer
    with contextlib.nullcontext() if replicas is None else jax.set_mesh(replicas.mesh):
        state, axes = _initial_state(variables, tx, sparse, replicas)
    return state, axes, sparse


def _restore(run_dir: Path, template: dict[str, Any]) -> tuple[dict[str, Any], int, Path]:
    """The newest intact checkpoint's state, its step and folder; damaged newer ones are named, not moved."""
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise ConfigError(
            f"{run_dir}: no checkpoints/ folder, so there is no trained model to compact; train it first "
            f"(jaxsparse train --out {run_dir})."
        )
    damaged = []
    with Checkpoints(directory, keep=1 << 30) as checkpoints:
        steps = checkpoints.steps()
        if not steps:
            raise ConfigError(
                f"{run_dir}: no complete checkpoint in {directory} (the run stopped before its first one); resume "
                f"it (jaxsparse train --resume {run_dir}), then compact it."
            )
        for step in reversed(steps):
            try:
                state, _ = checkpoints.restore(template, step=step)
            except DamagedCheckpointError as error:
                damaged.append(error)
                print(f"{error}; skipped it", file=sys.stderr)
                continue
            return state, step, checkpoints.path(step)
    details = "; ".join(f"step {error.step}: {error.reason}" for error in damaged)
    raise ConfigError(
        f"{run_dir}: no checkpoint in {directory} is intact ({details}). Resume the run (jaxsparse train --resume "
        f"{run_dir}) only after restoring a checkpoint from a backup, or train it again in a new folder."
    )


def _test_split(dataset: Dataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    return list(eval_batches(dataset, batch_size=min(batch_size, len(dataset.test))))


def _accuracy(predict: Callable, params: Any, batches: Sequence[dict[str, np.ndarray]]) -> tuple[float, np.ndarray]:
    """Test accuracy, and the predicted classes (to count the examples where two models disagree)."""
    classes = np.concatenate([np.asarray(predict(params, batch["inputs"])) for batch in batches])
    labels = np.concatenate([batch["labels"] for batch in batches])
    return float(np.mean(classes == labels)), classes


def _median_seconds(fn: Callable, params: Any, inputs: jax.Array) -> float:
    """Median wall time of ``fn(params, inputs)``, compiled and warmed up first."""
    jax.block_until_ready(fn(params, inputs))
    start = time.perf_counter()
    jax.block_until_ready(fn(params, inputs))
    once = time.perf_counter() - start
    times = [once]
    for _ in range(int(min(max(_TIMING_BUDGET_S / max(once, 1e-9), 4), 200))):
        start = time.perf_counter()
        jax.block_until_ready(fn(params, inputs))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _flops_of(apply_fn: Callable, variables: dict[str, Any], example: jax.Array) -> dict[str, int]:
    """Per ``params/...`` leaf, the dense FLOPs of one example (attributed to ``variables["params"]``)."""
    rest = {k: v for k, v in variables.items() if k != "params"}
    flops = layer_flops(lambda p, r, x: apply_fn({"params": p, **r}, x), variables["params"], rest, example)
    return {f"params/{name}": int(n) for name, n in flops.items()}


def compact_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    batch_sizes: Sequence[int] = _BATCH_SIZES,
    on_unsupported: str = "error",
) -> dict[str, Any]:
    """Compacts the final model of the run in ``run_dir`` and writes it and its report into ``out``.

    Args:
      run_dir: the results folder of a :func:`~jaxsparse.training.train` run.
      out: where to write the model (``params.npz``, ``kept.json``, ``files.json``), ``report.json``
        and ``report.md``; default ``run_dir / "compact"``. The folder is replaced.
      batch_sizes: the batch sizes at which both models are timed.
      on_unsupported: passed to :func:`~jaxsparse.compaction.compact`.

    Returns:
      The contents of ``report.json``.

    Raises:
      ConfigError: ``run_dir`` is missing, is not a results folder, or has no intact checkpoint, or
        an operation compaction cannot follow blocks it (with ``on_unsupported="error"``); the
        message names the problem and the fix.
    """
    run_dir = Path(run_dir).absolute()
    out = run_dir / "compact" if out is None else Path(out).absolute()
    config = _read_config(run_dir)
    dataset = load_dataset(config.dataset, data_dir=config.data_dir)
    model = create_model(config.model, num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    template, axes, sparse = _template(config, model, dataset)
    restored, step, checkpoint = _restore(run_dir, template)
    state = _first(restored, axes)
    variables = {"params": _model_params(state["params"], state["opt_state"], sparse), **state["model_state"]}
    variables = jax.tree.map(jnp.asarray, variables)

    apply_fn = functools.partial(model.apply, train=False)
    batches = _test_split(dataset, config.eval_batch_size)
    example = jnp.asarray(batches[0]["inputs"][: min(32, len(batches[0]["inputs"]))])
    try:
        compacted = compact(apply_fn, variables, example, on_unsupported=on_unsupported)
    except ValueError as error:  # an operation compaction cannot follow blocks removing zero channels
        raise ConfigError(f"{error} On the command line: --on-unsupported keep.") from None

    predict_dense = jax.jit(lambda v, x: jnp.argmax(apply_fn(v, x), axis=-1))
    predict_small = jax.jit(lambda v, x: jnp.argmax(compacted(v, x), axis=-1))
    dense_accuracy, dense_classes = _accuracy(predict_dense, variables, batches)
    small_accuracy, small_classes = _accuracy(predict_small, compacted.params, batches)

    one = example[:1]
    flops_before = _flops_of(apply_fn, variables, one)
    flops_after = _flops_of(compacted, compacted.params, one)
    report = _report(
        run_dir=run_dir,
        step=step,
        checkpoint=checkpoint,
        compacted=compacted,
        flops=(flops_before, flops_after),
        accuracy=(dense_accuracy, small_accuracy, int(np.sum(dense_classes != small_classes))),
        speed=_speed(apply_fn, variables, compacted, dataset.input_shape, batch_sizes),
    )
    save_compacted(compacted, out)
    _write(out / "report.json", json.dumps(report, indent=2) + "\n")
    _write(out / "report.md", _markdown(report))
    return report


def _speed(
    apply_fn: Callable,
    variables: dict[str, Any],
    compacted: CompactModel,
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int],
) -> list[dict[str, float]]:
    dense, small = jax.jit(apply_fn), jax.jit(compacted)
    rows = []
    for size in batch_sizes:
        inputs = jax.random.normal(jax.random.key(size), (size, *input_shape), jnp.float32)
        dense_s = _median_seconds(dense, variables, inputs)
        small_s = _median_seconds(small, compacted.params, inputs)
        rows.append({"batch_size": int(size), "dense_s": dense_s, "compact_s": small_s, "speedup": dense_s / small_s})
    return rows


def _report(
    *,
    run_dir: Path,
    step: int,
    checkpoint: Path,
    compacted: CompactModel,
    flops: tuple[dict[str, int], dict[str, int]],
    accuracy: tuple[float, float, int],
    speed: list[dict[str, float]],
) -> dict[str, Any]:
    before_flops, after_flops = flops
    layers = [
        {
            "name": leaf.name,
            "before": list(leaf.before),
            "after": list(leaf.after),
            "parameters_before": int(np.prod(leaf.before)),
            "parameters_after": int(np.prod(leaf.after)),
            "flops_before": before_flops.get(leaf.name, 0),
            "flops_after": after_flops.get(leaf.name, 0),
            "kept_because": {str(axis): reason for axis, reason in leaf.kept_because.items()},
        }
        for leaf in compacted.report
    ]
    params_before, params_after = compacted.parameter_counts
    total_before, total_after = sum(before_flops.values()), sum(after_flops.values())
    return {
        "run_dir": str(run_dir),
        "step": step,
        "checkpoint": str(checkpoint),
        "layers": layers,
        "parameters": {"before": params_before, "after": params_after, "ratio": params_after / params_before},
        "flops_per_example": {"before": total_before, "after": total_after, "ratio": total_after / total_before},
        "test_accuracy": {
            "original": accuracy[0],
            "compacted": accuracy[1],
            "predictions_differing": accuracy[2],
        },
        "speed": speed,
        "device": str(jax.devices()[0].device_kind),
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Compacted model of {report['run_dir']} (step {report['step']})",
        "",
        "| leaf | shape before | shape after | FLOPs before | FLOPs after |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    for layer in report["layers"]:
        lines.append(
            f"| {layer['name']} | {tuple(layer['before'])} | {tuple(layer['after'])} | {layer['flops_before']:,} | "
            f"{layer['flops_after']:,} |"
        )
    params, flops, accuracy = report["parameters"], report["flops_per_example"], report["test_accuracy"]
    lines += [
        "",
        f"- parameters: {params['before']:,} -> {params['after']:,} ({params['ratio']:.3f}x)",
        f"- FLOPs per example: {flops['before']:,} -> {flops['after']:,} ({flops['ratio']:.3f}x)",
        f"- test accuracy: original {accuracy['original']:.4f}, compacted {accuracy['compacted']:.4f} "
        f"({accuracy['predictions_differing']} predictions differ)",
        "",
        f"Median wall time of one jitted forward pass on {report['device']}:",
        "",
        "| batch | dense (ms) | compacted (ms) | speedup | FLOPs ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["speed"]:
        lines.append(
            f"| {row['batch_size']} | {row['dense_s'] * 1e3:.3f} | {row['compact_s'] * 1e3:.3f} | "
            f"{row['speedup']:.2f}x | {flops['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def run_compact_command(args: argparse.Namespace) -> None:
    """Runs ``jaxsparse compact`` with parsed ``args`` and prints a short summary.

    Raises:
      ConfigError: as :func:`compact_run`.
    """
    report = compact_run(args.run_dir, out=args.out, batch_sizes=args.batch_sizes, on_unsupported=args.on_unsupported)
    params, flops, accuracy = report["parameters"], report["flops_per_example"], report["test_accuracy"]
    speedups = ", ".join(f"{row['speedup']:.2f}x at batch {row['batch_size']}" for row in report["speed"])
    out = Path(args.out or Path(args.run_dir) / "compact")
    print(
        f"compacted {args.run_dir} (step {report['step']}): parameters {params['before']:,} -> {params['after']:,}, "
        f"FLOPs {flops['ratio']:.3f}x of dense, test accuracy {accuracy['original']:.4f} -> "
        f"{accuracy['compacted']:.4f}, measured speedup {speedups}; written to {out}"
    )
