"""Typed configs: built from YAML and overrides without touching the caller's objects."""

from __future__ import annotations

import copy

from sbir_bench.config import build_run_config


def test_building_a_config_leaves_the_callers_dictionaries_as_they_were():
    """A sweep script reuses one base dict: the second run must not inherit the first run's overrides."""
    base = {"data": {"dataset": "mini", "setting": "zs"}, "train": {"epochs": 3}, "method_config": {"n_ctx": 4}}
    frozen = copy.deepcopy(base)
    schedule = {"milestones": [1]}
    first = build_run_config(base, {"method": "coop", "train.epochs": 1, "method_config.n_ctx": 8,
                                    "data.setting": "gzs"})
    assert base == frozen
    second = build_run_config(base, {"method": "coop"})
    assert (first.train.epochs, first.data.setting) == (1, "gzs")
    assert (second.train.epochs, second.data.setting, second.method_config["n_ctx"]) == (3, "zs", 4)
    build_run_config(base, {"method": "coop", "method_config.extra": schedule})
    assert base == frozen and schedule == {"milestones": [1]}
