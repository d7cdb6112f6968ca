"""Per-step time of sparse training through ``jsp.sparsify`` as a ratio to the dense step.

For each workload of :mod:`benchmarks.speed.workloads` (MLP 784-1024-1024-10, ResNet-20, a
Transformer block stack) and each method (static, SET, RigL, Top-KAST, gradual magnitude; 90%
sparsity, ERK, mask updates every 100 steps), three times are measured against the dense step of
the same model and optimizer (``optax.sgd(0.1, momentum=0.9)``):

* ``normal``: a step that does not update masks (the state's step counter is not a multiple of 100);
* ``update``: a mask-update step alone (the same compiled function with the counter set to a
  multiple of 100, so ``lax.cond`` takes the update branch: scores, top-k selections, optimizer
  slot resets);
* ``amortised``: ``(99 * normal + update) / 100``, the average step when masks update every 100
  steps.

Every step is the library's own (``jaxsparse.training.make_train_step``: jitted, buffers donated,
outputs fed back in as in training). Each round runs every variant once in a shuffled order and the
medians are compared, so machine noise hits all variants alike; read the ratios, not the absolute
times. The script checks that nothing recompiles while it times, that a normal step leaves every
mask unchanged and that an update step of SET, RigL and Top-KAST changes some.

Rerun from the repository root::

    python -m benchmarks.speed.step_time            # full: about 10 min on 2 CPU cores
    python -m benchmarks.speed.step_time --quick    # two tiny models: seconds (CI)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

import jaxsparse as jsp
from benchmarks.common import (
    argument_parser,
    changed_entries,
    interleaved_times,
    output_path,
    summarize_ms,
    write_results,
)
from benchmarks.speed.workloads import (
    FULL_WORKLOADS,
    METHODS,
    QUICK_WORKLOADS,
    UPDATE_EVERY,
    Trainer,
    Workload,
    build_trainer,
)

WARMUP_STEPS = 2
CHANGING_MASKS = ("set", "rigl", "top_kast")


class StepCounter:
    """Hands out step numbers: normal steps in the middle of an update interval, update steps on its start."""

    def __init__(self) -> None:
        self.interval = 1

    def normal(self) -> int:
        return self.interval * UPDATE_EVERY + UPDATE_EVERY // 2

    def update(self) -> int:
        self.interval += 1
        return self.interval * UPDATE_EVERY


def host_masks(trainer: Trainer) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jsp.masks_of(trainer.opt_state))]


def masks_changed(trainer: Trainer, at: int) -> int:
    """Positions whose mask changes in one step taken at step ``at``."""
    before = host_masks(trainer)
    trainer.step(at)
    return changed_entries(before, host_masks(trainer))


def bench_workload(workload: Workload, seed: int) -> dict[str, Any]:
    print(f"{workload.label}: compiling", flush=True)
    trainers = {method: build_trainer(workload, method, seed) for method in ("dense", *METHODS)}
    counters = {method: StepCounter() for method in METHODS}
    calls = {"dense": trainers["dense"].step}
    for method in METHODS:
        trainer, counter = trainers[method], counters[method]
        calls[f"{method}/normal"] = lambda t=trainer, c=counter: t.step(c.normal())
        if method != "static":  # static masks have no update branch
            calls[f"{method}/update"] = lambda t=trainer, c=counter: t.step(c.update())
    for _ in range(WARMUP_STEPS):
        for call in calls.values():
            jax.block_until_ready(call())

    checks = {}
    for method in METHODS:
        normal_change = masks_changed(trainers[method], counters[method].normal())
        update_change = masks_changed(trainers[method], counters[method].update())
        if normal_change or (method in CHANGING_MASKS and not update_change):
            raise RuntimeError(
                f"{method}: a normal step changed {normal_change} mask entries, an update {update_change}"
            )
        checks[method] = {"mask_changes_normal_step": normal_change, "mask_changes_update_step": update_change}

    cache_sizes = {method: trainer.step_fn._cache_size() for method, trainer in trainers.items()}
    print(f"{workload.label}: timing {workload.rounds} rounds of {len(calls)} variants", flush=True)
    samples = interleaved_times(calls, workload.rounds, seed)
    recompiled = [m for m, t in trainers.items() if t.step_fn._cache_size() != cache_sizes[m]]
    if recompiled:
        raise RuntimeError(f"the step of {recompiled} recompiled while being timed")

    times = {name: summarize_ms(values) for name, values in samples.items()}
    dense = times["dense"]["median_ms"]
    ratios = {}
    for method in METHODS:
        normal = times[f"{method}/normal"]["median_ms"]
        update = times[f"{method}/update"]["median_ms"] if method != "static" else normal
        ratios[method] = {
            "normal": normal / dense,
            "update": update / dense,
            "amortised": ((UPDATE_EVERY - 1) * normal + update) / UPDATE_EVERY / dense,
        }
        print(
            f"  {method:>18}: normal {ratios[method]['normal']:.2f}x, update {ratios[method]['update']:.2f}x, "
            f"amortised {ratios[method]['amortised']:.2f}x (dense {dense:.2f} ms)",
            flush=True,
        )
    n_params = sum(leaf.size for leaf in jax.tree.leaves(trainers["dense"].params))
    return {
        "workload": workload.label,
        "model": workload.model,
        "input_shape": workload.input_shape,
        "batch_size": workload.batch_size,
        "options": workload.options,
        "parameters": n_params,
        "rounds": workload.rounds,
        "times": times,
        "ratio_to_dense": ratios,
        "checks": checks,
    }


def plot(record: dict[str, Any]) -> Figure:
    """One panel per workload: the three ratios to dense for every method."""
    import matplotlib.pyplot as plt

    results = record["results"]
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    kinds = ("normal", "update", "amortised")
    for ax, result in zip(axes[0], results, strict=True):
        x = np.arange(len(METHODS))
        for offset, kind in enumerate(kinds):
            values = [result["ratio_to_dense"][m][kind] for m in METHODS]
            ax.bar(x + (offset - 1) * 0.27, values, width=0.27, label=kind)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [m.replace("_", "\n") for m in METHODS], fontsize=8)
        ax.set_ylabel("step time / dense step")
        dense_ms = result["times"]["dense"]["median_ms"]
        ax.set_title(f"{result['workload']} (dense {dense_ms:.1f} ms)", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Sparse step vs dense step, 90% ERK, update every 100 ({record['environment']['device_kind']})")
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of data, params, masks and the variant order")
    args = parser.parse_args(argv)
    workloads = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    record = {
        "benchmark": "step time",
        "quick": args.quick,
        "settings": {
            "optimizer": "optax.sgd(0.1, momentum=0.9)",
            "sparsity": "90%, ERK; Top-KAST backward 80%",
            "update_every": UPDATE_EVERY,
            "warmup_steps": WARMUP_STEPS,
            "timing": "interleaved rounds, shuffled order, block_until_ready, medians",
        },
        "results": [bench_workload(workload, args.seed) for workload in workloads],
    }
    write_results(record, output_path(args, "speed", "step_time"), plot)
    return record


if __name__ == "__main__":
    main()
