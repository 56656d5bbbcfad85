"""Benchmarks: scripts, not tests. Run one with `python -m bench.<name>`."""
