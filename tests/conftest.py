"""Shared fixtures: an isolated cache (the mini set is generated once per session), offline weights,
a tiny random open_clip backbone, and quiet progress bars."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory):
    """Point every cache at a session temp dir and forbid downloads: tests never touch ~/.cache or the net."""
    cache = tmp_path_factory.mktemp("sbir-cache")
    old = {k: os.environ.get(k) for k in ("SBIR_BENCH_CACHE", "SBIR_BENCH_OFFLINE", "SBIR_BENCH_DATA", "HF_HUB_OFFLINE")}
    os.environ.update(SBIR_BENCH_CACHE=str(cache), SBIR_BENCH_OFFLINE="1", HF_HUB_OFFLINE="1",
                      SBIR_BENCH_DATA=str(cache / "no-data-here"))
    from sbir_bench.progress import set_quiet
    set_quiet(True)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mini_root() -> Path:
    from sbir_bench.data.mini import ensure_mini
    return ensure_mini()


@pytest.fixture(scope="session")
def tiny_backbone():
    from sbir_bench.models import load_backbone
    return load_backbone("sbir-tiny")
