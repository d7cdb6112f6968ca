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

``--structures`` times the extra cost of mask structure instead, on the MLP alone: RigL at
unstructured, 2:4, 4x4 blocks, output channels and constant fan-in, SR-STE at 2:4 and SRigL, all at
50% uniform sparsity of the two hidden kernels (``workloads.STRUCTURE_VARIANTS``), each as a ratio
to dense and to unstructured RigL, side by side in the same rounds. SR-STE recomputes its mask
every step, so its normal and update steps are the same computation.

Every step is the library's own (``jaxsparse.training.make_train_step``: jitted, buffers donated,
outputs fed back in as in training). Each round runs every variant once in a shuffled order and the
medians are compared, so machine noise hits all variants alike; read the ratios, not the absolute
times. The script checks that nothing recompiles while it times, that a normal step leaves every
mask unchanged (unless the algorithm updates every step) and that an update step of SET, RigL and
Top-KAST changes some.

Rerun from the repository root::

    python -m benchmarks.speed.step_time                # full: about 10 min on 2 CPU cores
    python -m benchmarks.speed.step_time --structures   # RigL per structure, MLP: about 2 min
    python -m benchmarks.speed.step_time --quick        # a tiny model: seconds (CI; with --structures too)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
    STRUCTURE_SETTINGS,
    STRUCTURE_VARIANTS,
    UPDATE_EVERY,
    Trainer,
    Workload,
    build_trainer,
)

WARMUP_STEPS = 2
CHANGING_MASKS = ("set", "rigl", "top_kast")
QUICK_METHODS = ("static", "rigl", "top_kast")
"""The methods ``--quick`` compiles: fixed masks, drop and grow, two nested masks (CI checks the machinery)."""
QUICK_STRUCTURES = ("rigl unstructured", "rigl block:4x4", "nm_sr_ste 2:4")
"""The structure variants ``--quick --structures`` compiles: the baseline, a grouped structure, SR-STE."""


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


