"""Benchmarks: each module has run(config) -> dict of ratios measured in one run."""
