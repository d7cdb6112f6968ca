"""Data-parallel step time of RigL through ``jaxsparse.sparsify`` versus the number of devices.

What is measured
----------------
For every device count ``n`` (default 1, 2, 4 and 8 simulated CPU devices), in a fresh Python
process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` (XLA reads the flag
when its CPU backend starts, so it cannot change inside one process), an MLP 784-1024-1024-10
(ReLU, He-normal kernels, zero biases, softmax cross-entropy, random inputs and labels) is trained
data-parallel on a global batch of 256 split evenly over the devices, with
``optax.sgd(0.1, momentum=0.9)`` and, when sparse, with RigL at 90% sparsity, ERK, masks updated
every 100 steps, drop fraction 0.3 (``benchmarks.speed.workloads.make_algorithm("rigl")``). The
MLP is written in plain JAX rather than taken from ``jaxsparse.models``: the ``pmap`` step below
must average the gradients between the backward pass and ``tx.update``, which the library's
jitted train step has no place for. Two ways of writing a data-parallel step are timed, each dense
and sparse, with the same step body:

* ``jit``: ``jax.jit`` over a 1-D mesh ``("data", n)`` with ``AxisType.Auto``; params and the whole
  optimizer state replicated, the batch sharded over ``"data"``. XLA inserts the gradient
  all-reduce.
* ``pmap``: ``jax.pmap`` over the same devices, one stacked copy of params and state per device
  (``jaxsparse.distributed.replicate``), the batch reshaped to ``(n, 256 / n, ...)``, and the
  gradients averaged with ``lax.pmean`` before ``tx.update``.

Both donate params and optimizer state, as a training loop does. The sparse step is the library's
documented contract: gradients at ``jsp.forward_params(params, state)``, then ``tx.update``.

For each way and each ``n`` the script reports the median wall time of the dense step, of a normal
sparse step and of a mask-update step (the same compiled function, forced onto its update branch
by setting the state's ``step`` to a multiple of 100), and their ratios to the dense step of the
same way and the same ``n``; the amortised sparse step at ``update_every=100`` is
``(99 * normal + mask_update) / 100`` from the medians. Each round times every variant once, in a
freshly shuffled order (a normal sparse step always directly precedes the forced update, so masks
never update twice in a row), so that machine noise hits all variants alike.

Read the ratios, not the absolute times. Simulated CPU devices are threads of one process that
share the machine's cores (2 on this project's machine), so absolute times grow with ``n`` and say
nothing about real multi-device speed. The ratio to the dense step of the same layout and ``n``
is what carries over, and it is expected to grow with ``n`` at a fixed global batch, on real
devices too: params are replicated, so every replica repeats the whole optimizer update, the
masking and (on update steps) the mask selection, while its share of the matrix products shrinks
to ``256 / n`` rows. Per device a step costs about ``M / n + E`` (dense) against
``M / n + E + S`` (sparse), with ``M`` the matrix products, ``E`` the per-parameter optimizer
work and ``S`` the sparse wrapper's per-parameter work, and ``S / (M / n + E)`` grows with ``n``.
What the sparse wrapper must not add is communication: a mask update reads only replicated
inputs. The script records the collectives in each compiled step, read from the optimized HLO
(one all-reduce of the gradients is expected in dense and sparse steps alike). On a GPU host,
``--platform gpu`` times real devices instead.

Checks (the script fails rather than report numbers from a wrong setup): a normal step changes no
mask entry and a forced update changes some; every jit-layout param and state leaf stays fully
replicated; nothing compiles during the timed rounds; at the end every replica holds bit-identical
params and state (``jaxsparse.distributed.assert_replicas_equal``) and the losses are finite.

Rerun
-----
From the repository root::

    python -m benchmarks.speed.distributed            # full: about 3 min of CPU, 6 min on a loaded 2-core machine
    python -m benchmarks.speed.distributed --quick    # MLP 32-64-64-10, 1 and 2 devices, 2 rounds (CI)
    python -m benchmarks.speed.distributed --platform gpu --devices 1 2   # on a host with 2 GPUs

``--out PATH.json`` chooses the JSON file; the plot is written next to it as ``PATH.png``. The
defaults are ``benchmarks/results/speed/distributed.json`` (full) and
``benchmarks/results/quick/distributed.json`` (``--quick``, git-ignored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from matplotlib.figure import Figure

import jaxsparse as jsp
from benchmarks.common import (
    REPO_ROOT,
    argument_parser,
    changed_entries,
    environment,
    output_path,
    summarize_ms,
    write_results,
)
from benchmarks.speed.workloads import END_STEP, SPARSITY, UPDATE_EVERY, make_algorithm
from jaxsparse.distributed import assert_replicas_equal, replicate

Params = dict[str, dict[str, jax.Array]]
Batch = tuple[jax.Array, jax.Array]
StepFn = Callable[[Params, Any, Batch], tuple[Params, Any]]

LEARNING_RATE = 0.1
MOMENTUM = 0.9
WARMUP_CALLS = 2
AXIS = "data"
GLOBAL_BATCH = 256  # divisible by every device count up to 8 (and up to 256)
FULL_SIZES = (784, 1024, 1024, 10)
QUICK_SIZES = (32, 64, 64, 10)
FULL_DEVICES = (1, 2, 4, 8)
QUICK_DEVICES = (1, 2)
FULL_ROUNDS = 40
QUICK_ROUNDS = 2
LAYOUTS = ("jit", "pmap")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(")


# ---------------------------------------------------------------------------------------------
# Model, data and steps
# ---------------------------------------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> Params:
    """He-normal kernels and zero biases, one ``{"kernel", "bias"}`` dict per layer."""
    params: Params = {}
    he_normal = jax.nn.initializers.he_normal()
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, layer_key = jax.random.split(key)
        params[f"layer{index}"] = {
            "kernel": he_normal(layer_key, (fan_in, fan_out), jnp.float32),
            "bias": jnp.zeros((fan_out,), jnp.float32),
        }
    return params


def loss_fn(params: Params, batch: Batch) -> jax.Array:
    """Mean softmax cross-entropy of the ReLU MLP."""
    inputs, labels = batch
    n_layers = len(params)
    x = inputs
    for index in range(n_layers):
        layer = params[f"layer{index}"]
        x = x @ layer["kernel"] + layer["bias"]
        if index < n_layers - 1:
            x = jax.nn.relu(x)
    return optax.softmax_cross_entropy_with_integer_labels(x, labels).mean()


def random_batch(key: jax.Array, n_inputs: int, n_classes: int, batch_size: int) -> Batch:
    """Standard-normal inputs and uniformly drawn labels."""
    input_key, label_key = jax.random.split(key)
    inputs = jax.random.normal(input_key, (batch_size, n_inputs), jnp.float32)
    labels = jax.random.randint(label_key, (batch_size,), 0, n_classes)
    return inputs, labels


def make_optimizer() -> optax.GradientTransformation:
    return optax.sgd(LEARNING_RATE, momentum=MOMENTUM)


def step_body(tx: optax.GradientTransformation, sparse: bool, mean_over_devices: bool) -> StepFn:
    """One train step ``(params, state, batch) -> (params, state)``, to be jitted or pmapped.

    ``sparse``: ``tx`` is ``jsp.sparsify``-wrapped and the gradients are taken at the masked
    weights, the library's documented contract. ``mean_over_devices``: the gradients are averaged
    over the ``pmap`` axis before ``tx.update`` (under ``jax.jit`` over a mesh XLA inserts that
    all-reduce itself).
    """

    def step(params: Params, state: Any, batch: Batch) -> tuple[Params, Any]:
        forward = jsp.forward_params(params, state) if sparse else params
        grads = jax.grad(loss_fn)(forward, batch)
        if mean_over_devices:
            # Every replica must hand tx.update the same gradients, so that every replica draws the
            # same masks (see jaxsparse.distributed).
            grads = lax.pmean(grads, AXIS)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


@dataclasses.dataclass
class Trainer:
    """A compiled step with the params, state and batch it advances; params and state are donated."""

    step_fn: StepFn
    params: Params
    state: Any
    batch: Batch

    def set_step(self, step: int) -> None:
        """Sets a ``jsp.SparsifyState``'s step counter (selects the branch of the next call).

        The new counter goes exactly where the old one lives (replicated over the mesh, or one
        stacked copy per device under ``pmap``), so the step's input layout, and with it the
        compiled executable, never changes, and no host-to-device copy hides inside a timed call.
        """
        old = self.state.step
        new = jax.device_put(np.full(old.shape, step, old.dtype), old.sharding)
        self.state = self.state._replace(step=new)

    def run(self) -> float:
        """Seconds for one step, its inputs ready before the clock starts and its outputs blocked on."""
        jax.block_until_ready((self.params, self.state))
        start = time.perf_counter()
        self.params, self.state = self.step_fn(self.params, self.state, self.batch)
        jax.block_until_ready((self.params, self.state))
        return time.perf_counter() - start


def host_copy(tree: Any) -> Any:
    return jax.tree.map(np.array, tree)


# ---------------------------------------------------------------------------------------------
# Trainers on n devices
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Layout:
    """The dense and sparse trainers of one way of writing the data-parallel step."""

    dense: Trainer
    sparse: Trainer
    stacked: bool  # pmap: the leading axis enumerates the per-device copies

    def host_replica(self, tree: Any) -> Any:
        """A host copy of one device's copy of ``tree`` (all copies hold the same bits)."""
        return jax.tree.map(lambda x: np.array(x[0] if self.stacked else x), tree)


