"""The training loop: one config in, a trained model, a metrics log, checkpoints and a report out.

Every step runs one compiled function, ``train_step(params, model_state, opt_state, batch)``, with
the first three arguments' buffers donated: the forward pass sees ``jsp.forward_params`` (the
masked weights), the wrapper receives the dense gradient, and ``optax.apply_updates`` lands the
parameters exactly on the masks. Evaluation is a second compiled function over the whole test
split in fixed-size batches (the last one padded and weighted out, so it compiles once).

A run is a pure function of its config: the model's init key and the mask key are split from
``jax.random.key(seed)``, batch ``t`` is a pure function of ``(seed, t)``, and mask updates use
``fold_in(key, t)``. So a run resumed from any checkpoint finishes bit-identical to one that never
stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxsparse as jsp
from jaxsparse.data import Dataset, eval_batches, load_dataset, train_batches
from jaxsparse.inspection import inference_flops_ratio, layer_flops, training_flops_ratio
from jaxsparse.masks import Masks, Params
from jaxsparse.models import create_model
from jaxsparse.training._build import make_algorithm, make_optimizer, model_spec
from jaxsparse.training._checkpoint import Checkpoints, NoIntactCheckpointError
from jaxsparse.training._config import Config, ConfigError
from jaxsparse.training._initial_masks import initial_masks
from jaxsparse.training._metrics import MetricsLog, mask_change
from jaxsparse.training._plots import plot_run
from jaxsparse.training._replicas import Replicas
from jaxsparse.training._report import run_report

__all__ = ["TrainResult", "make_train_step", "train"]

# The keys of --init's scores come from their own stream of the mask key, which sparsify splits.
_INIT_MASKS_STREAM = 0x1717


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      config: the run's config (with ``out_dir`` filled in).
      out_dir: the results folder.
      params: the final parameters (sparse runs: exactly zero off the masks, except Top-KAST,
        which stores weights densely and applies its forward masks in ``jsp.forward_params``).
      model_state: the model's mutable collections (e.g. ``batch_stats``); empty if none.
      opt_state: the optimizer state; a :class:`jaxsparse.SparsifyState` for sparse methods.
      masks: the final forward masks (``None`` for dense training).
      metrics: the rows of ``metrics.jsonl``, one per evaluation.
      report: the contents of ``summary.json``.
    """

    config: Config
    out_dir: Path
    params: Params
    model_state: dict[str, Any]
    opt_state: optax.OptState
    masks: Masks | None
    metrics: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def accuracy(self) -> float:
        """The final test accuracy."""
        return self.metrics[-1]["test_accuracy"]


def _with_out_dir(config: Config) -> Config:
    if config.out_dir is not None:
        return config
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return config.replace(out_dir=str(Path("runs") / f"{config.method}-{config.model}-{config.dataset}-{stamp}"))


