"""The examples in docstrings are executable documentation: each one runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"sbir_bench": ROOT / "sbir_bench", "sbir_bench.baselines": ROOT / "baselines",
           "sbir_bench.splip": ROOT / "splip"}


def _modules_with_examples():
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            if ">>>" in path.read_text():
                rel = path.relative_to(folder).with_suffix("")
                parts = [p for p in rel.parts if p != "__init__"]
                yield ".".join([package, *parts])


MODULES = list(_modules_with_examples())


def test_the_examples_are_found():
    assert len(MODULES) >= 10 and "sbir_bench.locations" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run_as_shown(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, name
