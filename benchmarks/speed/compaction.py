"""Inference speed of compacted models against their dense originals, next to the FLOPs they save.

For LeNet-5 and the ViT (on MNIST-1D-shaped inputs, ``(40, 1)``) and ResNet-20 (CIFAR-10-shaped,
``(32, 32, 3)``), a fraction ``r`` of the removable channels of each layer is zeroed, exactly as a
structured method leaves them:

* ``lenet5``: the output channels of both convolutions and of the two hidden dense layers (with
  their biases); the classifier stays whole;
* ``resnet20``: each residual block's inner channels (its first convolution's filters, with the
  following batch norm's scale and shift). The residual streams are not cut: the option-A
  shortcuts pad channels, which ties each stage's stream to its input;
* ``vit``: whole attention heads (their slice of the output projection) and the MLP's hidden
  neurons, in both blocks.

:func:`jaxsparse.compaction.compact` then removes them, and the dense original and the compacted
model (both ``jax.jit``-compiled, on the same inputs) are timed side by side at batch 1, 32 and 256:
interleaved calls, the median over rounds. The FLOPs are
:func:`jaxsparse.inspection.layer_flops` of each (the products with a weight; attention's
``q k^T`` is not counted). The compacted model's outputs are checked equal to the original's.

The speedup is ``t_dense / t_compact`` and the FLOPs reduction ``F_dense / F_compact``; their
ratio is how much of the arithmetic saved turns into time saved. The issue's goal: at batch 256 on
the convnets, a speedup of at least 70% of the FLOPs reduction.

Rerun from the repository root::

    python -m benchmarks.speed.compaction            # 3 models x 4 levels x 3 batch sizes: ~10 min on 2 CPU cores
    python -m benchmarks.speed.compaction --quick    # LeNet-5, one level, batches 1 and 8: seconds (CI)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from benchmarks.common import argument_parser, interleaved_times, output_path, summarize_ms, write_results
from jaxsparse.compaction import compact
from jaxsparse.inspection import layer_flops
from jaxsparse.models import create_model

INPUTS = {"lenet5": (40, 1), "resnet20": (32, 32, 3), "vit": (40, 1)}
LEVELS = (0.0, 0.25, 0.5, 0.75, 0.9)
"""Fractions removed; 0 is the control: the compacted program with nothing removed, against the original."""
BATCHES = (1, 32, 256)
GOAL = 0.7


def _zero(array: np.ndarray, axis: int, count: int, rng: np.random.Generator) -> np.ndarray:
    chosen = rng.choice(array.shape[axis], min(count, array.shape[axis] - 1), replace=False)  # one stays
    index = [slice(None)] * array.ndim
    index[axis] = chosen
    array[tuple(index)] = 0
    return chosen


def remove_channels(name: str, variables: dict, fraction: float, rng: np.random.Generator) -> dict:
    """The variables with ``fraction`` of each removable layer's channels zeroed (see the module docstring)."""
    variables = jax.tree.map(np.array, variables)
    params = variables["params"]
    if name == "lenet5":
        for layer in ("Conv_0", "Conv_1", "Dense_0", "Dense_1"):
            kernel = params[layer]["kernel"]
            chosen = _zero(kernel, -1, round(fraction * kernel.shape[-1]), rng)
            params[layer]["bias"][chosen] = 0
    elif name == "resnet20":
        for block in (k for k in params if k.startswith("layer_")):
            kernel = params[block]["conv_0"]["kernel"]
            chosen = _zero(kernel, -1, round(fraction * kernel.shape[-1]), rng)
            params[block]["norm_0"]["scale"][chosen] = 0
            params[block]["norm_0"]["bias"][chosen] = 0
    else:
        for block in (k for k in params if k.startswith("layer_")):
            out = params[block]["attention"]["out"]["kernel"]
            _zero(out, 0, round(fraction * out.shape[0]), rng)
            hidden = params[block]["mlp_in"]
            chosen = _zero(hidden["kernel"], -1, round(fraction * hidden["kernel"].shape[-1]), rng)
            hidden["bias"][chosen] = 0
    return variables


