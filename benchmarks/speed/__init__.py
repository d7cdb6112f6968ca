"""Speed benchmarks: step time, selection, memory, whole-run wall clock, data parallelism."""