def build_layouts(devices: list[jax.Device], params: Params, batch: Batch) -> dict[str, Layout]:
    """Dense and sparse trainers for ``jax.jit`` over a mesh and for ``jax.pmap``, from host ``params``/``batch``.

    Every trainer gets its own buffers, placed from host copies: params and states are donated,
    and an array shared by two trainers would be deleted under the other one.
    """
    n = len(devices)
    inputs, labels = batch
    dense_tx = make_optimizer()
    sparse_tx = jsp.sparsify(make_optimizer(), make_algorithm("rigl"), key=jax.random.key(0))

    def sparse_start() -> tuple[Params, jsp.SparsifyState]:
        state = sparse_tx.init(params)
        return host_copy(jsp.apply_masks(params, jsp.masks_of(state))), state

    def jit_step(tx: optax.GradientTransformation, sparse: bool) -> StepFn:
        return jax.jit(step_body(tx, sparse, mean_over_devices=False), donate_argnums=(0, 1))

    def pmap_step(tx: optax.GradientTransformation, sparse: bool) -> StepFn:
        body = step_body(tx, sparse, mean_over_devices=True)
        return jax.pmap(body, axis_name=AXIS, devices=devices, donate_argnums=(0, 1))

    mesh = jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=devices)
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P(AXIS))
    jit_batch = jax.device_put(batch, split)
    jit_layout = Layout(
        dense=Trainer(
            jit_step(dense_tx, sparse=False),
            jax.device_put(params, replicated),
            jax.device_put(dense_tx.init(params), replicated),
            jit_batch,
        ),
        sparse=Trainer(jit_step(sparse_tx, sparse=True), *jax.device_put(sparse_start(), replicated), jit_batch),
        stacked=False,
    )

    # Row i of the stacked batch is device i's slice of the same global batch.
    pmap_batch = jax.device_put((inputs.reshape(n, -1, inputs.shape[-1]), labels.reshape(n, -1)), split)
    pmap_layout = Layout(
        dense=Trainer(
            pmap_step(dense_tx, sparse=False),
            *replicate((params, dense_tx.init(params)), axis_name=AXIS, devices=devices),
            pmap_batch,
        ),
        sparse=Trainer(
            pmap_step(sparse_tx, sparse=True),
            *replicate(sparse_start(), axis_name=AXIS, devices=devices),
            pmap_batch,
        ),
        stacked=True,
    )
    return {"jit": jit_layout, "pmap": pmap_layout}


