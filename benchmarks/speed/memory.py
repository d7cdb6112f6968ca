"""Memory of a sparse training step against the dense one: live state, XLA's buffers, process peak.

What is measured
----------------
Two workloads of :mod:`benchmarks.speed.workloads` (``--models`` adds ResNet-20): an MLP
784-1024-1024-10 at batch 128 and a Transformer block stack (``vit``, one-token patches, 64 tokens
of width 256, 4 encoder blocks with 4 heads and MLP width 1024) at batch 32, 10 classes, trained
with ``optax.sgd(0.1, momentum=0.9)``: dense, or wrapped by ``jsp.sparsify`` around static, SET,
RigL, Top-KAST (backward set at 80%) and gradual magnitude pruning at 90% sparsity (ERK), masks
updated every 100 steps. The step is ``jaxsparse.training.make_train_step``, the one ``jaxsparse
train`` runs (jitted, params and optimizer state donated). For every (model, method) a fresh
subprocess builds the state, compiles the step, runs it 5 times (step 0, three normal steps, then
one with the state's step counter set to 100, a mask-update step) and reports:

1. **state bytes**, measured on the live arrays (sum of ``.nbytes`` over the leaves): params,
   the model's mutable state, and the optimizer state, which for sparse runs is broken down by
   field of ``jsp.SparsifyState`` (``inner_state``, ``masks``, ``step``, ``key``). Params are stored
   densely (zeros off the mask), so the expected sparse overhead is the masks, one byte per
   sparsified weight (two for Top-KAST's pair of masks), against 8 bytes per weight of float32
   params plus momentum;
2. **XLA's buffer assignment** of the compiled step, ``step.lower(*args).compile().memory_analysis()``:
   argument, output, alias (outputs written into donated arguments) and temp bytes, and
   ``peak = argument + output - alias + temp``, an upper bound on the device memory one call holds
   (every input, every output not written in place, and the whole scratch area at once). The temp
   area covers both branches of the mask update's ``lax.cond``, so it includes the selection's
   scratch. XLA's own ``peak_memory_in_bytes`` is recorded next to it as XLA reports it (it is
   not this sum and is usually lower);
3. **peak process memory**: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the resident-set
   high-water mark, KiB on Linux, bytes on macOS; recorded in bytes) after the steps, and, to show
   what the steps themselves add, after compilation. On CPU this peak includes the Python
   interpreter, the imported libraries and XLA's compilation memory, so it mixes the step's
   buffers with compiler overhead; the subprocesses isolate the variants from each other;
4. on a GPU or TPU, ``jax.devices()[0].memory_stats()["peak_bytes_in_use"]`` after the steps (CPU
   devices report no statistics: recorded as ``null``).

Every figure is also given as a ratio to the dense run of the same model. Memory does not depend on
CPU load, so the subprocesses run ``--jobs`` at a time. The environment variables that change
memory (``XLA_*``, ``JAX_*``, ``MALLOC_*``) are recorded; children set
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that concurrent runs can share an accelerator.

Checks (a failure stops the benchmark): every loss is finite; sparse params are exactly zero off
their masks (except Top-KAST, which keeps its weights dense by design); the forward masks hold the
method's sparsity (90%, or for gradual magnitude the sparsity its ramp schedules at step 100, which
is still near 0 because the shared workloads put the ramp's end at step 10^6); and the forced
mask-update step changed the masks of SET, RigL and Top-KAST.

``--quick`` measures only a tiny MLP (``--methods`` picks a subset of the methods) and lets its
subprocesses share the persistent compilation cache under ``benchmarks/results/quick/`` (as the
accuracy sweep's ``--quick`` does): most of a fresh process's cost is compiling the sparse
optimizer's init and step, so a repeated smoke test is fast, but its process peaks then leave out
compilation. Its numbers only prove that the script runs.

Rerun from the repository root::

    python -m benchmarks.speed.memory            # MLP + Transformer: ~2-3 min on 2 CPU cores
    python -m benchmarks.speed.memory --quick    # a tiny MLP: proves the script runs (CI)

``--out PATH.json`` chooses the JSON file; the plot is written next to it as ``PATH.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

import jaxsparse as jsp
from benchmarks.common import COMPILATION_CACHE, REPO_ROOT, argument_parser, changed_entries, output_path, write_results
from benchmarks.speed.workloads import (
    FULL_WORKLOADS,
    METHODS,
    QUICK_WORKLOADS,
    UPDATE_EVERY,
    Workload,
    build_trainer,
    make_algorithm,
)
from jaxsparse.training import compilation_cache

VARIANTS = ("dense", *METHODS)
DEFAULT_MODELS = ("mlp", "vit")
QUICK_MODELS = ("mlp",)  # each fresh process compiles the sparse init and step: keep the smoke test short
STEPS = 5  # the last one is forced onto a mask-update step
SPARSITY_TOLERANCE = 0.01  # per-layer floor counts on tiny layers move the total a little
DYNAMIC = ("set", "rigl", "top_kast")
RECORDED_ENV_PREFIXES = ("XLA_", "JAX_", "MALLOC_")
# ru_maxrss is in KiB on Linux and in bytes on macOS (getrusage(2)).
RU_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


def workloads(quick: bool, models: Sequence[str]) -> list[Workload]:
    """The shared workloads of ``models`` (``quick``: their tiny versions, where they exist)."""
    chosen = [w for w in (QUICK_WORKLOADS if quick else FULL_WORKLOADS) if w.model in models]
    if not chosen:
        raise ValueError(f"no {'quick ' if quick else ''}workload for models {list(models)}")
    return chosen


def tree_bytes(tree: Any) -> int:
    """The bytes of every array leaf of ``tree`` (``None`` leaves, e.g. dense layers' masks, hold none)."""
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(tree))


