"""Typed configs: built from YAML and overrides without touching the caller's objects."""

from __future__ import annotations

import copy

import pytest

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


@pytest.mark.parametrize("key,value,trains,row", [
    ("train.lr", 0.5, True, True), ("method_config.n_ctx", 8, True, True),  # training
    ("eval.protocol", "sake", False, True), ("train.val_every", 3, False, True),  # evaluation
    ("output_dir", "elsewhere", False, False), ("eval.batch_size", 7, False, False),  # incidental
    ("seed", 5, True, False), ("data.gallery", "published", True, False),  # seed, label
])
def test_each_field_identifies_what_its_declared_role_says(key, value, trains, row):
    """One declaration per field (config.ROLES) decides a checkpoint's fingerprint (what may change on
    resume, and which trainings are the same model) and a table row's identity."""
    from sbir_bench.config import config_id, to_dict
    from sbir_bench.runner import training_fingerprint
    base = build_run_config({}, {"method": "coop"})
    changed = build_run_config({}, {"method": "coop", key: value})
    assert (training_fingerprint(changed) != training_fingerprint(base)) == trains
    assert (config_id(to_dict(changed)) != config_id(to_dict(base))) == row


def test_a_record_from_before_a_field_existed_shares_the_row_of_one_at_its_default():
    from sbir_bench.config import config_id, to_dict
    now = to_dict(build_run_config({}, {"method": "coop"}))
    before = copy.deepcopy(now)
    del before["eval"]["amp"]  # records written before eval.amp existed
    assert config_id(before) == config_id(now)
    fp32 = to_dict(build_run_config({}, {"method": "coop", "eval.amp": False}))
    assert config_id(fp32) != config_id(now)  # a field set away from its default still tells rows apart


def test_every_method_declares_its_options_with_the_run_configs_field_helper():
    """Method configs speak the run config's dialect: every field is an ``opt`` (help, bounds, choices), so
    one validation checks them and a bad value is the same one line as any other config key's."""
    import dataclasses

    from sbir_bench.methods import METHODS
    for name, cls in METHODS.items():
        for f in dataclasses.fields(cls.config_class):
            assert "role" in (f.metadata or {}) and f.metadata.get("help"), f"{name}: {f.name} is not declared with opt"