def measure(name: str, fraction: float, batches: Sequence[int], rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows of dense and compacted timings and FLOPs for one model and removal level."""
    net = create_model(name, num_classes=10, input_shape=INPUTS[name])
    key = jax.random.key(seed)
    example = jax.random.normal(key, (2, *INPUTS[name]))
    variables = net.init(key, example, train=False)
    # On the device, as the compacted parameters are: host arrays would be copied over at every call.
    variables = jax.device_put(remove_channels(name, variables, fraction, np.random.default_rng(seed)))
    apply_fn = functools.partial(net.apply, train=False)
    model = compact(apply_fn, variables, example)
    dense_step, compact_step = jax.jit(apply_fn), jax.jit(model)
    rows = []
    for batch in batches:
        x = jax.random.normal(jax.random.key(batch), (batch, *INPUTS[name]))
        expected, actual = dense_step(variables, x), compact_step(model.params, x)
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-4, atol=1e-4)
        flops_dense = sum(layer_flops(apply_fn, variables, x).values())
        flops_compact = sum(layer_flops(model, model.params, x).values())
        times = interleaved_times(
            {"dense": lambda x=x: dense_step(variables, x), "compact": lambda x=x: compact_step(model.params, x)},
            rounds=rounds if batch < 256 else max(3, rounds // 2),
        )
        dense_ms, compact_ms = summarize_ms(times["dense"]), summarize_ms(times["compact"])
        speedup = dense_ms["median_ms"] / compact_ms["median_ms"]
        reduction = flops_dense / flops_compact
        before, after = model.parameter_counts
        rows.append(
            {
                "model": name,
                "removed": fraction,
                "batch": batch,
                "params_dense": before,
                "params_compact": after,
                "flops_dense": flops_dense,
                "flops_compact": flops_compact,
                "flops_reduction": reduction,
                "dense": dense_ms,
                "compact": compact_ms,
                "speedup": speedup,
                "speedup_over_flops_reduction": speedup / reduction,
            }
        )
        print(
            f"{name} r={fraction:.2f} batch {batch}: FLOPs /{reduction:.2f}, {dense_ms['median_ms']:.3f} -> "
            f"{compact_ms['median_ms']:.3f} ms, speedup {speedup:.2f}x ({speedup / reduction:.0%} of the FLOPs cut)",
            flush=True,
        )
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | removed | params | FLOPs cut | batch | dense (ms) | compact (ms) | speedup | speedup / FLOPs cut |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['removed']:.0%} | {r['params_dense']:,} → {r['params_compact']:,} | "
            f"{r['flops_reduction']:.2f}× | {r['batch']} | {r['dense']['median_ms']:.3f} | "
            f"{r['compact']['median_ms']:.3f} | {r['speedup']:.2f}× | {r['speedup_over_flops_reduction']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(12, 3.8))
    models = list(dict.fromkeys(r["model"] for r in record["rows"]))
    for k, name in enumerate(models):
        axis = figure.add_subplot(1, len(models), k + 1)
        rows = [r for r in record["rows"] if r["model"] == name]
        top = max(max(r["flops_reduction"], r["speedup"]) for r in rows)
        axis.plot([1, top], [1, top], color="gray", lw=0.8, label="speedup = FLOPs cut")
        axis.plot([1, top], [1, GOAL * top], color="gray", lw=0.8, ls="--", label=f"{GOAL:.0%} of the FLOPs cut")
        for batch in sorted({r["batch"] for r in rows}):
            line = [r for r in rows if r["batch"] == batch]
            axis.plot([r["flops_reduction"] for r in line], [r["speedup"] for r in line], "o-", label=f"batch {batch}")
        axis.set(title=name, xlabel="FLOPs reduction (×)", ylabel="measured speedup (×)")
        axis.legend(fontsize=7)
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per variant (half at batch 256)")
    args = parser.parse_args(argv)
    models, levels, batches, rounds = args.models, LEVELS, BATCHES, args.rounds
    if args.quick:
        models, levels, batches, rounds = ["lenet5"], (0.5,), (1, 8), 3
    rows = [row for name in models for fraction in levels for row in measure(name, fraction, batches, rounds)]
    out = output_path(args, "speed", "compaction")
    goal = [
        {"model": r["model"], "removed": r["removed"], "met": r["speedup"] >= GOAL * r["flops_reduction"]}
        for r in rows
        if r["batch"] == max(batches) and r["model"] in ("lenet5", "resnet20")
    ]
    record = {"quick": args.quick, "goal": f"speedup >= {GOAL} x FLOPs reduction at batch 256 (convnets)", "rows": rows}
    record["goal_checks"] = goal
    write_results(record, out, plot)
    out.with_suffix(".md").write_text(markdown(rows))
    return record


if __name__ == "__main__":
    main()
