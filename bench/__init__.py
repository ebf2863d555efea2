"""Benchmarks: `python bench/run.py` writes BENCHMARKS.md (see bench/README or run.py)."""