def state_bytes(params: Any, model_state: Any, opt_state: Any) -> dict[str, Any]:
    """Bytes of the live training state; a sparse optimizer state also by ``SparsifyState`` field."""
    fields = (
        {
            field.name: tree_bytes(getattr(opt_state, field.name))
            for field in dataclasses.fields(jsp.SparsifyState)
            if not field.metadata.get("static")
        }
        if isinstance(opt_state, jsp.SparsifyState)
        else None
    )
    parts = {"params": tree_bytes(params), "model_state": tree_bytes(model_state), "optimizer": tree_bytes(opt_state)}
    return {**parts, "optimizer_fields": fields, "total": sum(parts.values())}


def xla_memory(compiled: Any) -> dict[str, int]:
    """XLA's buffer assignment of ``compiled``, with ``peak = argument + output - alias + temp``."""
    stats = compiled.memory_analysis()
    record = {
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "temp_bytes": stats.temp_size_in_bytes,
        "generated_code_bytes": stats.generated_code_size_in_bytes,
        "xla_peak_memory_in_bytes": stats.peak_memory_in_bytes,
    }
    record["peak_bytes"] = (
        record["argument_bytes"] + record["output_bytes"] - record["alias_bytes"] + record["temp_bytes"]
    )
    return record


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_BYTES


def check_sparse_state(method: str, params: Any, opt_state: Any, masks_before_update: Any) -> dict[str, Any]:
    """Validates the state after the steps and returns what was checked; raises if the setup is wrong."""
    algorithm = make_algorithm(method)
    masks = jax.tree.map(np.asarray, jsp.masks_of(opt_state))
    sparsity = jsp.total_sparsity(masks)
    expected = (
        float(algorithm.sparsity_schedule(UPDATE_EVERY)) if method == "gradual_magnitude" else algorithm.layout.sparsity
    )
    if abs(sparsity - expected) > SPARSITY_TOLERANCE:
        raise RuntimeError(f"{method}: the masks are {sparsity:.4f} sparse after the steps, expected {expected:.4f}")
    if not opt_state.algorithm.stores_dense:  # Top-KAST keeps its weights dense by design
        pairs = zip(jax.tree.leaves(params), jax.tree.leaves(masks, is_leaf=lambda x: x is None), strict=True)
        off_mask = sum(int(np.count_nonzero(np.asarray(p)[~m])) for p, m in pairs if m is not None)
        if off_mask:
            raise RuntimeError(f"{method}: {off_mask} parameters are non-zero off their masks")
    changed = changed_entries(masks_before_update, masks)
    if method in DYNAMIC and not changed:
        raise RuntimeError(f"{method}: the forced mask-update step (step {UPDATE_EVERY}) left every mask unchanged")
    return {"sparsity": sparsity, "expected_sparsity": expected, "mask_entries_changed_by_update_step": changed}


def measure(workload: Workload, method: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """Everything this benchmark reports for one variant, measured in this process (a fresh one).

    ``cache_dir``: a persistent compilation cache to read and fill (``None``: compile everything).
    """
    sparse = method != "dense"
    with contextlib.nullcontext() if cache_dir is None else compilation_cache(cache_dir):
        trainer = build_trainer(workload, method)
        state = state_bytes(trainer.params, trainer.model_state, trainer.opt_state)
        step = trainer.step_fn.lower(trainer.params, trainer.model_state, trainer.opt_state, trainer.batch)
        xla = xla_memory(step.compile())
        rss_after_compile = max_rss_bytes()
        losses = [trainer.step()[-1] for _ in range(STEPS - 1)]
        # A host copy: the step donates the state's buffers.
        masks_before = jax.tree.map(np.array, jsp.masks_of(trainer.opt_state)) if sparse else None
        losses.append(trainer.step(at=UPDATE_EVERY if sparse else None)[-1])
        jax.block_until_ready(trainer.params)
    rss_peak = max_rss_bytes()
    device_stats = jax.devices()[0].memory_stats()
    losses = [float(loss) for loss in losses]
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"{method} on {workload.label}: non-finite losses {losses}")
    return {
        "method": method,
        "state_bytes": state,
        "xla": xla,
        "rss": {"peak_after_compile_bytes": rss_after_compile, "peak_bytes": rss_peak},
        "device_peak_bytes_in_use": device_stats.get("peak_bytes_in_use") if device_stats else None,
        "losses": losses,
        "check": check_sparse_state(method, trainer.params, trainer.opt_state, masks_before) if sparse else None,
    }


