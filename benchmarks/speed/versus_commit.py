"""Step time of this checkout against an earlier commit, both timed side by side in one process.

Two runs of ``step_time`` on a shared 2-core machine differ by more than the few percent a refactor
must be held to: the dense baseline alone moves by 10-30% between runs. So this script loads the
earlier commit's ``jaxsparse`` next to the current one (``git archive`` into a temporary folder,
the package renamed), builds the same trainers with both, and times every variant of both
versions in the same shuffled rounds (:func:`benchmarks.common.interleaved_times`). Each variant's
ratio to the one dense step is then directly comparable between versions.

The algorithms are built with the five built-in factories' public arguments, which both versions
share (90% ERK, masks updated every 100 steps, sgd with momentum), on the workloads of
:mod:`benchmarks.speed.workloads`. Rerun from the repository root::

    python -m benchmarks.speed.versus_commit --commit 58c9684            # MLP; ~5 min on 2 CPU cores
    python -m benchmarks.speed.versus_commit --commit 58c9684 --quick    # tiny model: seconds (CI)
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np
import optax
from matplotlib.figure import Figure

import jaxsparse
from benchmarks.common import REPO_ROOT, argument_parser, interleaved_times, output_path, summarize_ms, write_results
from benchmarks.speed.workloads import (
    END_STEP,
    FULL_WORKLOADS,
    QUICK_WORKLOADS,
    SPARSITY,
    UPDATE_EVERY,
    Trainer,
    Workload,
    setup,
)

METHODS = ("static", "set", "rigl", "top_kast", "gradual_magnitude")
QUICK_METHODS = ("static", "rigl")
"""``--quick`` (CI) checks the machinery on fixed masks and one dynamic method."""


def load_commit(commit: str, into: Path) -> ModuleType:
    """``jaxsparse`` as of ``commit``, importable next to the current one as ``jaxsparse_<commit>``."""
    name = f"jaxsparse_{re.sub(r'[^0-9A-Za-z]', '_', commit)}"
    archive = into / "source.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit, "jaxsparse"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    package = into / name
    (into / "jaxsparse").rename(package)
    for source in package.rglob("*.py"):
        source.write_text(re.sub(r"\bjaxsparse\b", name, source.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module(name)


def _algorithm(library: ModuleType, method: str):
    schedule = dict(distribution="erk", update_every=UPDATE_EVERY, end_step=END_STEP)
    return {
        "static": lambda: library.static(SPARSITY, distribution="erk"),
        "set": lambda: library.set_(SPARSITY, **schedule),
        "rigl": lambda: library.rigl(SPARSITY, **schedule),
        "top_kast": lambda: library.top_kast(SPARSITY, 2 * SPARSITY - 1, **schedule),
        "gradual_magnitude": lambda: library.gradual_magnitude(SPARSITY, **schedule),
    }[method]()


def _trainer(library: ModuleType, workload: Workload, method: str, seed: int) -> Trainer:
    """As :func:`benchmarks.speed.workloads.build_trainer`, with ``library``'s models, wrapper and step."""
    training = importlib.import_module(f"{library.__name__}.training")
    models = importlib.import_module(f"{library.__name__}.models")
    model, params, variables, batch, mask_key = setup(workload, seed, models)
    inner = optax.sgd(0.1, momentum=0.9)
    sparse = method != "dense"
    tx = library.sparsify(inner, _algorithm(library, method), key=mask_key) if sparse else inner
    opt_state = jax.jit(tx.init)(params)
    # Top-KAST keeps its weights dense. Named here because the earlier version may predate
    # `algorithm.stores_dense`.
    if sparse and method != "top_kast":
        params = library.apply_masks(params, library.masks_of(opt_state))
    return Trainer(training.make_train_step(model, tx, sparse), params, variables, opt_state, batch)


def bench(
    workload: Workload, libraries: dict[str, ModuleType], seed: int, methods: tuple[str, ...] = METHODS
) -> dict[str, Any]:
    trainers = {"dense": _trainer(jaxsparse, workload, "dense", seed)}
    for label, library in libraries.items():
        for method in methods:
            trainers[f"{label}:{method}"] = _trainer(library, workload, method, seed)
    calls = {"dense": trainers["dense"].step}
    for name, trainer in trainers.items():
        if name == "dense":
            continue
        calls[f"{name}/normal"] = lambda t=trainer: t.step(UPDATE_EVERY + UPDATE_EVERY // 2)
        if not name.endswith(":static"):
            calls[f"{name}/update"] = lambda t=trainer: t.step(2 * UPDATE_EVERY)
    for call in calls.values():
        jax.block_until_ready(call())
    print(f"{workload.label}: timing {workload.rounds} rounds of {len(calls)} variants", flush=True)
    times = {name: summarize_ms(values) for name, values in interleaved_times(calls, workload.rounds, seed).items()}
    dense = times["dense"]["median_ms"]
    ratios = {name: times[name]["median_ms"] / dense for name in times if name != "dense"}
    comparison = {}
    for name, ratio in ratios.items():
        if name.startswith("current:"):
            before = ratios[name.replace("current:", "earlier:", 1)]
            comparison[name.removeprefix("current:")] = {
                "earlier": before,
                "current": ratio,
                "current_over_earlier": ratio / before,
            }
            print(
                f"  {name.removeprefix('current:'):>28}: {before:.3f} -> {ratio:.3f} ({ratio / before:.3f}x)",
                flush=True,
            )
    return {"workload": workload.label, "rounds": workload.rounds, "times": times, "ratio_to_dense": comparison}


def plot(record: dict[str, Any]) -> Figure:
    results = record["results"]
    figure = Figure(figsize=(5 * len(results), 3.6))
    for ax, result in zip(np.atleast_1d(figure.subplots(1, len(results))), results, strict=True):
        names = list(result["ratio_to_dense"])
        x = np.arange(len(names))
        for offset, key in ((-0.2, "earlier"), (0.2, "current")):
            ax.bar(x + offset, [result["ratio_to_dense"][n][key] for n in names], 0.4, label=key)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [n.replace("/", "\n") for n in names], fontsize=6)
        ax.set_ylabel("step time / dense step")
        ax.set_title(f"{result['workload']} ({record['settings']['commit']} vs current)", fontsize=9)
        ax.legend(fontsize=7)
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__)
    parser.add_argument("--commit", required=True, help="the earlier commit to compare against")
    parser.add_argument(
        "--workloads", type=int, nargs="+", default=[0], help="indices into the full workloads (0: MLP)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default: the workload's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    workloads = QUICK_WORKLOADS[:1] if args.quick else [FULL_WORKLOADS[i] for i in args.workloads]
    if args.rounds is not None:
        workloads = [dataclasses.replace(w, rounds=args.rounds) for w in workloads]
    with tempfile.TemporaryDirectory() as scratch:
        libraries = {"earlier": load_commit(args.commit, Path(scratch)), "current": jaxsparse}
        methods = QUICK_METHODS if args.quick else METHODS
        results = [bench(workload, libraries, args.seed, methods) for workload in workloads]
    record = {
        "benchmark": "step time versus commit",
        "quick": args.quick,
        "settings": {"commit": args.commit},
        "results": results,
    }
    write_results(record, output_path(args, "speed", f"versus_{args.commit}"), plot)
    return record


if __name__ == "__main__":
    main()
