"""Command-line entry points, one per pipeline stage (``python -m gemsbench.cli.<stage> --help``).

Snakemake rules call these; each also runs on its own.
"""
