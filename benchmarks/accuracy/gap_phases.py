"""GaP's "grow, then prune" sawtooth: each partition's density over a real training run.

Trains LeNet-5 on MNIST-1D with cyclic GaP at 90% uniform sparsity (first layer dense), with the
harness's model, data, optimizer and train step, and records after every step the density of each
partition (active weights over its weights) and the test accuracy at every evaluation. The
partition that is dense reads 1.0; the others sit at their target until their turn.

    python -m benchmarks.accuracy.gap_phases          # 3000 steps, 3 partitions, 4 rounds
    python -m benchmarks.accuracy.gap_phases --quick  # 60 steps
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

import jaxsparse as jsp
from benchmarks.common import argument_parser, output_path, write_results
from jaxsparse.training import Config, make_algorithm, make_optimizer, make_train_step
from jaxsparse.training._loop import _init_variables, _initial_state, _make_evaluate


def run(config: Config) -> dict[str, Any]:
    """One C-GaP run; per-step partition densities and per-evaluation accuracy."""
    from jaxsparse.data import load_dataset, train_batches
    from jaxsparse.models import create_model

    dataset = load_dataset(config.dataset)
    model = create_model(config.model, num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    algorithm = make_algorithm(config)
    init_key, mask_key = jax.random.split(jax.random.key(config.seed))
    tx = jsp.sparsify(make_optimizer(config), algorithm, key=mask_key)
    state, _ = _initial_state(_init_variables(model, dataset, init_key), tx, True, None)
    owners = algorithm.partition_of(state["params"])
    step_fn = make_train_step(model, tx, True)
    evaluate = _make_evaluate(model, dataset, config.eval_batch_size, True)
    batches = train_batches(dataset, batch_size=config.batch_size, seed=config.seed)
    kappa = algorithm.num_partitions
    densities, accuracy = [], []
    for step in range(config.steps):
        params, model_state, opt_state, _ = step_fn(
            state["params"], state["model_state"], state["opt_state"], batches[step]
        )
        state.update(params=params, model_state=model_state, opt_state=opt_state)
        masks = jax.tree.leaves(jsp.masks_of(opt_state))
        sparsified = [o for o in owners if o is not None]
        row = []
        for p in range(kappa):
            layer = [np.asarray(m) for m, o in zip(masks, sparsified, strict=True) if o == p]
            row.append(sum(int(m.sum()) for m in layer) / sum(m.size for m in layer))
        densities.append(row)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            accuracy.append([step + 1, evaluate(params, model_state, opt_state)[1]])
    plans = algorithm.plan(state["params"])
    return {
        "partitions": [[plans[i].name for i, o in enumerate(owners) if o == p] for p in range(kappa)],
        "steps_per_phase": algorithm.steps_per_phase,
        "rounds": algorithm.rounds,
        "final_prune_step": algorithm.final_step,
        "density": densities,
        "test_accuracy": accuracy,
        "final_sparsity": jsp.total_sparsity(opt_state),
    }


def plot(record: dict[str, Any]) -> Figure:
    result = record["result"]
    figure = Figure(figsize=(9, 4.5))
    axes = figure.subplots()
    density = np.asarray(result["density"])
    for p, names in enumerate(result["partitions"]):
        axes.plot(np.arange(1, len(density) + 1), density[:, p], label=f"partition {p}: {', '.join(names)}")
    axes.axvline(result["final_prune_step"], color="grey", linestyle=":", label="final prune")
    axes.set_xlabel("step")
    axes.set_ylabel("density of the partition (active / weights)")
    settings = record["config"]
    axes.set_title(
        f"C-GaP on {settings['dataset']} / {settings['model']}, {settings['sparsity']:.0%} {settings['distribution']}: "
        f"T={result['steps_per_phase']}, R={result['rounds']}"
    )
    twin = axes.twinx()
    steps, acc = zip(*result["test_accuracy"], strict=True)
    twin.plot(steps, acc, color="black", marker=".", linewidth=0.8, label="test accuracy")
    twin.set_ylabel("test accuracy")
    axes.legend(loc="center right", fontsize=7)
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = argument_parser(__doc__).parse_args(argv)
    steps = 60 if args.quick else 3000
    options = (("gap_partitions", 3), ("gap_rounds", 1 if args.quick else 4))
    config = Config(
        method="gap",
        dataset="mnist1d",
        model="lenet5",
        sparsity=0.9,
        distribution="uniform",
        dense_first_layer=True,
        steps=steps,
        eval_every=steps // 30,
        options=options,
    )
    record = {"benchmark": "GaP phases", "config": config.to_dict(), "result": run(config)}
    write_results(record, output_path(args, "accuracy", "gap_phases"), plot)
    return record


if __name__ == "__main__":
    main()
