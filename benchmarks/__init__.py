"""Performance scripts (``bench_*.py``), run by ``mfd bench``; installed as ``mfdiffuser.benchmarks``."""
