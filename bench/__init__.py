"""Benchmarks: each prints a small table and ratios measured side by side in one run."""
