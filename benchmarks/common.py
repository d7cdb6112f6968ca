"""What every benchmark script shares: its command line, timing, provenance and result files.

A full run writes ``benchmarks/results/<area>/<name>.json`` with a plot next to it (``.png``); a
``--quick`` run writes under ``benchmarks/results/quick/`` (git-ignored), so proving that a script
runs never overwrites committed results. Every JSON file records the machine, the package
versions, the git commit of the code that produced it, the command line and the load average.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure

from jaxsparse.training import git_commit, versions

__all__ = [
    "COMPILATION_CACHE",
    "REPO_ROOT",
    "RESULTS",
    "argument_parser",
    "changed_entries",
    "environment",
    "interleaved_times",
    "output_path",
    "summarize_ms",
    "write_results",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
COMPILATION_CACHE = RESULTS / "quick" / "jax-cache"
"""A git-ignored XLA compilation cache for runs whose compile time is not being measured."""


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with ``--quick`` and ``--out``; its description is the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: proves the script runs")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file to write (default: benchmarks/results/<area>/<name>.json)"
    )
    return parser


def output_path(args: argparse.Namespace, area: str, name: str) -> Path:
    """``--out`` if given, else the committed location (full run) or ``results/quick/`` (``--quick``)."""
    if args.out is not None:
        return args.out
    return RESULTS / ("quick" if args.quick else area) / f"{name}.json"


def changed_entries(before: Any, after: Any) -> int:
    """How many array entries differ between two pytrees of the same structure (e.g. masks before and after a step).

    Pass host copies (``jax.tree.map(np.array, ...)``) of anything a donating step may overwrite.
    """
    pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    return int(sum(np.count_nonzero(np.asarray(a) != np.asarray(b)) for a, b in pairs))


def environment() -> dict[str, Any]:
    """The machine, devices, package versions, git commit, command line and load average of this run."""
    return {
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [str(device) for device in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "versions": versions(),
        "loadavg_1_5_15_min": os.getloadavg(),
    }


def summarize_ms(samples_s: list[float]) -> dict[str, float]:
    """Median, quartiles, minimum and count of wall times given in seconds, in milliseconds."""
    ms = sorted(1e3 * s for s in samples_s)
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "p25_ms": quartiles[0],
        "p75_ms": quartiles[2],
        "min_ms": ms[0],
        "n": len(ms),
    }


def interleaved_times(calls: Mapping[str, Callable[[], Any]], rounds: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, every call once per round in a freshly shuffled order.

    Interleaving makes machine noise (other processes, frequency changes) hit every variant alike,
    so ratios between them taken from one run are trustworthy even when absolute times drift.
    Each call's result is blocked on (``jax.block_until_ready``) before the clock stops.
    """
    order = list(calls)
    shuffle = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            start = time.perf_counter()
            jax.block_until_ready(calls[name]())
            samples[name].append(time.perf_counter() - start)
    return samples


def write_results(record: dict[str, Any], path: Path, plot: Callable[[dict[str, Any]], Figure]) -> Path:
    """Writes ``record`` with :func:`environment` as JSON to ``path``, and the figure ``plot(record)`` next to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"environment": environment(), **record}
    path.write_text(json.dumps(record, indent=2) + "\n")
    png = path.with_suffix(".png")
    figure = plot(record)
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    plt.close(figure)
    print(f"wrote {path} and {png}", flush=True)
    return png


def append_csv_rows(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Appends ``rows`` (their ``columns``, in order) to the CSV at ``path``, writing the header first if it is new.

    The accuracy studies append each finished run, so an interrupted study resumes from its CSV.
    """
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerows({name: row[name] for name in columns} for row in rows)
