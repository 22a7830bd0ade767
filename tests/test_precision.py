"""One precision policy: training and evaluation each state theirs, and the feature cache keys by it."""

from __future__ import annotations

import torch

from sbir_bench.precision import FP32, Precision, evaluation_precision, training_precision


def test_each_stage_follows_its_own_switch(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_precision(True, cuda).name == "bf16" and evaluation_precision(True, cuda).name == "bf16"
    assert training_precision(False, cuda) == FP32 and evaluation_precision(True, cuda).name == "bf16"
    assert evaluation_precision(False, cuda) == FP32 and training_precision(True, cuda).name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # an older GPU
    assert training_precision(True, cuda).needs_scaler and evaluation_precision(True, cuda) == FP32
    for amp in (True, False):
        assert training_precision(amp, torch.device("cpu")) == FP32 == evaluation_precision(amp, torch.device("cpu"))


def test_fp32_runs_without_autocast_and_bf16_autocasts():
    x = torch.ones(2, 2)
    with FP32.autocast("cpu"):
        assert (x @ x).dtype == torch.float32
    with Precision("bf16").autocast("cpu"):
        assert (x @ x).dtype == torch.bfloat16


def test_the_feature_cache_keys_by_the_evaluation_precision(tmp_path, monkeypatch, tiny_backbone):
    from sbir_bench import feature_cache
    monkeypatch.setattr(feature_cache, "features_root", lambda: tmp_path)
    keys = {p.name: feature_cache.open_for(tiny_backbone, {"size": 32}, "cuda", p).key["precision"]
            for p in (FP32, Precision("bf16"))}
    assert keys == {"fp32": "fp32", "bf16": "bf16-autocast"}
