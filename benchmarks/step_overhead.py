"""Per-step cost of RigL through ``jaxsparse.sparsify``, relative to dense training, on CPU.

What is measured
----------------
For two MLPs (ReLU, softmax cross-entropy, batch 128, random inputs and labels from ``jax.random``),
trained with ``optax.sgd(0.1, momentum=0.9)`` and, when sparse, with
``jsp.rigl(0.9, distribution="erk", update_every=100, end_step=10**6, drop_fraction=0.3)``:

* model A: 784-1024-1024-10;
* model B: 4096-4096-4096-10.

Each model reports the median wall time (``jax.block_until_ready``, after compilation and warm-up) of

1. ``dense_step``: ``jax.jit`` of grad + the sgd-momentum update + ``optax.apply_updates``;
2. ``normal_sparse_step``: the ``jsp.sparsify``-wrapped optimizer's jitted train step (the contract
   below) at a step that is *not* a mask-update step;
3. ``mask_update_step``: the same compiled function at a step that *is* a mask-update step (the
   state's ``step`` field is set to a multiple of 100 before the call);
4. the amortised sparse step at ``update_every=100``: ``(99 * normal + 1 * mask_update) / 100`` from
   the medians, and measured directly as 100 consecutive real steps (starting at a mask-update step,
   so exactly one update among them; dispatched back to back and blocked on once at the end, as in
   a training loop). The same 100-step loop is timed for the dense step too.

and every one of them as a ratio to the dense step's median. The issue's targets are drawn on the
plot and checked in the JSON: normal sparse step <= 1.05x dense, mask-update step <= 2x dense.

Fairness: dense and sparse steps are jitted the same way, both with ``donate_argnums=(0, 1)``
(params and optimizer state donated, as in a real training loop; ``--no-donate`` jits both without
donation). Every variant runs once per round and the order of variants is shuffled every round
(the normal sparse step always directly precedes the forced mask update, so masks never update
twice in a row), so machine noise hits all variants alike. Absolute times on a shared 2-core
machine drift by up to 2x over minutes; compare ratios within one run, and look at the recorded
load averages and the p25/p75 spread before trusting a number.

Diagnostics (same rounds, same noise): a ``jsp.static`` sparse step (the same wrapper with no
``lax.cond`` and no mask-update branch), ``algo.update_rule`` alone (RigL's drop-and-grow top-k
selections on every layer), and one ``jsp.top_k_mask`` call on the largest kernel. From the medians
``mask_update_step - normal_sparse_step - update_rule`` estimates what the rest of the update
branch costs (optimizer-slot reset, grow-init, projection, cond).

The sparse train step is exactly the library's documented contract::

    tx = jsp.sparsify(optax.sgd(0.1, momentum=0.9), algo, key=jax.random.key(0))
    state = tx.init(params)
    params = jsp.apply_masks(params, jsp.masks_of(state))

    @jax.jit  # here: jax.jit(train_step, donate_argnums=(0, 1)), like the dense step
    def train_step(params, state, batch):
        grads = jax.grad(loss)(jsp.forward_params(params, state), batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

Rerun
-----
From the repository root::

    python benchmarks/step_overhead.py            # full run, a few minutes on 2 CPU cores
    python benchmarks/step_overhead.py --quick    # tiny MLPs, 2 rounds: ~30 s, mostly compiling (CI)

``--out PATH.json`` chooses the JSON file; the bar plot is written next to it as ``PATH.png``. The
defaults are ``benchmarks/results/step_overhead.json`` (full) and
``benchmarks/results/step_overhead_quick.json`` (``--quick``, so a smoke test never overwrites the
real results).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxsparse as jsp

Params = dict[str, dict[str, jax.Array]]
Batch = tuple[jax.Array, jax.Array]
StepFn = Callable[[Params, Any, Batch], tuple[Params, Any]]

BATCH_SIZE = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9
SPARSITY = 0.9
UPDATE_EVERY = 100
END_STEP = 10**6
DROP_FRACTION = 0.3
LOOP_STEPS = UPDATE_EVERY  # consecutive steps of the directly measured amortised step
WARMUP_CALLS = 2
TARGET_NORMAL_RATIO = 1.05
TARGET_MASK_UPDATE_RATIO = 2.0

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "step_overhead.json"
DEFAULT_QUICK_OUT = REPO_ROOT / "benchmarks" / "results" / "step_overhead_quick.json"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One benchmarked MLP and how often to repeat its measurements.

    Attributes:
      name: short label ("A", "B").
      sizes: layer widths, input first, classes last.
      rounds: interleaved rounds; every variant is timed once per round.
      loop_runs: repetitions of the ``LOOP_STEPS``-step loops (sparse and dense each).
    """

    name: str
    sizes: tuple[int, ...]
    rounds: int
    loop_runs: int


