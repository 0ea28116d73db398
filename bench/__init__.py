"""Benchmarks of cryoscape against cryoDRGN 4.3.1 (see ``bench/README.md``; figures in ``bench/RESULTS.md``).

Each script is run from the repository root as a module, e.g. ``.venv/bin/python -m bench.throughput``; the shared
helpers are in :mod:`bench.common`. Not part of the installed package.
"""
