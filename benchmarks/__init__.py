"""jaxsparse's benchmarks: speed against dense training and against other selection methods, and accuracy.

Run each script as a module from the repository root, e.g. ``python -m benchmarks.speed.step_time``;
every script takes ``--quick`` (seconds, proves it runs) and writes its results under
``benchmarks/results/``. See ``benchmarks/README.md``.
"""
