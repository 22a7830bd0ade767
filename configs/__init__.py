"""The recipes: every run and paper-table cell as YAML, shipped inside the package as ``sbir_bench.configs``.

This folder holds no code. pyproject.toml maps it into the package so that a wheel carries it; edit
the YAML files here in a clone, or copy one anywhere and pass its path to ``--config``.
"""