def measure_in_subprocess(model: str, method: str, quick: bool) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process, so that its peak memory is its own."""
    command = [sys.executable, "-m", "benchmarks.speed.memory", "--measure", model, method]
    command += ["--quick"] if quick else []
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {method} on {model} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def with_ratios(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each variant's state total, XLA peak, process peak and device peak as ratios to dense."""
    picks = {
        "state_bytes": lambda v: v["state_bytes"]["total"],
        "xla_peak": lambda v: v["xla"]["peak_bytes"],
        "xla_peak_memory_in_bytes": lambda v: v["xla"]["xla_peak_memory_in_bytes"],
        "process_peak_rss": lambda v: v["rss"]["peak_bytes"],
        "device_peak_bytes_in_use": lambda v: v["device_peak_bytes_in_use"],
    }
    dense = variants["dense"]
    for variant in variants.values():
        variant["ratio_to_dense"] = {
            name: None if pick(dense) is None else pick(variant) / pick(dense) for name, pick in picks.items()
        }
    return variants


PLOTTED = {
    "state_bytes": "live state bytes",
    "xla_peak": "XLA peak (arg + out - alias + temp)",
    "process_peak_rss": "process peak RSS",
    "device_peak_bytes_in_use": "device peak bytes in use",
}


def plot(record: dict[str, Any]) -> Figure:
    """Grouped bars of every ratio to dense per method, one panel per model."""
    import matplotlib.pyplot as plt

    models = record["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        variants = model["variants"]
        methods = list(variants)
        shown = [key for key in PLOTTED if variants["dense"]["ratio_to_dense"][key] is not None]
        width = 0.8 / len(shown)
        x = np.arange(len(methods))
        for index, key in enumerate(shown):
            values = [variants[m]["ratio_to_dense"][key] for m in methods]
            bars = ax.bar(x + (index - (len(shown) - 1) / 2) * width, values, width, label=PLOTTED[key])
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x, methods, rotation=20)
        ax.set_ylabel("ratio to dense")
        ax.set_title(model["label"])
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Memory of a training step, sparse (90%, ERK) vs dense")
    return fig


def table(record: dict[str, Any]) -> str:
    """The headline figures, one line per variant: state, XLA peak and process peak, with ratios."""
    lines = []
    for model in record["models"]:
        lines.append(f"{model['label']}: state MiB, XLA peak MiB, RSS peak MiB (ratios to dense)")
        for method, v in model["variants"].items():
            r = v["ratio_to_dense"]
            lines.append(
                f"  {method:<18} {v['state_bytes']['total'] / 2**20:8.2f} ({r['state_bytes']:.3f}x)"
                f" {v['xla']['peak_bytes'] / 2**20:8.2f} ({r['xla_peak']:.3f}x)"
                f" {v['rss']['peak_bytes'] / 2**20:8.1f} ({r['process_peak_rss']:.3f}x)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=sorted({w.model for w in FULL_WORKLOADS}),
        help="workloads to measure (default: mlp vit; --quick: mlp)",
    )
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="default: all")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses measuring at a time (default 2)")
    parser.add_argument(
        "--measure",
        nargs=2,
        metavar=("MODEL", "METHOD"),
        help="internal: measure one variant in this process and print its JSON",
    )
    args = parser.parse_args(argv)
    if args.measure is not None:
        model, method = args.measure
        result = measure(workloads(args.quick, [model])[0], method, COMPILATION_CACHE if args.quick else None)
        print(json.dumps(result), flush=True)
        return result
    chosen = workloads(args.quick, args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS))
    if "dense" not in args.methods:
        parser.error("--methods must include dense: every ratio is to the dense step")
    jobs = [(w, method) for w in chosen for method in args.methods]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: measure_in_subprocess(job[0].model, job[1], args.quick), jobs))
    by_model = {w.label: {} for w in chosen}
    for (workload, method), result in zip(jobs, results, strict=True):
        by_model[workload.label][method] = result
    record = {
        "benchmark": "memory of a training step",
        "quick": args.quick,
        "settings": {
            "optimizer": "optax.sgd(0.1, momentum=0.9)",
            "sparsity": "90% ERK (Top-KAST backward 80%)",
            "steps": f"{STEPS} per subprocess, the last at step {UPDATE_EVERY} (a mask update)",
            "xla_peak_bytes": "argument + output - alias + temp",
            "process_peak": "ru_maxrss of a fresh subprocess per variant, includes imports and XLA compilation",
            "compilation_cache": str(COMPILATION_CACHE) if args.quick else None,
            "env": {k: v for k, v in os.environ.items() if k.startswith(RECORDED_ENV_PREFIXES)},
        },
        "models": [
            {
                "label": w.label,
                "model": w.model,
                "input_shape": list(w.input_shape),
                "batch_size": w.batch_size,
                "options": w.options,
                "variants": with_ratios(by_model[w.label]),
            }
            for w in chosen
        ],
    }
    write_results(record, output_path(args, "speed", "memory"), plot)
    print(table(record))
    return record


if __name__ == "__main__":
    main()
