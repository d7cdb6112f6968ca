"""Exact top-k mask selection: jaxsparse's radix select against the alternatives.

For each tensor size, every method builds the boolean mask of the ``k = 10%`` largest ``|x|``
(the shape of a RigL drop/grow selection) from the same float32 tensor, under ``jax.jit``, and
the median wall time over interleaved repetitions is reported with its ratio to ours:

* ``radix`` — :func:`jaxsparse.top_k_mask` (two histogram passes, exact, ties broken by a keyed
  hash);
* ``bisection`` — the 32-pass bisection over key bits it replaced (same exact result);
* ``lax.top_k`` — ``jax.lax.top_k`` then a scatter into a mask;
* ``argsort`` — a full argsort then a scatter (how the nearest JAX peer selects each mask);
* ``approx_max_k`` — ``jax.lax.approx_max_k`` (not exact on TPU; on CPU it falls back to exact).

Run ``python benchmarks/selection.py`` (full) or ``--quick`` (tiny sizes, proves it runs).
Results go to ``benchmarks/results/selection.json`` and ``selection.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from jaxsparse.selection import order_keys, top_k_mask


def bisection_top_k(scores: jax.Array, k: int) -> jax.Array:
    """The previous method: the k-th largest key by 32 counting passes, then ``key >= t``.

    Without the tie stage (the benchmark's continuous scores have no ties), which only makes it
    faster than a complete implementation.
    """
    keys = order_keys(scores)

    def set_bit_if_enough(i, threshold):
        probe = threshold | (jnp.uint32(1) << (jnp.uint32(31) - i.astype(jnp.uint32)))
        return jnp.where(jnp.sum(keys >= probe, dtype=jnp.int32) >= k, probe, threshold)

    return keys >= lax.fori_loop(0, 32, set_bit_if_enough, jnp.uint32(0))


def _scatter_mask(indices: jax.Array, size: int) -> jax.Array:
    return jnp.zeros((size,), bool).at[indices].set(True)


def methods(size: int, k: int) -> dict:
    return {
        "radix": lambda x: top_k_mask(jnp.abs(x), k),
        "bisection": lambda x: bisection_top_k(jnp.abs(x), k),
        "lax.top_k": lambda x: _scatter_mask(lax.top_k(jnp.abs(x), k)[1], size),
        "argsort": lambda x: _scatter_mask(jnp.argsort(-jnp.abs(x))[:k], size),
        "approx_max_k": lambda x: _scatter_mask(lax.approx_max_k(jnp.abs(x), k)[1], size),
    }


def time_methods(size: int, repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(size), (size,))
    k = size // 10
    compiled = {name: jax.jit(fn) for name, fn in methods(size, k).items()}
    reference = compiled["radix"](x)
    assert int(reference.sum()) == k
    kth_value = jnp.abs(x)[reference].min()
    for name, fn in compiled.items():
        mask = fn(x).block_until_ready()
        if name != "approx_max_k":
            # Exact methods may only disagree on which of the values tied with the k-th to take.
            assert bool(((mask == reference) | (jnp.abs(x) == kth_value)).all()), f"{name} is not a top-k"
    samples = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            fn(x).block_until_ready()
            samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times) * 1e3 for name, times in samples.items()}
    return {
        "size": size,
        "k": k,
        "median_ms": medians,
        "ratio_to_radix": {name: ms / medians["radix"] for name, ms in medians.items()},
    }


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in results[0]["median_ms"]:
        ax.plot([r["size"] for r in results], [r["median_ms"][name] for r in results], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("elements")
    ax.set_ylabel("median ms per mask (k = 10%)")
    ax.set_title(f"Exact top-k mask selection ({jax.devices()[0].platform})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: proves the script runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [1_000_000, 4_000_000, 16_000_000, 25_000_000]
    repeats = 2 if args.quick else 7
    results = [time_methods(size, repeats) for size in sizes]
    for r in results:
        cells = ", ".join(
            f"{name} {ms:.1f} ms ({r['ratio_to_radix'][name]:.1f}x)" for name, ms in r["median_ms"].items()
        )
        print(f"{r['size']:>11,}: {cells}")
    record = {
        "benchmark": "selection",
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "jax": jax.__version__,
        "git_commit": _git_commit(),
        "quick": args.quick,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "selection_quick" if args.quick else "selection"
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    plot(results, args.out / f"{stem}.png")


if __name__ == "__main__":
    main()
