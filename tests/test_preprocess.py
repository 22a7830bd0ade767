"""Preprocessing (models/preprocess.py): evaluation equals open_clip's own transform for its tags, and
training augmentation keeps the weights' interpolation and statistics."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from sbir_bench.models import load_backbone
from sbir_bench.models.preprocess import eval_transform, preprocess_config


def _odd_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((171, 300), (400, 97), (64, 65))]


@pytest.mark.parametrize("name,tag", [("ViT-B-32", "openai"),  # OpenAI's statistics, and LAION's tag on another model
                                      pytest.param("ViT-L-14", "laion2b_s32b_b82k", marks=pytest.mark.slow)])
def test_eval_transform_equals_open_clips_own_preprocess(name, tag, tmp_path, monkeypatch):
    """Random weights: open_clip's download and weight loading are stubbed on both sides, so each
    builds the tag's model config and preprocessing exactly as it would with the real weights."""
    dummy = tmp_path / "weights.pt"
    dummy.write_bytes(b"stub")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, **kw: str(dummy))
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda *a, **kw: None)
    monkeypatch.setattr("sbir_bench.models.factory._resolve_weights", lambda *a, **kw: str(dummy))
    _, _, reference = open_clip.create_model_and_transforms(name, pretrained=tag)
    backbone = load_backbone(name, tag)
    ours = eval_transform(preprocess_config(backbone.preprocess_cfg))
    for image in _odd_images():
        assert torch.equal(ours(image), reference(image))
    expected = open_clip.get_pretrained_cfg(name, tag)
    assert tuple(backbone.preprocess_cfg["mean"]) == tuple(expected.get("mean") or open_clip.OPENAI_DATASET_MEAN)


def test_training_augmentation_keeps_interpolation_and_statistics(tiny_backbone):
    from sbir_bench.models.preprocess import train_transform
    cfg = preprocess_config(tiny_backbone.preprocess_cfg)
    tf = train_transform(cfg, 0.08)
    crop, normalise = tf.transforms[0], tf.transforms[-1]
    assert crop.interpolation.value == cfg.interpolation and tuple(normalise.mean) == tuple(cfg.mean)
    assert crop.scale == (0.08, 1.0)  # CoOp/MaPLe's random_resized_crop, restored by data.crop_scale_min
