"""What one-shot pruning costs: wall clock and peak memory of each criterion against the model's size.

Every criterion of :data:`jaxsparse.one_shot.CRITERIA` prunes the same models with
:func:`jaxsparse.one_shot.prune_one_shot` at 50% unstructured sparsity (``uniform``, every kernel;
the ViT's position embedding, which SparseGPT and Wanda refuse, stays dense), on one fixed
calibration set of :data:`CALIBRATION` = 1024 examples in batches of 128 (random inputs and
labels: the cost does not depend on the values), with the library's defaults (WoodFisher: Fisher
blocks of 128; SparseGPT: lazy blocks of 128; both sequential where it applies). The models:

* MLPs 40-w-w-10 on MNIST-1D's input, w = 128, 256, 512 and 1024 (23k to 1.1M parameters): the
  size axis;
* LeNet-5 and the ViT of :mod:`benchmarks.accuracy.one_shot` on MNIST-1D (31k and 69k
  parameters), for convolutions and attention.

**Wall clock.** In this process: every (model, criterion) is called once, which compiles and runs
it (``first_call_s``), then all of them are called once per round in a shuffled order
(:func:`benchmarks.common.interleaved_times`) for :data:`ROUNDS` rounds, each result blocked on; the
median is the run time and ``first_call_s - median`` estimates compilation. A call is the whole
``prune_one_shot``: the calibration passes, the scores, the selection and (WoodFisher, SparseGPT)
the weight update.

**Peak memory.** For each (model, criterion) a fresh subprocess builds the model, its parameters
and the calibration batches, then prunes twice, and reads its resident set from
``/proc/self/status`` (Linux): ``VmRSS`` (now) and ``VmHWM`` (the high-water mark), which it resets
before the second call by writing ``5`` to ``/proc/self/clear_refs``. It reports

* ``extra_first_call_bytes``: the peak during the first call minus the resident set after building
  the model and data (the baseline, in the same process): the pruning's memory with XLA's compiler
  memory included;
* ``extra_compiled_call_bytes``: the peak during the second call minus the resident set just
  before it, after glibc's ``malloc_trim`` has returned the heap pages the first call freed: the
  working memory of a compiled call (what the first call left alive, such as compiled programs, is
  in the baseline). Memory the allocator keeps despite the trim is reused without counting, so
  this is a lower bound, and the first call's figure an upper one.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` cannot be used here: Linux carries a process's
high-water mark across ``execve``, and ``subprocess`` starts children with ``vfork`` (or ``posix_spawn``), so a child's
``ru_maxrss`` starts at the parent's peak (every child of the first full run reported the same
5,248 MiB, the parent's peak after timing the 1024-wide MLP). ``VmHWM`` belongs to the child's own
address space. XLA's compiled memory analysis does not apply either: ``prune_one_shot`` is a Python
loop over many jitted pieces, not one program. On CPU the device is host memory, so the resident
set is the honest measure. The expected sizes from the docstring of ``prune_one_shot`` are recorded
beside them: one batch of per-example gradients (``128 x P`` floats; Taylor computes only a batch
gradient) and WoodFisher's Fisher blocks (``P_sparse x 128`` floats).

Rerun from the repository root::

    python -m benchmarks.speed.one_shot_cost            # 6 models x 6 criteria: ~25 min on 2 busy cores
    python -m benchmarks.speed.one_shot_cost --quick    # a 16-wide MLP, 2 criteria: ~20 s (CI)
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from matplotlib.figure import Figure

from benchmarks.common import REPO_ROOT, argument_parser, interleaved_times, output_path, summarize_ms, write_results
from jaxsparse.masks import SparsityLayout
from jaxsparse.one_shot import CRITERIA, prune_one_shot

SPARSITY = 0.5
CALIBRATION = 1024
BATCH = 128
BLOCK = 128
"""WoodFisher's Fisher block and SparseGPT's lazy block: the library defaults."""
ROUNDS = 3
INPUT_SHAPE = (40, 1)


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model to prune: its registry name and options."""

    label: str
    model: str
    hidden: int | None = None

    def options(self) -> dict[str, Any]:
        return {} if self.hidden is None else {"hidden_sizes": (self.hidden, self.hidden)}