FULL_MODELS = (
    ModelConfig("A", (784, 1024, 1024, 10), rounds=60, loop_runs=5),
    ModelConfig("B", (4096, 4096, 4096, 10), rounds=5, loop_runs=1),
)
QUICK_MODELS = (
    ModelConfig("A", (32, 64, 64, 10), rounds=2, loop_runs=2),
    ModelConfig("B", (64, 128, 128, 10), rounds=2, loop_runs=2),
)


# ---------------------------------------------------------------------------------------------
# Model, data, steps
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


def random_batch(key: jax.Array, n_inputs: int, n_classes: int, batch_size: int = BATCH_SIZE) -> Batch:
    input_key, label_key = jax.random.split(key)
    inputs = jax.random.normal(input_key, (batch_size, n_inputs), jnp.float32)
    labels = jax.random.randint(label_key, (batch_size,), 0, n_classes)
    return inputs, labels


def make_optimizer() -> optax.GradientTransformation:
    return optax.sgd(LEARNING_RATE, momentum=MOMENTUM)


def make_rigl() -> jsp.SparseAlgorithm:
    return jsp.rigl(
        SPARSITY, distribution="erk", update_every=UPDATE_EVERY, end_step=END_STEP, drop_fraction=DROP_FRACTION
    )


def make_dense_step(tx: optax.GradientTransformation, donate: bool) -> StepFn:
    def dense_step(params: Params, opt_state: optax.OptState, batch: Batch) -> tuple[Params, optax.OptState]:
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(dense_step, donate_argnums=(0, 1) if donate else ())