def collectives(trainer: Trainer) -> dict[str, int]:
    """How many cross-device operations of each kind the step's compiled program contains.

    Read from the optimized HLO text of the executable the step already compiled (lowering the
    same arguments again hits the compilation cache). Recorded, not asserted: the text format is
    XLA's, not a stable API.
    """
    hlo = trainer.step_fn.lower(trainer.params, trainer.state, trainer.batch).compile().as_text()
    counts: dict[str, int] = {}
    for match in COLLECTIVE.finditer(hlo):
        counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def mask_changes(trainer: Trainer, step: int) -> int:
    """Runs one step from ``step``; returns how many mask entries (over all stored copies) it changed."""
    trainer.set_step(step)
    before = host_copy(jsp.masks_of(trainer.state))
    trainer.run()
    return changed_entries(before, host_copy(jsp.masks_of(trainer.state)))


# ---------------------------------------------------------------------------------------------
# One device count (runs in its own process)
# ---------------------------------------------------------------------------------------------


def bench_devices(n: int, sizes: tuple[int, ...], rounds: int, seed: int, platform: str) -> dict[str, Any]:
    if jax.default_backend() != platform:
        raise RuntimeError(f"asked for {platform} devices, but jax's default backend is {jax.default_backend()}")
    if jax.device_count() < n:
        raise RuntimeError(f"asked for {n} devices, but the {jax.default_backend()} backend has {jax.device_count()}")
    devices = jax.devices()[:n]
    label = f"[n={n}]"
    print(f"{label} MLP {'-'.join(map(str, sizes))} on {n} x {devices[0].platform}: setting up", flush=True)
    load_before = os.getloadavg()
    data_key, param_key = jax.random.split(jax.random.key(seed))
    params = host_copy(init_mlp(param_key, sizes))
    batch = host_copy(random_batch(data_key, sizes[0], sizes[-1], GLOBAL_BATCH))
    layouts = build_layouts(devices, params, batch)

    # Compile and warm up; check that a forced update changes the masks and a normal step does not.
    print(f"{label} compiling and warming up", flush=True)
    compile_s: dict[str, float] = {}
    sanity: dict[str, Any] = {}
    compiled_collectives: dict[str, dict[str, int]] = {}
    for name, layout in layouts.items():
        compile_s[f"{name}_dense_step"] = layout.dense.run()
        layout.sparse.set_step(1)
        compile_s[f"{name}_sparse_step"] = layout.sparse.run()
        for _ in range(WARMUP_CALLS):
            layout.dense.run()
            normal_changed = mask_changes(layout.sparse, UPDATE_EVERY + 1)
            update_changed = mask_changes(layout.sparse, UPDATE_EVERY)
        if normal_changed != 0 or update_changed == 0:
            raise RuntimeError(
                f"{name}: branch check failed: a normal step changed {normal_changed} mask entries and a forced "
                f"mask-update step changed {update_changed}."
            )
        sanity[f"{name}_mask_entries_changed_by_normal_step"] = normal_changed
        sanity[f"{name}_mask_entries_changed_by_forced_mask_update_step"] = update_changed
        for kind, trainer in (("dense", layout.dense), ("sparse", layout.sparse)):
            compiled_collectives[f"{name}_{kind}_step"] = collectives(trainer)
    print(f"{label} collectives in each compiled step: {compiled_collectives}", flush=True)
    jit = layouts["jit"]
    spread = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            (jit.dense.params, jit.dense.state, jit.sparse.params, jit.sparse.state)
        )
        if not leaf.sharding.is_fully_replicated
    ]
    if spread:
        raise RuntimeError(f"jit layout: these params/state leaves are no longer replicated after a step: {spread}")

    samples: dict[str, list[float]] = {
        f"{name}_{kind}": [] for name in LAYOUTS for kind in ("dense_step", "normal_sparse_step", "mask_update_step")
    }

    def time_dense(name: str) -> None:
        samples[f"{name}_dense_step"].append(layouts[name].dense.run())

    def time_sparse_pair(name: str, round_index: int) -> None:
        # Normal step first, so that every forced mask update follows at least one normal step.
        sparse = layouts[name].sparse
        sparse.set_step(UPDATE_EVERY * (round_index + 2) + 1)
        samples[f"{name}_normal_sparse_step"].append(sparse.run())
        sparse.set_step(UPDATE_EVERY * (round_index + 3))
        samples[f"{name}_mask_update_step"].append(sparse.run())

    compilations: list[float] = []

    def on_event(event: str, duration_s: float, **_: Any) -> None:
        if event == COMPILE_EVENT:
            compilations.append(duration_s)

    rng = random.Random(seed)
    print(f"{label} {rounds} interleaved rounds", flush=True)
    jax.monitoring.register_event_duration_secs_listener(on_event)
    for round_index in range(rounds):
        units: list[Callable[[], None]] = []
        for name in LAYOUTS:
            units.append(lambda name=name: time_dense(name))
            units.append(lambda name=name, r=round_index: time_sparse_pair(name, r))
        rng.shuffle(units)
        for unit in units:
            unit()
    jax.monitoring.unregister_event_duration_listener(on_event)
    load_after = os.getloadavg()
    if compilations:
        raise RuntimeError(f"{len(compilations)} compilation(s) during the timed rounds: a step retraced.")

    stats = {key: summarize_ms(values) for key, values in samples.items()}
    ms: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, float]] = {}
    for name, layout in layouts.items():
        for kind, trainer in (("sparse", layout.sparse), ("dense", layout.dense)):
            assert_replicas_equal((trainer.params, trainer.state), stacked=layout.stacked, name=f"{name} {kind}")
        sparse_params = layout.host_replica(jsp.forward_params(layout.sparse.params, layout.sparse.state))
        losses = [float(loss_fn(sparse_params, batch)), float(loss_fn(layout.host_replica(layout.dense.params), batch))]
        if not np.all(np.isfinite(losses)):
            raise RuntimeError(f"{name}: non-finite loss after training: {losses}")
        sanity[f"{name}_final_sparse_and_dense_loss"] = losses

        dense_ms = stats[f"{name}_dense_step"]["median_ms"]
        normal_ms = stats[f"{name}_normal_sparse_step"]["median_ms"]
        mask_ms = stats[f"{name}_mask_update_step"]["median_ms"]
        amortised_ms = ((UPDATE_EVERY - 1) * normal_ms + mask_ms) / UPDATE_EVERY
        ms[name] = {
            "dense_step": dense_ms,
            "normal_sparse_step": normal_ms,
            "mask_update_step": mask_ms,
            "amortised_sparse_step_from_medians": amortised_ms,
        }
        ratios[name] = {
            "normal_sparse_step": normal_ms / dense_ms,
            "mask_update_step": mask_ms / dense_ms,
            "amortised_sparse_step_from_medians": amortised_ms / dense_ms,
        }

    print(
        f"{label} "
        + " | ".join(
            f"{name}: dense {ms[name]['dense_step']:.2f} ms, normal {ratios[name]['normal_sparse_step']:.3f}x, "
            f"update {ratios[name]['mask_update_step']:.3f}x"
            for name in LAYOUTS
        ),
        flush=True,
    )
    return {
        "devices": n,
        "device_names": [str(device) for device in devices],
        "per_device_batch": GLOBAL_BATCH // n,
        "rounds": rounds,
        "ms": ms,
        "ratio_to_dense": ratios,
        "stats_ms": stats,
        "compile_and_first_call_s": compile_s,
        "collectives_in_compiled_step": compiled_collectives,
        "sanity": {**sanity, "replicas_bit_identical": True, "compilations_during_timed_rounds": len(compilations)},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        # This process's own record: its devices, XLA's device count and its command line differ per run.
        "environment": environment(),
    }