FULL_WORKLOADS = (
    *(Workload(f"mlp-{w}", "mlp", w) for w in (128, 256, 512, 1024)),
    Workload("lenet5", "lenet5"),
    Workload("vit", "vit"),
)
QUICK_WORKLOADS = (Workload("mlp-16", "mlp", 16),)
QUICK_CRITERIA = ("taylor", "sparsegpt")
QUICK_CALIBRATION = 2 * BATCH


class Problem:
    """A model's parameters, calibration batches, ``loss_fn``, ``apply_fn`` and layout, ready to prune."""

    def __init__(self, workload: Workload, calibration: int = CALIBRATION):
        from jaxsparse.models import create_model

        model = create_model(workload.model, num_classes=10, input_shape=INPUT_SHAPE, **workload.options())
        params_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
        self.params = model.init(params_key, jnp.zeros((1, *INPUT_SHAPE)), train=False)["params"]
        x = jax.random.normal(x_key, (calibration, *INPUT_SHAPE))
        y = jax.random.randint(y_key, (calibration,), 0, 10)
        self.batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, calibration, BATCH)]
        keep = ("pos_embedding",) if workload.model == "vit" else ()
        self.layout = SparsityLayout(SPARSITY, "uniform", keep_dense=keep)
        self.model = model
        jax.block_until_ready((self.params, self.batches))

    def apply_fn(self, params, batch):
        return self.model.apply({"params": params}, batch[0], train=False)

    def loss_fn(self, params, batch):
        return optax.softmax_cross_entropy_with_integer_labels(self.apply_fn(params, batch), batch[1]).mean()

    def prune(self, criterion: str):
        result = prune_one_shot(
            criterion,
            self.params,
            self.layout,
            key=jax.random.key(1),
            loss_fn=self.loss_fn,
            apply_fn=self.apply_fn,
            batches=self.batches,
        )
        return jax.block_until_ready(result.params)

    def sizes(self) -> dict[str, int]:
        """Parameter counts and the expected sizes of the two largest buffers (float32 bytes)."""
        plans = self.layout.plan(self.params)
        leaves = jax.tree.leaves(self.params)
        total = sum(leaf.size for leaf in leaves)
        sparse = [leaf.size for plan, leaf in zip(plans, leaves, strict=True) if plan is not None]
        return {
            "params": total,
            "sparsified_params": sum(sparse),
            "per_example_gradient_bytes": 4 * BATCH * total,
            "woodfisher_blocks_bytes": 4 * BLOCK * sum(math.ceil(n / BLOCK) * BLOCK for n in sparse),
        }


def resident_bytes() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process (``/proc/self/status``, Linux), in bytes."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
    return {name: 1024 * int(value.split()[0]) for name, value in fields.items()}


def reset_peak() -> None:
    """Returns freed heap pages to the system (glibc's ``malloc_trim``), then sets ``VmHWM`` to ``VmRSS``.

    Without the trim, memory the first call freed stays resident in the allocator, and a second
    call reusing it would not raise the high-water mark. ``clear_refs`` 5 needs Linux 4.0 or later.
    """
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def measure_memory(workload: Workload, criterion: str, calibration: int) -> dict[str, Any]:
    """In this (fresh) process: build the problem, prune twice with ``criterion``, and report the resident sets."""
    problem = Problem(workload, calibration)
    built = resident_bytes()
    start = time.perf_counter()
    problem.prune(criterion)
    first_s = time.perf_counter() - start
    first = resident_bytes()
    reset_peak()
    before = resident_bytes()
    start = time.perf_counter()
    problem.prune(criterion)
    second_s = time.perf_counter() - start
    second = resident_bytes()
    return {
        "rss_after_build_bytes": built["VmRSS"],
        "peak_first_call_bytes": first["VmHWM"],
        "rss_before_second_call_bytes": before["VmRSS"],
        "peak_second_call_bytes": second["VmHWM"],
        "extra_first_call_bytes": first["VmHWM"] - built["VmRSS"],
        "extra_compiled_call_bytes": second["VmHWM"] - before["VmRSS"],
        "first_call_s": first_s,
        "second_call_s": second_s,
    }


