"""Benchmarks of the beta-VAE loss (CONTRACT section 6): ``python -m perf.bench --help``.

``perf`` is no part of the installed package: ``python -m perf.<module>`` runs from the
repository's root folder (elsewhere Python finds no module ``perf``), ``python
perf/<module>.py`` from any folder. Each module finds its files (``perf/out/``, the
repository's ``reference/``) from its own path, not from the current folder.
"""