def _model_params(params: Params, opt_state: optax.OptState, sparse: bool) -> Params:
    """The weights the model computes with: masked (``jsp.forward_params``) for sparse runs."""
    return jsp.forward_params(params, opt_state) if sparse else params


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    sparse: bool,
    replicas: Replicas | None = None,
    state_axes: Any = None,
) -> Callable:
    """The jitted step :func:`train` runs: ``(params, model_state, opt_state, batch) -> (..., loss)``.

    Softmax cross-entropy of ``model`` on ``batch = {"inputs", "labels"}``. Sparse steps differentiate
    at ``jsp.forward_params(params, opt_state)`` (the masked weights; the gradient there is the dense
    gradient RigL ranks by) and pass it to ``tx``, a ``jsp.sparsify``-wrapped optimizer; dense steps
    use ``tx`` as it is. ``model_state`` holds mutable collections such as ``batch_stats`` (``{}`` if
    none). The buffers of ``params``, ``model_state`` and ``opt_state`` are donated. With
    ``replicas`` (P-GaP) the step runs on every replica at once (``state_axes``: the optimizer
    state's ``vmap`` axes) and returns the replicas' mean loss.

    Example:
      >>> import optax
      >>> from jaxsparse.models import create_model
      >>> model = create_model("mlp", num_classes=3, input_shape=(4,))
      >>> step = make_train_step(model, optax.sgd(0.1), sparse=False)
    """

    def loss_fn(params, model_state, batch):
        logits, new_model_state = model.apply(
            {"params": params, **model_state}, batch["inputs"], train=True, mutable=list(model_state)
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return loss, new_model_state

    def train_step(params, model_state, opt_state, batch):
        # The gradient with respect to the masked weights is the dense gradient RigL ranks by.
        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            _model_params(params, opt_state, sparse), model_state, batch
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss

    if replicas is not None:
        train_step = replicas.vmap_step(train_step, state_axes)
    return jax.jit(train_step, donate_argnums=(0, 1, 2))


def _make_evaluate(model: nn.Module, dataset: Dataset, batch_size: int, sparse: bool) -> Callable:
    batch_size = min(batch_size, len(dataset.test))

    @jax.jit
    def eval_step(params, model_state, opt_state, inputs, labels, weights):
        logits = model.apply({"params": _model_params(params, opt_state, sparse), **model_state}, inputs, train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return jnp.sum(losses * weights), jnp.sum(correct * weights)

    def evaluate(params, model_state, opt_state) -> tuple[float, float]:
        """Mean test loss and test accuracy over the whole test split."""
        loss = correct = 0.0
        for batch in eval_batches(dataset, batch_size=batch_size):
            size = len(batch["labels"])
            pad = [(0, batch_size - size)]
            inputs = np.pad(batch["inputs"], pad + [(0, 0)] * (batch["inputs"].ndim - 1))
            labels = np.pad(batch["labels"], pad)
            weights = np.pad(np.ones(size, np.float32), pad)
            batch_loss, batch_correct = eval_step(params, model_state, opt_state, inputs, labels, weights)
            loss, correct = loss + batch_loss, correct + batch_correct
        return float(loss) / len(dataset.test), float(correct) / len(dataset.test)

    return evaluate


def _host_masks(opt_state: optax.OptState, sparse: bool) -> Masks | None:
    """A host copy of the forward masks: the device buffers are donated to the next step."""
    return jax.tree.map(np.array, jsp.masks_of(opt_state)) if sparse else None


def _init_variables(model: nn.Module, dataset: Dataset, key: jax.Array) -> dict[str, Any]:
    """The model's initial variables (``params`` and mutable collections such as ``batch_stats``)."""
    init = jax.jit(functools.partial(model.init, train=False))
    return dict(init(key, jnp.zeros((1, *dataset.input_shape), jnp.float32)))


def _initial_state(
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    sparse: bool,
    replicas: Replicas | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything a checkpoint holds, at step 0: parameters on their masks, accumulators at zero.

    ``loss_sum`` is the sum of training losses since the last evaluation and ``eval_masks`` (sparse
    runs) the masks at the last evaluation, from which the next row's mask change is measured.
    Returns the state and its ``vmap`` axes over replicas (all ``None``: one model).
    """
    variables = dict(variables)
    params = variables.pop("params")
    if replicas is None:
        opt_state, opt_axes = jax.jit(tx.init)(params), None
    else:
        params, variables = replicas.stack(params), replicas.stack(variables)
        opt_state, opt_axes = replicas.init(tx, params)
    state = {"params": params, "model_state": variables, "opt_state": opt_state, "loss_sum": jnp.zeros(())}
    one = None if replicas is None else 0
    axes = {"params": one, "model_state": one, "opt_state": opt_axes, "loss_sum": None}
    if sparse:
        if not opt_state.algorithm.stores_dense:  # Top-KAST stores its weights densely
            state["params"] = jsp.apply_masks(params, jsp.masks_of(opt_state))
        state["eval_masks"], axes["eval_masks"] = _host_masks(_first(state, axes)["opt_state"], sparse), None
    return state, axes


def _check_layout(algorithm: jsp.SparseAlgorithm, shapes: Params, config: Config) -> None:
    """Plans the model's parameter shapes before anything runs: a structure that does not fit is a ConfigError."""
    try:
        algorithm.plan(shapes)
    except ValueError as error:
        raise ConfigError(
            f"{error} On the command line: --keep-dense PATTERN keeps layers dense (e.g. --keep-dense Conv), "
            f"or choose another --structure (now {config.structure!r})."
        ) from None


def _first(state: dict[str, Any], axes: dict[str, Any]) -> dict[str, Any]:
    """Replica 0 of a replicated run's state (the state itself for one model)."""
    return Replicas.first(state, axes)


def _check_resume(config: Config, checkpoints: Checkpoints, resume: bool) -> None:
    """Refuses to overwrite a run, and to resume one with settings that would change its trajectory."""
    steps = checkpoints.steps()
    if not steps:
        return
    if not resume:
        raise ConfigError(
            f"out_dir {config.out_dir!r} already holds a run (checkpointed at step {steps[-1]}): continue it "
            f"with resume=True (jaxsparse train --resume {config.out_dir}), or choose another out_dir (--out)."
        )
    record = checkpoints.read_record()
    if record is None:  # no checkpoint has a readable record: _resume names each one as damaged
        return
    saved = Config.from_dict(record["config"])
    different = config.mismatches(saved)
    if different:
        details = ", ".join(
            f"{name} (checkpoint {getattr(saved, name)!r}, requested {getattr(config, name)!r})" for name in different
        )
        raise ConfigError(
            f"cannot resume {config.out_dir!r}: these settings differ from the checkpointed run: {details}. Resume "
            "with the run's own settings, or start a new run in another out_dir."
        )


def _resume(
    config: Config, checkpoints: Checkpoints, state: dict[str, Any], resume: bool, total_steps: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state and record the run starts from: the newest intact checkpoint, else step 0.

    A resume says on stderr where it starts and which checkpoints it found damaged, whatever
    ``progress`` is: a run that quietly started over, or fell back to an older checkpoint, would
    pass for a bug. It never starts over from damaged checkpoints: with none intact it refuses.
    """
    start = {"step": 0, "wall_time": 0.0, "last_eval_step": 0}
    if not resume:  # _check_resume made sure there is no checkpoint
        return state, start
    if not checkpoints.steps():
        print(f"no checkpoint in {checkpoints.directory}: starting from step 0", file=sys.stderr)
        return state, start
    try:
        restored = checkpoints.restore_latest_intact(state)
    except NoIntactCheckpointError as error:
        raise ConfigError(
            f"cannot resume {config.out_dir!r}: {error}. To start over from step 0, delete {checkpoints.directory} "
            "and resume again; to keep it for inspection, start a new run in another out_dir (--out) instead."
        ) from None
    for damaged in restored.damaged:
        print(f"{damaged}; moved it to {checkpoints.damaged_directory / str(damaged.step)}", file=sys.stderr)
    where = f"step {restored.step} (checkpoint {restored.path})"
    done = restored.step >= total_steps
    print(f"run already complete at {where}" if done else f"resuming from {where}", file=sys.stderr)
    return restored.state, restored.record


def train(config: Config, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Trains ``config.model`` on ``config.dataset`` with ``config.method`` and writes the results.

    The results folder ``config.out_dir`` (default ``runs/<method>-<model>-<dataset>-<time>``)
    receives ``config.json``, ``metrics.jsonl`` / ``metrics.csv`` (one row per evaluation: step,
    train loss, test loss, test accuracy, sparsity, mask change, wall time), ``checkpoints/``,
    ``summary.json`` (final accuracy, per-layer sparsity, FLOPs ratios, versions) and the plots
    ``curves.png``, ``layer_sparsity.png`` and ``mask_change.png``.

    Args:
      config: the run's settings.
      resume: continue from the newest intact checkpoint in ``config.out_dir`` if there is one
        (else start afresh), and say on stderr which one, and which newer ones were damaged and set
        aside. The settings that define the trajectory must equal the checkpointed run's; where
        results go and how often to evaluate or checkpoint may change. Without ``resume``, an
        ``out_dir`` that already holds checkpoints is an error, so no run is overwritten.
      progress: show a tqdm progress bar with the latest loss, accuracy and sparsity.

    Returns:
      The final state, metrics and report.

    Raises:
      ConfigError: ``out_dir`` holds a run and ``resume`` is false, the settings differ from the
        checkpointed run's (the message names the fields), or every checkpoint is damaged (the
        message names each one, why, and the fix).
    """
    config = _with_out_dir(config)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Checkpoints(out_dir / "checkpoints", keep=config.keep_checkpoints) as checkpoints:
        _check_resume(config, checkpoints, resume)
        config.save(out_dir / "config.json")

        dataset = load_dataset(config.dataset, data_dir=config.data_dir)
        model = create_model(config.model, num_classes=dataset.num_classes, input_shape=dataset.input_shape)
        spec = model_spec(model, dataset.input_shape)
        algorithm = make_algorithm(config, spec)
        sparse = algorithm is not None
        if sparse:
            _check_layout(algorithm, spec.params, config)
        replicas = Replicas.for_algorithm(algorithm, config.batch_size)
        mesh = contextlib.nullcontext() if replicas is None else jax.set_mesh(replicas.mesh)
        init_key, mask_key = jax.random.split(jax.random.key(config.seed))
        variables = _init_variables(model, dataset, init_key)
        batches = train_batches(dataset, batch_size=config.batch_size, seed=config.seed)
        chosen = None
        if config.init is not None:
            init_masks_key = jax.random.fold_in(mask_key, _INIT_MASKS_STREAM)
            chosen = initial_masks(config, algorithm, model, dataset, variables, batches[0], init_masks_key)
            algorithm = chosen.algorithm
        optimizer = make_optimizer(config)
        tx = (
            jsp.sparsify(optimizer, algorithm, key=mask_key, masks=None if chosen is None else chosen.masks)
            if sparse
            else optimizer
        )
        with mesh:
            state, axes = _initial_state(variables, tx, sparse, replicas)
        total_steps = algorithm.total_steps(config.steps) if sparse else config.steps
        rounds = sparse and algorithm.round_of(0) is not None
        state, record = _resume(config, checkpoints, state, resume, total_steps)
        log = MetricsLog(out_dir, keep_until=record["step"] if record["step"] else None, rounds=rounds)

        train_step = make_train_step(model, tx, sparse, replicas, axes["opt_state"])
        evaluate = _make_evaluate(model, dataset, config.eval_batch_size, sparse)
        place = (
            (lambda batch: batch)
            if replicas is None
            else functools.partial(jax.device_put, device=replicas.batch_sharding())
        )
        step, last_eval = record["step"], record["last_eval_step"]
        started = time.perf_counter() - record["wall_time"]
        first_step = step
        bar = tqdm(total=total_steps, initial=step, desc=config.method, unit="step", disable=not progress)
        while step < total_steps:
            with mesh:
                params, model_state, opt_state, loss = train_step(
                    state["params"], state["model_state"], state["opt_state"], place(batches[step])
                )
            if step == first_step:
                # That call compiled the step. Start the bar's clock now, so that its rate and time
                # left measure training steps; a first estimate of "16 s/step, 27 h" was compilation.
                bar.unpause()
            state.update(params=params, model_state=model_state, opt_state=opt_state, loss_sum=state["loss_sum"] + loss)
            step += 1
            bar.update()
            # The last step of a round is evaluated and checkpointed: the round's result, and its rewind point.
            round_ends = rounds and algorithm.round_of(step) != algorithm.round_of(step - 1)
            if step % config.eval_every == 0 or step == total_steps or round_ends:
                row = _evaluate_row(evaluate, state, axes, step, last_eval, sparse, time.perf_counter() - started)
                if rounds:
                    row["round"] = algorithm.round_of(step - 1)
                log.append(row)
                bar.set_postfix(
                    loss=f"{row['train_loss']:.3f}",
                    acc=f"{row['test_accuracy']:.3f}",
                    sparsity=f"{row['sparsity']:.3f}",
                )
                last_eval = step
            if step % config.checkpoint_every == 0 or step == total_steps or round_ends:
                wall_time = time.perf_counter() - started
                record = {"step": step, "config": config.to_dict(), "wall_time": wall_time, "last_eval_step": last_eval}
                checkpoints.save(step, state, record)
        bar.close()
    init_report = None if chosen is None else chosen.report(config)
    return _finish(config, model, dataset, algorithm, _first(state, axes), log.rows, record["wall_time"], init_report)


def _evaluate_row(
    evaluate: Callable,
    state: dict[str, Any],
    axes: dict[str, Any],
    step: int,
    last_eval: int,
    sparse: bool,
    wall_time: float,
) -> dict[str, Any]:
    """Evaluates on the test split (replica 0 of a replicated run); returns the row and resets the accumulators."""
    first = _first(state, axes)
    test_loss, accuracy = evaluate(first["params"], first["model_state"], first["opt_state"])
    masks = _host_masks(first["opt_state"], sparse)
    row = dict(
        step=step,
        train_loss=float(state["loss_sum"]) / (step - last_eval),
        test_loss=test_loss,
        test_accuracy=accuracy,
        sparsity=jsp.total_sparsity(masks) if sparse else 0.0,
        mask_change=mask_change(state["eval_masks"], masks) if sparse else 0.0,
        wall_time=wall_time,
    )
    state["loss_sum"] = jnp.zeros(())
    if sparse:
        state["eval_masks"] = masks
    return row


def _finish(
    config: Config,
    model: nn.Module,
    dataset: Dataset,
    algorithm: jsp.SparseAlgorithm | None,
    state: dict[str, Any],
    rows: list[dict[str, Any]],
    wall_time: float,
    init_report: dict[str, Any] | None,
) -> TrainResult:
    """Writes ``summary.json`` and the plots, and returns the result."""
    params, model_state, opt_state = state["params"], state["model_state"], state["opt_state"]
    sparse = algorithm is not None
    masks = _host_masks(opt_state, sparse)
    inference_params = _model_params(params, opt_state, sparse)
    stats_masks = masks if sparse else jax.tree.map(lambda _: None, params)
    stats = jsp.layer_stats(inference_params, stats_masks)
    regularizer = None if algorithm is None or algorithm.regularizer is None else algorithm.regularizer
    regularizer_summary = (
        None if regularizer is None else regularizer.summary(inference_params, algorithm.plan(inference_params))
    )
    report = run_report(
        config,
        rows=rows,
        stats=stats,
        table=jsp.summary(inference_params, stats_masks),
        flops=_flops(config, model, dataset, params, model_state, opt_state, algorithm),
        wall_time=wall_time,
        init=init_report,
        regularizer=regularizer_summary,
    )
    out_dir = Path(config.out_dir)
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_run(rows, stats, out_dir, config=config, regularizer=regularizer_summary)
    return TrainResult(config, out_dir, params, model_state, opt_state, masks, list(rows), report)


def _flops(
    config: Config, model: nn.Module, dataset: Dataset, params, model_state, opt_state, algorithm
) -> dict[str, float]:
    """Dense FLOPs of one example's forward pass, and the run's inference and training FLOPs ratios to dense."""
    dense = layer_flops(
        lambda p, x: model.apply({"params": p, **model_state}, x, train=False),
        params,
        jnp.zeros((1, *dataset.input_shape), jnp.float32),
    )
    if algorithm is None:
        return {"dense_forward_flops": float(sum(dense.values())), "inference_ratio": 1.0, "training_ratio": 1.0}
    return {
        "dense_forward_flops": float(sum(dense.values())),
        "inference_ratio": inference_flops_ratio(dense, opt_state),
        "training_ratio": training_flops_ratio(algorithm, dense, opt_state, total_steps=config.steps),
    }