def memory_in_subprocess(workload: Workload, criterion: str, calibration: int) -> dict[str, Any]:
    """:func:`measure_memory` in a fresh Python process, so that its resident set is its own."""
    command = [sys.executable, "-m", "benchmarks.speed.one_shot_cost", "--child", workload.label, criterion]
    command += ["--calibration", str(calibration)]
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {criterion} on {workload.label} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def memory(workloads: Sequence[Workload], criteria: Sequence[str], calibration: int) -> dict[str, dict[str, Any]]:
    """Per workload and criterion: :func:`measure_memory` in its own subprocess."""
    out: dict[str, dict[str, Any]] = {}
    for workload in workloads:
        out[workload.label] = {}
        for criterion in criteria:
            result = memory_in_subprocess(workload, criterion, calibration)
            out[workload.label][criterion] = result
            print(
                f"{workload.label} {criterion}: +{result['extra_first_call_bytes'] / 2**20:.0f} MiB first call, "
                f"+{result['extra_compiled_call_bytes'] / 2**20:.0f} MiB compiled",
                flush=True,
            )
    return out


def timing(
    workloads: Sequence[Workload], criteria: Sequence[str], rounds: int, calibration: int
) -> dict[str, dict[str, Any]]:
    """First call (compile and run) of every (workload, criterion), then ``rounds`` interleaved timed calls."""
    problems = {w.label: Problem(w, calibration) for w in workloads}
    calls, first = {}, {}
    for label, problem in problems.items():
        for criterion in criteria:
            name = f"{label}/{criterion}"
            start = time.perf_counter()
            problem.prune(criterion)
            first[name] = time.perf_counter() - start
            calls[name] = lambda problem=problem, criterion=criterion: problem.prune(criterion)
            print(f"{name}: first call {first[name]:.2f} s", flush=True)
    samples = interleaved_times(calls, rounds)
    out: dict[str, dict[str, Any]] = {}
    for label, problem in problems.items():
        out[label] = {"sizes": problem.sizes(), "criteria": {}}
        for criterion in criteria:
            name = f"{label}/{criterion}"
            run = summarize_ms(samples[name])
            out[label]["criteria"][criterion] = {
                "first_call_s": first[name],
                "run": run,
                "compile_estimate_s": first[name] - run["median_ms"] / 1e3,
            }
    return out


