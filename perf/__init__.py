"""Benchmarks of the beta-VAE loss (CONTRACT section 6): ``python -m perf.bench --help``."""
