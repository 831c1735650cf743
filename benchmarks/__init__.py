"""Benchmarks: real engines, real product DDL and queries; run as ``python -m benchmarks.<name>``.

Figures go to docs/BENCHMARKS.md (only from real runs). These are not timed tests.
"""