# ---------------------------------------------------------------------------------------------
# Driver: one process per device count, plot, main
# ---------------------------------------------------------------------------------------------


def run_worker(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Runs :func:`bench_devices` for ``n`` devices in a fresh process and returns its result."""
    env = dict(os.environ)
    if args.platform == "cpu":
        # Read once, when XLA's CPU backend starts: hence one process per device count.
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "benchmarks.speed.distributed", "--devices", str(n)]
        command += ["--rounds", str(args.rounds), "--seed", str(args.seed), "--platform", args.platform]
        command += ["--worker-out", str(out)]
        if args.quick:
            command.append("--quick")
        # From the repository root, so that the worker imports this checkout's benchmarks package.
        subprocess.run(command, env=env, cwd=REPO_ROOT, check=True)
        return json.loads(out.read_text())


def plot(report: dict[str, Any]) -> Figure:
    """Ratios to the dense step (left) and absolute median times (right) against the device count."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    runs = report["runs"]
    counts = [run["devices"] for run in runs]
    styles = {
        "jit": ("-", (-34, 3)),
        "pmap": ("--", (6, -3)),
    }  # line style; label offset in points: jit left, pmap right
    steps = (
        ("dense_step", "dense step", "black"),
        ("normal_sparse_step", "normal sparse step", "tab:blue"),
        ("mask_update_step", "mask-update step", "tab:red"),
    )
    fig, (ratio_ax, ms_ax) = plt.subplots(1, 2, figsize=(13, 5.8))
    for name in LAYOUTS:
        line, offset = styles[name]
        for key, label, color in steps:
            times = [run["ms"][name][key] for run in runs]
            ms_ax.plot(counts, times, line, marker="o", color=color, label=f"{name}: {label}")
            if key == "dense_step":
                continue
            ratios = [run["ratio_to_dense"][name][key] for run in runs]
            ratio_ax.plot(counts, ratios, line, marker="o", color=color, label=f"{name}: {label}")
            for count, ratio in zip(counts, ratios, strict=True):
                ratio_ax.annotate(
                    f"{ratio:.2f}x", (count, ratio), textcoords="offset points", xytext=offset, fontsize=7, color=color
                )
    ratio_ax.axhline(1.0, color="black", linewidth=1.2, label="dense step (1.0x)")
    ratio_ax.set_yscale("log")
    ratios = [run["ratio_to_dense"][name][key] for run in runs for name in LAYOUTS for key, _, _ in steps[1:]]
    ratio_ax.set_ylim(min(0.8, min(ratios) * 0.8), max(4.0, max(ratios) * 1.5))
    low, high = ratio_ax.get_ylim()
    ratio_ax.yaxis.set_major_locator(
        FixedLocator([t for t in (0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20) if low <= t <= high])
    )
    ratio_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ratio_ax.yaxis.set_minor_formatter(NullFormatter())
    ratio_ax.set_ylabel("time / dense step of the same layout and n (log scale)")
    ratio_ax.set_title("ratio to the dense data-parallel step (the result)", fontsize=10)
    ratio_ax.legend(fontsize=7, loc="best")
    cpu = report["platform"] == "cpu"
    ms_ax.set_yscale("log")
    decades = 10.0 ** np.arange(-3, 6)
    ms_ax.yaxis.set_major_locator(FixedLocator((decades[:, None] * np.array([1.0, 2.0, 5.0])[None, :]).ravel()))
    ms_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ms_ax.yaxis.set_minor_formatter(NullFormatter())
    ms_ax.set_ylabel("median step time, ms (log scale)")
    ms_ax.set_title(
        "absolute times: the simulated devices share the same CPU cores,\nso these grow with n (not a scaling result)"
        if cpu
        else "absolute times",
        fontsize=10,
    )
    ms_ax.legend(fontsize=7, loc="upper left")
    for ax in (ratio_ax, ms_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlim(min(counts) / 1.35, max(counts) * 1.35)  # room for the point labels
        ax.set_xticks(counts, [f"{run['devices']}\n({run['per_device_batch']} rows each)" for run in runs])
        ax.set_xlabel(f"{'simulated CPU' if cpu else report['platform'].upper()} devices, global batch {GLOBAL_BATCH}")
        ax.grid(alpha=0.3)
    loads = [load for run in runs for load in (run["loadavg_before"][0], run["loadavg_after"][0])]
    fig.suptitle(
        f"jaxsparse RigL ({SPARSITY:.0%} ERK, update_every={UPDATE_EVERY}) vs dense, data-parallel; jit over a mesh: "
        f"solid, pmap: dashed; MLP {'-'.join(map(str, report['settings']['sizes']))}\n"
        f"{report['platform'].upper()}, {report['environment']['cpu_count']} cores, "
        f"1-min load average {min(loads):.1f}-{max(loads):.1f} during the run"
        + (" [--quick]" if report["quick"] else ""),
        fontsize=10,
    )
    return fig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--devices",
        type=int,
        nargs="+",
        default=None,
        help=f"device counts, one process each (default: {FULL_DEVICES} on cpu, (1,) on gpu; --quick: {QUICK_DEVICES})",
    )
    parser.add_argument("--rounds", type=int, default=None, help=f"interleaved rounds (default {FULL_ROUNDS})")
    parser.add_argument(
        "--platform",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: simulated host devices; gpu: the first n real GPUs (no device count is forced)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, params and the variant order")
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)  # set by run_worker
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = QUICK_DEVICES if args.quick else (FULL_DEVICES if args.platform == "cpu" else (1,))
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else FULL_ROUNDS
    for n in args.devices:
        if n < 1 or GLOBAL_BATCH % n:
            parser.error(f"--devices: {n} does not divide the global batch of {GLOBAL_BATCH}")
    if args.worker_out is not None and len(args.devices) != 1:
        parser.error("a worker runs exactly one device count")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.worker_out is not None:
        result = bench_devices(args.devices[0], sizes, args.rounds, args.seed, args.platform)
        args.worker_out.write_text(json.dumps(result))
        return result

    wall_start = time.perf_counter()
    runs = [run_worker(n, args) for n in args.devices]
    record = {
        "benchmark": "distributed",
        "quick": args.quick,
        "platform": args.platform,
        "duration_s": time.perf_counter() - wall_start,
        "settings": {
            "sizes": list(sizes),
            "global_batch": GLOBAL_BATCH,
            "device_counts": list(args.devices),
            "rounds": args.rounds,
            "optimizer": f"optax.sgd({LEARNING_RATE}, momentum={MOMENTUM})",
            "algorithm": (
                f"benchmarks.speed.workloads.make_algorithm('rigl'): jsp.rigl({SPARSITY}, distribution='erk', "
                f"update_every={UPDATE_EVERY}, end_step={END_STEP}) with its default drop fraction, 0.3 "
                "cosine-decayed to 0 at end_step (so about 0.3 at the steps timed here)"
            ),
            "layouts": {
                "jit": "jax.jit over a 1-D ('data', n) mesh (AxisType.Auto): params and state replicated, batch "
                "sharded over 'data'; donate_argnums=(0, 1)",
                "pmap": "jax.pmap(axis_name='data'): stacked per-device copies, lax.pmean of the gradients; "
                "donate_argnums=(0, 1)",
            },
            "warmup_calls": WARMUP_CALLS,
            "seed": args.seed,
            "timing": (
                "one process per device count; single-step times, every variant once per round in a shuffled "
                "order, jax.block_until_ready, time.perf_counter; medians reported"
            ),
            "caveat": (
                "simulated CPU devices share the machine's cores, so absolute times grow with n; compare the "
                "ratios to the dense step of the same layout and n"
                if args.platform == "cpu"
                else "real devices"
            ),
        },
        "runs": runs,
    }
    write_results(record, output_path(args, "speed", "distributed"), plot)
    return record


if __name__ == "__main__":
    main()