def make_sparse_step(tx: optax.GradientTransformationExtraArgs, donate: bool) -> StepFn:
    def train_step(params: Params, state: jsp.SparsifyState, batch: Batch) -> tuple[Params, jsp.SparsifyState]:
        grads = jax.grad(loss_fn)(jsp.forward_params(params, state), batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(train_step, donate_argnums=(0, 1) if donate else ())


@dataclasses.dataclass
class Trainer:
    """A jitted step with the params and state it advances (donated unless --no-donate)."""

    step_fn: StepFn
    params: Params
    state: Any
    batch: Batch

    def set_step(self, step: int) -> None:
        """Sets a ``jsp.SparsifyState``'s step counter (selects the branch of the next call)."""
        self.state = self.state._replace(step=jnp.asarray(step, jnp.int32))

    def run(self, n_steps: int) -> float:
        """Seconds for ``n_steps`` consecutive steps: dispatched back to back, blocked on once."""
        params, state = self.params, self.state
        jax.block_until_ready((params, state))
        start = time.perf_counter()
        for _ in range(n_steps):
            params, state = self.step_fn(params, state, self.batch)
        jax.block_until_ready((params, state))
        elapsed = time.perf_counter() - start
        self.params, self.state = params, state
        return elapsed


def time_call(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds for one call of a (non-donating) jitted function, blocked on."""
    jax.block_until_ready(args)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def fresh(tree: Any) -> Any:
    """A copy of every array leaf in new device buffers."""
    return jax.tree.map(jnp.copy, tree)


def host_copy(tree: Any) -> Any:
    return jax.tree.map(np.array, tree)


def changed_positions(before: Any, after: Any) -> int:
    return int(
        sum(np.count_nonzero(a != b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))
    )


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def summarize_ms(samples_s: list[float]) -> dict[str, float | int]:
    ms = np.asarray(samples_s) * 1e3
    return {
        "median": float(np.median(ms)),
        "p25": float(np.percentile(ms, 25)),
        "p75": float(np.percentile(ms, 75)),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "n": int(ms.size),
    }


# ---------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------


def bench_model(config: ModelConfig, seed: int, donate: bool) -> dict[str, Any]:
    print(f"[{config.name}] MLP {'-'.join(map(str, config.sizes))}: setting up", flush=True)
    data_key, param_key, diag_key = jax.random.split(jax.random.key(seed), 3)
    batch = random_batch(data_key, config.sizes[0], config.sizes[-1])
    params = init_mlp(param_key, config.sizes)

    # Every trainer gets its own buffers: params and states are donated, and apply_masks passes
    # the (dense) biases through without copying them.
    dense_tx = make_optimizer()
    dense_params = fresh(params)
    dense = Trainer(make_dense_step(dense_tx, donate), dense_params, dense_tx.init(dense_params), batch)

    # Sparse: the documented contract.
    algo = make_rigl()
    sparse_tx = jsp.sparsify(make_optimizer(), algo, key=jax.random.key(0))
    sparse_state = sparse_tx.init(params)
    sparse_params = fresh(jsp.apply_masks(params, jsp.masks_of(sparse_state)))
    sparse = Trainer(make_sparse_step(sparse_tx, donate), sparse_params, sparse_state, batch)

    # Diagnostic: the same wrapper around static masks (no lax.cond, no update branch).
    static_tx = jsp.sparsify(make_optimizer(), jsp.static(SPARSITY, distribution="erk"), key=jax.random.key(0))
    static_state = static_tx.init(params)
    static = Trainer(
        make_sparse_step(static_tx, donate),
        fresh(jsp.apply_masks(params, jsp.masks_of(static_state))),
        static_state,
        batch,
    )

    # Diagnostic inputs (fixed, not donated): the update rule and one top-k on the largest kernel.
    diag_params = fresh(jsp.apply_masks(params, jsp.masks_of(sparse_state)))
    diag_masks = fresh(jsp.masks_of(sparse_state))
    diag_grads = jax.jit(jax.grad(loss_fn))(jsp.forward_params(diag_params, diag_masks), batch)
    diag_step = jnp.asarray(UPDATE_EVERY, jnp.int32)
    update_rule = jax.jit(algo.update_rule)
    plans = algo.plan(params)
    largest_index = max(range(len(plans)), key=lambda i: -1 if plans[i] is None else plans[i].size)
    largest = plans[largest_index]
    abs_kernel = jnp.abs(jax.tree.leaves(diag_params)[largest_index])
    kernel_mask = jax.tree.leaves(diag_masks, is_leaf=lambda x: x is None)[largest_index]
    keep_count = largest.active - int(np.floor(np.float32(DROP_FRACTION) * largest.active))
    top_k = jax.jit(lambda scores, candidates: jsp.top_k_mask(scores, keep_count, candidates=candidates))

    # Compile and warm up every variant; check that the forced step really updates the masks.
    compile_s: dict[str, float] = {}
    print(f"[{config.name}] compiling and warming up", flush=True)
    compile_s["dense_step"] = dense.run(1)
    sparse.set_step(1)
    compile_s["sparse_step"] = sparse.run(1)
    compile_s["static_sparse_step"] = static.run(1)
    compile_s["update_rule"] = time_call(update_rule, diag_params, diag_masks, diag_grads, diag_step, diag_key)
    compile_s["top_k_mask"] = time_call(top_k, abs_kernel, kernel_mask)
    for _ in range(WARMUP_CALLS):
        dense.run(1)
        static.run(1)
        sparse.set_step(UPDATE_EVERY + 1)
        normal_before = host_copy(jsp.masks_of(sparse.state))
        sparse.run(1)
        normal_changed = changed_positions(normal_before, host_copy(jsp.masks_of(sparse.state)))
        sparse.set_step(UPDATE_EVERY)
        update_before = host_copy(jsp.masks_of(sparse.state))
        sparse.run(1)
        update_changed = changed_positions(update_before, host_copy(jsp.masks_of(sparse.state)))
        time_call(update_rule, diag_params, diag_masks, diag_grads, diag_step, diag_key)
        time_call(top_k, abs_kernel, kernel_mask)
    if normal_changed != 0 or update_changed == 0:
        raise RuntimeError(
            f"branch check failed: a normal step changed {normal_changed} mask entries and a forced "
            f"mask-update step changed {update_changed}."
        )

    # Interleaved rounds of single-step timings.
    samples: dict[str, list[float]] = {
        name: []
        for name in (
            "dense_step",
            "normal_sparse_step",
            "mask_update_step",
            "static_sparse_step",
            "update_rule",
            "top_k_mask_largest_kernel",
        )
    }

    def time_dense() -> None:
        samples["dense_step"].append(dense.run(1))

    def time_sparse_pair(round_index: int) -> None:
        # Normal step first, so that every forced mask update follows at least one normal step.
        sparse.set_step(UPDATE_EVERY * (round_index + 2) + 1)
        samples["normal_sparse_step"].append(sparse.run(1))
        sparse.set_step(UPDATE_EVERY * (round_index + 3))
        samples["mask_update_step"].append(sparse.run(1))

    def time_static() -> None:
        samples["static_sparse_step"].append(static.run(1))

    def time_update_rule() -> None:
        samples["update_rule"].append(time_call(update_rule, diag_params, diag_masks, diag_grads, diag_step, diag_key))

    def time_top_k() -> None:
        samples["top_k_mask_largest_kernel"].append(time_call(top_k, abs_kernel, kernel_mask))

    rng = random.Random(seed)
    print(f"[{config.name}] {config.rounds} interleaved rounds", flush=True)
    for round_index in range(config.rounds):
        units: list[Callable[[], None]] = [
            time_dense,
            lambda r=round_index: time_sparse_pair(r),
            time_static,
            time_update_rule,
            time_top_k,
        ]
        rng.shuffle(units)
        for unit in units:
            unit()

    # Directly measured amortised step: LOOP_STEPS consecutive steps, exactly one mask update.
    loop_s: dict[str, list[float]] = {"sparse": [], "dense": []}
    print(f"[{config.name}] {config.loop_runs} x {LOOP_STEPS}-step loops", flush=True)
    first_loop_step = UPDATE_EVERY * (config.rounds + 10)
    for run_index in range(config.loop_runs):
        order = ("sparse", "dense") if run_index % 2 == 0 else ("dense", "sparse")
        for kind in order:
            if kind == "sparse":
                sparse.set_step(first_loop_step + UPDATE_EVERY * run_index)
                loop_s["sparse"].append(sparse.run(LOOP_STEPS))
            else:
                loop_s["dense"].append(dense.run(LOOP_STEPS))

    # Results.
    stats = {name: summarize_ms(values) for name, values in samples.items()}
    dense_ms = stats["dense_step"]["median"]
    normal_ms = stats["normal_sparse_step"]["median"]
    mask_ms = stats["mask_update_step"]["median"]
    amortised_ms = ((UPDATE_EVERY - 1) * normal_ms + mask_ms) / UPDATE_EVERY
    sparse_loop_ms = float(np.median(loop_s["sparse"])) * 1e3 / LOOP_STEPS
    dense_loop_ms = float(np.median(loop_s["dense"])) * 1e3 / LOOP_STEPS
    milliseconds = {
        "dense_step": dense_ms,
        "normal_sparse_step": normal_ms,
        "mask_update_step": mask_ms,
        "amortised_sparse_step_from_medians": amortised_ms,
        "amortised_sparse_step_measured_100_steps": sparse_loop_ms,
        "dense_step_measured_100_steps": dense_loop_ms,
    }
    ratios = {
        "normal_sparse_step": normal_ms / dense_ms,
        "mask_update_step": mask_ms / dense_ms,
        "amortised_sparse_step_from_medians": amortised_ms / dense_ms,
        "amortised_sparse_step_measured_100_steps": sparse_loop_ms / dense_ms,
        "amortised_sparse_step_measured_100_steps_vs_dense_100_steps": sparse_loop_ms / dense_loop_ms,
    }
    rule_ms = stats["update_rule"]["median"]
    static_ms = stats["static_sparse_step"]["median"]
    diagnostics = {
        "static_sparse_step_ms": static_ms,
        "static_sparse_step_ratio": static_ms / dense_ms,
        "cond_overhead_ms_estimate": normal_ms - static_ms,
        "update_rule_ms": rule_ms,
        "update_rule_ratio": rule_ms / dense_ms,
        "top_k_mask_largest_kernel_ms": stats["top_k_mask_largest_kernel"]["median"],
        "top_k_mask_largest_kernel": {"shape": list(largest.shape), "k": keep_count},
        "top_k_mask_calls_per_update": 2 * sum(plan is not None for plan in plans),
        "rest_of_update_branch_ms_estimate": mask_ms - normal_ms - rule_ms,
        "notes": (
            "static_sparse_step: the same sparsify wrapper with jsp.static (no lax.cond, no update "
            "branch). update_rule: jax.jit(algo.update_rule) alone, i.e. the drop and grow top-k "
            "selections of all layers. rest_of_update_branch = mask_update - normal - update_rule, "
            "a difference of medians (approximate)."
        ),
    }

    final_sparse_loss = float(loss_fn(jsp.forward_params(sparse.params, sparse.state), batch))
    final_dense_loss = float(loss_fn(dense.params, batch))
    layers = jsp.layer_stats(sparse.params, sparse.state)
    result = {
        "sizes": list(config.sizes),
        "n_params": int(sum(layer.size for layer in layers)),
        "n_active": int(sum(layer.active for layer in layers)),
        "sparsified_layer_sparsity": {layer.name: layer.sparsity for layer in layers if layer.sparsified},
        "total_sparsity_of_sparsified_leaves": jsp.total_sparsity(sparse.state),
        "rounds": config.rounds,
        "loop_runs": config.loop_runs,
        "loop_steps": LOOP_STEPS,
        "ms": milliseconds,
        "ratio_to_dense": ratios,
        "meets_targets": {
            "normal_sparse_step_le_1.05x": ratios["normal_sparse_step"] <= TARGET_NORMAL_RATIO,
            "mask_update_step_le_2x": ratios["mask_update_step"] <= TARGET_MASK_UPDATE_RATIO,
        },
        "stats_ms": stats,
        "loop_total_s": loop_s,
        "compile_and_first_call_s": compile_s,
        "diagnostics": diagnostics,
        "sanity": {
            "mask_entries_changed_by_normal_step": normal_changed,
            "mask_entries_changed_by_forced_mask_update_step": update_changed,
            "final_sparse_loss": final_sparse_loss,
            "final_dense_loss": final_dense_loss,
            "losses_finite": bool(np.isfinite(final_sparse_loss) and np.isfinite(final_dense_loss)),
        },
    }
    print(
        f"[{config.name}] dense {dense_ms:.2f} ms | normal {ratios['normal_sparse_step']:.3f}x | "
        f"mask update {ratios['mask_update_step']:.3f}x | amortised "
        f"{ratios['amortised_sparse_step_from_medians']:.3f}x (medians), "
        f"{ratios['amortised_sparse_step_measured_100_steps']:.3f}x (measured)",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# Machine info, plot, main
# ---------------------------------------------------------------------------------------------


def git_head() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def jaxsparse_source_digest() -> str:
    """SHA-256 over the imported jaxsparse package's ``.py`` files (identifies uncommitted code too)."""
    package = Path(jsp.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def machine_info() -> dict[str, Any]:
    device = jax.devices()[0]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "jax_backend": jax.default_backend(),
        "jax_device": str(device),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _package_version("jaxlib"),
        "optax": optax.__version__,
        "numpy": np.__version__,
        "jaxsparse": jsp.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "malloc_env": {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")},
        "git_head": git_head(),
        "jaxsparse_source_sha256": jaxsparse_source_digest(),
    }


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    bars = (
        ("normal_sparse_step", "normal sparse step"),
        ("mask_update_step", "mask-update step"),
        ("amortised_sparse_step_from_medians", "amortised /100\n(from medians)"),
        ("amortised_sparse_step_measured_100_steps", "amortised /100\n(100 real steps)"),
    )
    colors = ("tab:blue", "tab:red", "tab:green", "tab:olive")
    names = list(results)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for bar_index, ((key, label), color) in enumerate(zip(bars, colors, strict=True)):
        xs = [model_index + (bar_index - (len(bars) - 1) / 2) * width for model_index in range(len(names))]
        values = [results[name]["ratio_to_dense"][key] for name in names]
        rects = ax.bar(xs, values, width, label=label, color=color)
        ax.bar_label(rects, labels=[f"{v:.2f}x" for v in values], fontsize=8, padding=2)
    ax.axhline(1.0, color="black", linewidth=1.2, label="dense step (1.0x)")
    ax.axhline(TARGET_NORMAL_RATIO, color="tab:blue", linestyle="--", linewidth=1, label="target: normal <= 1.05x")
    ax.axhline(
        TARGET_MASK_UPDATE_RATIO, color="tab:red", linestyle="--", linewidth=1, label="target: mask update <= 2x"
    )
    ax.set_yscale("log")
    ax.set_xticks(
        range(len(names)),
        [
            f"{name.replace('_', ' ')}: MLP {'-'.join(map(str, results[name]['sizes']))}\n"
            f"dense step {results[name]['ms']['dense_step']:.3g} ms"
            for name in names
        ],
    )
    ax.set_ylabel("time / dense step time (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top = max(max(results[name]["ratio_to_dense"].values()) for name in names)
    bottom = min(min(results[name]["ratio_to_dense"].values()) for name in names)
    ax.set_ylim(min(0.5, bottom * 0.8), max(4.0, top * 1.6))
    ticks = [t for t in (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100) if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny MLPs and 2 rounds: a smoke test (about 30 s on 2 cores, mostly compilation)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output path; the plot goes next to it with a .png suffix (default: {DEFAULT_OUT}, "
        f"or {DEFAULT_QUICK_OUT} with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data, params and the variant order")
    parser.add_argument(
        "--no-donate",
        action="store_true",
        help="jit dense and sparse steps without donate_argnums (default: both donate params and state)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out: Path = args.out if args.out is not None else (DEFAULT_QUICK_OUT if args.quick else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    models = QUICK_MODELS if args.quick else FULL_MODELS
    donate = not args.no_donate

    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_info()  # before running: the code measured is the code imported now
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    wall_start = time.perf_counter()
    results = {f"model_{config.name}": bench_model(config, args.seed, donate) for config in models}
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    report = {
        "benchmark": "step_overhead",
        "timestamp_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": "quick" if args.quick else "full",
        "duration_s": time.perf_counter() - wall_start,
        "machine": {**machine, "loadavg_before": load_before, "loadavg_after": load_after},
        "settings": {
            "batch_size": BATCH_SIZE,
            "optimizer": f"optax.sgd({LEARNING_RATE}, momentum={MOMENTUM})",
            "algorithm": (
                f"jsp.rigl({SPARSITY}, distribution='erk', update_every={UPDATE_EVERY}, end_step={END_STEP}, "
                f"drop_fraction={DROP_FRACTION})"
            ),
            "donate_argnums": [0, 1] if donate else [],
            "warmup_calls": WARMUP_CALLS,
            "seed": args.seed,
            "timing": (
                "single-step times: one call per variant per round, order shuffled each round, "
                "jax.block_until_ready, time.perf_counter; medians reported. 100-step loops: steps "
                "dispatched back to back from a mask-update step, blocked on once at the end."
            ),
        },
        "targets": {
            "normal_sparse_step_max_ratio": TARGET_NORMAL_RATIO,
            "mask_update_step_max_ratio": TARGET_MASK_UPDATE_RATIO,
        },
        "models": results,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    png = out.with_suffix(".png")
    plot(
        results,
        png,
        f"jaxsparse RigL (90% ERK, update_every={UPDATE_EVERY}) step time / dense step, "
        f"{report['machine']['jax_backend'].upper()}, {report['machine']['cpu_count']} cores, "
        f"{'donated' if donate else 'no donation'}" + (" [--quick]" if args.quick else ""),
    )
    print(f"wrote {out} and {png} in {report['duration_s']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