def _variants(methods: Collection[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each method at its defaults, labelled by its name."""
    return {method: (method, {}) for method in methods}


def bench_workload(
    workload: Workload,
    seed: int,
    variants: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
    changing: Collection[str] = CHANGING_MASKS,
) -> dict[str, Any]:
    """Times ``variants`` (label: method and :func:`~benchmarks.speed.workloads.build_trainer` keywords) against dense.

    The default variants are :data:`~benchmarks.speed.workloads.METHODS`, each at its defaults. An
    update step of each variant labelled in ``changing`` (and timed) must change some mask entries; every
    variant's changes are recorded in ``checks``.
    """
    variants = variants or _variants(METHODS)
    print(f"{workload.label}: compiling", flush=True)
    trainers = {"dense": build_trainer(workload, "dense", seed)}
    for label, (method, settings) in variants.items():
        trainers[label] = build_trainer(workload, method, seed, **settings)
    counters = {label: StepCounter() for label in variants}
    calls = {"dense": trainers["dense"].step}
    for label in variants:
        trainer, counter = trainers[label], counters[label]
        calls[f"{label}/normal"] = lambda t=trainer, c=counter: t.step(c.normal())
        if trainer.opt_state.algorithm.schedule is not None:  # static masks have no update branch
            calls[f"{label}/update"] = lambda t=trainer, c=counter: t.step(c.update())
    for _ in range(WARMUP_STEPS):
        for call in calls.values():
            jax.block_until_ready(call())

    checks = {}
    for label in variants:
        schedule = trainers[label].opt_state.algorithm.schedule
        every_step = schedule is not None and schedule.update_every == 1  # SR-STE: each step is an update
        normal_change = masks_changed(trainers[label], counters[label].normal())
        update_change = masks_changed(trainers[label], counters[label].update())
        if (normal_change and not every_step) or (label in changing and not update_change):
            raise RuntimeError(
                f"{label}: a normal step changed {normal_change} mask entries, an update {update_change}"
            )
        checks[label] = {"mask_changes_normal_step": normal_change, "mask_changes_update_step": update_change}

    cache_sizes = {method: trainer.step_fn._cache_size() for method, trainer in trainers.items()}
    print(f"{workload.label}: timing {workload.rounds} rounds of {len(calls)} variants", flush=True)
    samples = interleaved_times(calls, workload.rounds, seed)
    recompiled = [m for m, t in trainers.items() if t.step_fn._cache_size() != cache_sizes[m]]
    if recompiled:
        raise RuntimeError(f"the step of {recompiled} recompiled while being timed")

    times = {name: summarize_ms(values) for name, values in samples.items()}
    dense = times["dense"]["median_ms"]
    ratios = {}
    for label in variants:
        normal = times[f"{label}/normal"]["median_ms"]
        update = times.get(f"{label}/update", times[f"{label}/normal"])["median_ms"]
        ratios[label] = {
            "normal": normal / dense,
            "update": update / dense,
            "amortised": ((UPDATE_EVERY - 1) * normal + update) / UPDATE_EVERY / dense,
        }
        print(
            f"  {label:>18}: normal {ratios[label]['normal']:.2f}x, update {ratios[label]['update']:.2f}x, "
            f"amortised {ratios[label]['amortised']:.2f}x (dense {dense:.2f} ms)",
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


def relative_to(ratios: Mapping[str, Mapping[str, float]], baseline: str) -> dict[str, dict[str, float]]:
    """Each variant's ratios divided by ``baseline``'s (dense cancels: a ratio of step times)."""
    base = ratios[baseline]
    return {label: {kind: value / base[kind] for kind, value in cell.items()} for label, cell in ratios.items()}


def plot(record: dict[str, Any]) -> Figure:
    """One panel per workload and ratio (to dense; to the baseline variant if any): the three step kinds per variant."""
    import matplotlib.pyplot as plt

    panels = [
        (result, key, reference)
        for result in record["results"]
        for key, reference in (("ratio_to_dense", "dense step"), ("ratio_to_baseline", result.get("baseline")))
        if key in result
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    kinds = ("normal", "update", "amortised")
    for ax, (result, key, reference) in zip(axes[0], panels, strict=True):
        labels = list(result[key])
        x = np.arange(len(labels))
        for offset, kind in enumerate(kinds):
            ax.bar(x + (offset - 1) * 0.27, [result[key][label][kind] for label in labels], width=0.27, label=kind)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [label.replace(" " if " " in label else "_", "\n") for label in labels], fontsize=7)
        if max(cell["update"] for cell in result[key].values()) > 10:  # a costly update: the rest stays readable
            ax.set_yscale("log")
        ax.set_ylabel(f"step time / {reference}")
        dense_ms = result["times"]["dense"]["median_ms"]
        ax.set_title(f"{result['workload']} (dense {dense_ms:.1f} ms)", fontsize=9)
    axes[0][0].legend(fontsize=8)
    settings = record["settings"]
    fig.suptitle(
        f"Step time, {settings['sparsity']}, update every {settings['update_every']} "
        f"({record['environment']['device_kind']})",
        fontsize=10,
    )
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--seed", type=int, default=0, help="seed of data, params, masks and the variant order")
    parser.add_argument(
        "--structures",
        action="store_true",
        help="time RigL per mask structure, SR-STE and SRigL on the MLP (writes results/speed/structures.json)",
    )
    args = parser.parse_args(argv)
    workloads = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    settings = {
        "optimizer": "optax.sgd(0.1, momentum=0.9)",
        "sparsity": "90%, ERK; Top-KAST backward 80%",
        "update_every": UPDATE_EVERY,
        "warmup_steps": WARMUP_STEPS,
        "timing": "interleaved rounds, shuffled order, block_until_ready, medians",
    }
    if not args.structures:
        record = {
            "benchmark": "step time",
            "quick": args.quick,
            "settings": settings,
            "results": [
                bench_workload(workload, args.seed, _variants(QUICK_METHODS if args.quick else METHODS))
                for workload in workloads
            ],
        }
        write_results(record, output_path(args, "speed", "step_time"), plot)
        return record
    variants = {
        label: (method, {"structure": structure, **STRUCTURE_SETTINGS})
        for label, (method, structure) in STRUCTURE_VARIANTS.items()
        if label in QUICK_STRUCTURES or not args.quick
    }
    baseline = next(iter(variants))
    # Not every structure's update changes a mask here (RigL at channels regrows the dead ReLU
    # neurons it dropped: their gradients are 0): the changes are recorded, not required.
    result = bench_workload(workloads[0], args.seed, variants, changing=())
    result["baseline"] = baseline
    result["ratio_to_baseline"] = relative_to(result["ratio_to_dense"], baseline)
    record = {
        "benchmark": "step time by structure",
        "quick": args.quick,
        "settings": {
            **settings,
            "sparsity": "50%, uniform over the two hidden kernels (the classifier dense)",
            "layout": STRUCTURE_SETTINGS,
            "variants": STRUCTURE_VARIANTS,
        },
        "results": [result],
    }
    write_results(record, output_path(args, "speed", "structures"), plot)
    return record


if __name__ == "__main__":
    main()
