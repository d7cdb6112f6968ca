"""Per-seed test accuracies of several methods on digits, to size the margin of the end-to-end test.

``tests/test_end_to_end.py`` asserts that RigL at 90% sparsity lands within a margin of dense.
That margin comes from this study, run with exactly the test's settings (``train_digits.train``'s
defaults)::

    python examples/digits_margin_study.py                       # dense, rigl, static, set; seeds 0-7
    python examples/digits_margin_study.py --methods dense rigl --seeds 0 1 2

It prints every run's test accuracy, then per method the mean/min/max and the gap to dense
(``dense - method``, same seed), whose maximum is what the test's margin must exceed.
"""

from __future__ import annotations

import argparse

import numpy as np
from train_digits import DEFAULTS, METHODS, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["dense", "rigl", "static", "set"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(8)))
    parser.add_argument("--sparsity", type=float, default=DEFAULTS["sparsity"])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    args = parser.parse_args(argv)

    methods = list(dict.fromkeys(["dense", *args.methods]))  # dense is the reference of every gap
    accuracy = {m: {} for m in methods}
    for seed in args.seeds:
        for method in methods:
            run = train(method, args.sparsity, seed, args.steps)
            accuracy[method][seed] = run["accuracy"]
            print(f"seed {seed}  {method:<17} accuracy {run['accuracy']:.4f}  ({run['seconds']:.1f} s)", flush=True)

    print()
    print(f"sparsity={args.sparsity} steps={args.steps} seeds={args.seeds}")
    print("method             " + "  ".join(f"s{s:<5}" for s in args.seeds) + "   mean    min    max   max gap")
    for method in methods:
        values = np.array([accuracy[method][s] for s in args.seeds])
        gaps = np.array([accuracy["dense"][s] - accuracy[method][s] for s in args.seeds])
        cells = "  ".join(f"{v:.4f}" for v in values)
        print(f"{method:<17}  {cells}   {values.mean():.4f} {values.min():.4f} {values.max():.4f}  {gaps.max():+.4f}")


if __name__ == "__main__":
    main()
