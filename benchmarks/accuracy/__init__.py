"""Accuracy benchmarks: every method at several sparsities, distributions and seeds."""
