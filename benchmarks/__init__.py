"""Benchmarks: the suite (``python -m benchmarks.suite``) and timing scripts."""
