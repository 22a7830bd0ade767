"""The method registry (``sbir-bench methods`` lists it)."""

from __future__ import annotations

import importlib

from ..registry import Registry

METHODS: Registry = Registry("method", group="sbir_bench.methods")
BUILTIN_MODULES = ("baselines", "splip")


def load_builtin_methods() -> None:
    """Import the packages whose modules register the built-in methods."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get_method(name: str):
    """The method class registered as ``name``."""
    load_builtin_methods()
    return METHODS.get(name)