def table(record: dict[str, Any]) -> str:
    """Markdown: median run time (first call) and extra peak memory per model and criterion."""
    criteria = record["settings"]["criteria"]
    lines = [
        "Median wall clock of `prune_one_shot` after compilation, in seconds (first call, compilation included, "
        "in brackets):",
        "",
        "| model | params | " + " | ".join(criteria) + " |",
        "|---" * (len(criteria) + 2) + "|",
    ]
    for result in record["results"]:
        cells = [
            f"{c['run']['median_ms'] / 1e3:.3g} ({c['first_call_s']:.3g})"
            for c in (result["criteria"][name] for name in criteria)
        ]
        lines.append(f"| {result['label']} | {result['sizes']['params']:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Extra peak resident set of a fresh process, in MiB: a compiled call over the resident set before it "
        "(the first call, compilation included, over the resident set after building the model and data, in "
        "brackets). Expected: one batch of per-example gradients / WoodFisher's blocks.",
        "",
        "| model | expected (MiB) | " + " | ".join(criteria) + " |",
        "|---" * (len(criteria) + 2) + "|",
    ]
    for result in record["results"]:
        sizes = result["sizes"]
        expected = f"{sizes['per_example_gradient_bytes'] / 2**20:.0f} / {sizes['woodfisher_blocks_bytes'] / 2**20:.0f}"
        cells = [
            f"{c['extra_compiled_call_bytes'] / 2**20:.0f} ({c['extra_first_call_bytes'] / 2**20:.0f})"
            for c in (result["memory"][name] for name in criteria)
        ]
        lines.append(f"| {result['label']} | {expected} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any]) -> Figure:
    """Run time and extra peak memory against the parameter count, per criterion (MLPs as lines, others as markers)."""
    import matplotlib.pyplot as plt

    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    results = record["results"]
    mlps = [r for r in results if r["model"] == "mlp"]
    others = [r for r in results if r["model"] != "mlp"]
    markers = {"lenet5": "s", "vit": "^"}
    for index, criterion in enumerate(record["settings"]["criteria"]):
        color = f"C{index}"
        for ax, value in (
            (time_ax, lambda r, c=criterion: r["criteria"][c]["run"]["median_ms"] / 1e3),
            (memory_ax, lambda r, c=criterion: max(r["memory"][c]["extra_compiled_call_bytes"], 0) / 2**20),
        ):
            if mlps:
                ax.plot(
                    [r["sizes"]["params"] for r in mlps], [value(r) for r in mlps], "o-", color=color, label=criterion
                )
            for r in others:
                ax.plot(r["sizes"]["params"], value(r), markers.get(r["model"], "x"), color=color)
    for ax, label in ((time_ax, "median run time (s)"), (memory_ax, "extra peak RSS of a compiled call (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("symlog" if ax is memory_ax else "log")
        ax.set_xlabel("parameters (MLPs: lines; LeNet-5: squares; ViT: triangles)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    time_ax.legend(fontsize=8)
    time_ax.set_title(f"prune_one_shot, {record['settings']['calibration']} calibration examples")
    memory_ax.set_title("working memory of a compiled call (fresh process)")
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed calls per variant (default 5)")
    parser.add_argument("--calibration", type=int, default=CALIBRATION, help="calibration examples (default 1024)")
    parser.add_argument(
        "--child", nargs=2, metavar=("MODEL", "CRITERION"), help="internal: measure one variant's peak memory here"
    )
    args = parser.parse_args(argv)
    every = {w.label: w for w in (*FULL_WORKLOADS, *QUICK_WORKLOADS)}
    if args.child is not None:
        label, criterion = args.child
        result = measure_memory(every[label], criterion, args.calibration)
        print(json.dumps(result), flush=True)
        return result
    workloads, criteria, rounds, calibration = FULL_WORKLOADS, list(args.criteria), args.rounds, args.calibration
    if args.quick:
        workloads, criteria, rounds, calibration = QUICK_WORKLOADS, list(QUICK_CRITERIA), 2, QUICK_CALIBRATION
    start = time.perf_counter()
    peaks = memory(workloads, criteria, calibration)
    times = timing(workloads, criteria, rounds, calibration)
    record = {
        "benchmark": "cost of one-shot pruning criteria",
        "quick": args.quick,
        "settings": {
            "criteria": criteria,
            "sparsity": f"{SPARSITY:g} unstructured, uniform over every kernel (vit: pos_embedding dense)",
            "calibration": calibration,
            "batch": BATCH,
            "block_size": f"{BLOCK} (woodfisher's Fisher blocks, sparsegpt's lazy blocks: library defaults)",
            "rounds": rounds,
            "timing": "first call (compile + run), then interleaved rounds in one process; median reported",
            "memory": "a fresh subprocess per variant prunes twice; VmHWM (reset before the second call through "
            "/proc/self/clear_refs) minus VmRSS before each call: first call (compile included) over the built "
            "model and data, and a compiled call",
            "inputs": "random normal inputs, random labels, params at initialisation (cost does not depend on values)",
            "env": {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "MALLOC_"))},
        },
        "results": [
            {
                "label": w.label,
                "model": w.model,
                "options": {k: list(v) for k, v in w.options().items()},
                **times[w.label],
                "memory": peaks[w.label],
            }
            for w in workloads
        ],
        "wall_time_s": time.perf_counter() - start,
    }
    text = table(record)
    out = output_path(args, "speed", "one_shot_cost")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    write_results(record, out, plot)
    print(text)
    return record


if __name__ == "__main__":
    main()
