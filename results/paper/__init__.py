"""The published tables (CSV, see README.md here), shipped inside the package as ``sbir_bench.published``.

This folder holds no code. pyproject.toml maps it into the package so that a wheel carries it.
"""
