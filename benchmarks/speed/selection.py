"""Exact top-k mask selection, jaxsparse's against the methods peers use, from 1M to 128M elements.

A mask update is a handful of top-k selections over every sparsified tensor (RigL: the weights
to keep, then the gradients to grow), so its cost grows with model size as the selection's does.
For each size, every method builds the boolean mask of the ``k = 10%`` largest ``|x|`` of the same
float32 tensor under ``jax.jit``:

* ``jaxsparse`` — :func:`jaxsparse.top_k_mask`: radix select over the float's bit pattern (two
  histogram passes, exact, ties broken by a keyed hash), ``O(n)``;
* ``argsort`` — a full ``jnp.argsort`` and a scatter of the first ``k`` indices: how the nearest
  JAX peer (google-research/jaxpruner) selects each mask, ``O(n log n)``;
* ``lax.top_k`` — ``jax.lax.top_k`` then a scatter;
* ``approx_max_k`` — ``jax.lax.approx_max_k`` then a scatter (approximate on TPU; exact on CPU and
  GPU, where it falls back to an exact top-k).

Every method is checked to select exactly ``k`` elements, and every exact method to agree with
ours up to elements tied with the k-th value. Functions are compiled ahead of time; timed calls are
interleaved, one per method per round, and the median is reported with its ratio to ours. The
slowest methods take tens of seconds per call at 128M elements on a CPU, so the largest sizes get
fewer repeats (recorded).

Rerun from the repository root::

    python -m benchmarks.speed.selection            # 1M to 128M: about 15 min on 2 CPU cores
    python -m benchmarks.speed.selection --quick    # 10k and 100k elements: seconds (CI)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from matplotlib.figure import Figure

from benchmarks.common import argument_parser, interleaved_times, output_path, summarize_ms, write_results
from jaxsparse.selection import top_k_mask

FULL_SIZES = (1_000_000, 4_000_000, 16_000_000, 64_000_000, 128_000_000)
QUICK_SIZES = (10_000, 100_000)
DENSITY = 0.1


def repeats_for(size: int) -> int:
    """Timed calls per method: 7 up to 16M elements, then fewer (argsort takes ~a minute at 128M on CPU)."""
    return 7 if size <= 16_000_000 else 3 if size <= 64_000_000 else 2


def _scatter(indices: jax.Array, size: int) -> jax.Array:
    return jnp.zeros((size,), bool).at[indices].set(True)


def selectors(size: int, k: int) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """Each method as a function from the tensor to its boolean top-k mask of ``|x|``."""
    return {
        "jaxsparse": lambda x: top_k_mask(jnp.abs(x), k),
        "argsort": lambda x: _scatter(jnp.argsort(-jnp.abs(x))[:k], size),
        "lax.top_k": lambda x: _scatter(lax.top_k(jnp.abs(x), k)[1], size),
        "approx_max_k": lambda x: _scatter(lax.approx_max_k(jnp.abs(x), k)[1], size),
    }


def time_size(size: int, repeats: int) -> dict[str, Any]:
    x = jax.random.normal(jax.random.key(size), (size,))
    k = int(DENSITY * size)
    compiled = {name: jax.jit(fn).lower(x).compile() for name, fn in selectors(size, k).items()}
    reference = compiled["jaxsparse"](x)
    kth_value = jnp.min(jnp.where(reference, jnp.abs(x), jnp.inf))
    for name, fn in compiled.items():
        mask = fn(x)
        if int(mask.sum()) != k:
            raise RuntimeError(f"{name} selected {int(mask.sum())} elements, not k={k}")
        tied_only = bool(((mask == reference) | (jnp.abs(x) == kth_value)).all())
        if name != "approx_max_k" and not tied_only:
            raise RuntimeError(f"{name} disagrees with jaxsparse.top_k_mask beyond ties")
    samples = interleaved_times({name: (lambda fn=fn: fn(x)) for name, fn in compiled.items()}, repeats, seed=size)
    times = {name: summarize_ms(values) for name, values in samples.items()}
    ours = times["jaxsparse"]["median_ms"]
    result = {
        "size": size,
        "k": k,
        "repeats": repeats,
        "times": times,
        "ratio_to_jaxsparse": {name: t["median_ms"] / ours for name, t in times.items()},
    }
    cells = ", ".join(f"{name} {t['median_ms']:.1f} ms" for name, t in times.items())
    print(f"{size:>12,}: {cells}", flush=True)
    return result


def plot(record: dict[str, Any]) -> Figure:
    """Median time per mask against tensor size (log-log), one line per method, with the ratio to ours."""
    import matplotlib.pyplot as plt

    results = record["results"]
    sizes = [r["size"] for r in results]
    fig, (time_ax, ratio_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in results[0]["times"]:
        time_ax.plot(sizes, [r["times"][name]["median_ms"] for r in results], marker="o", label=name)
        ratio_ax.plot(sizes, [r["ratio_to_jaxsparse"][name] for r in results], marker="o", label=name)
    for ax, label in ((time_ax, "median ms per mask"), (ratio_ax, "time / jaxsparse.top_k_mask")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements (k = 10%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Exact top-k mask selection ({record['environment']['device_kind']})")
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="tensor sizes (default: 1M to 128M)")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    record = {
        "benchmark": "top-k selection",
        "quick": args.quick,
        "settings": {"density": DENSITY, "dtype": "float32", "score": "|x|, x ~ N(0, 1)"},
        "results": [time_size(size, 2 if args.quick else repeats_for(size)) for size in sizes],
    }
    write_results(record, output_path(args, "speed", "selection"), plot)
    return record


if __name__ == "__main__":
    main()
