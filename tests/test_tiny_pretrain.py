"""The mini-pretrained sbir-tiny backbone: deterministic, cached, and CLIP-like (zero-shot above chance)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sbir_bench.models import load_backbone
from sbir_bench.models import tiny_pretrain as tp
from sbir_bench.models.factory import resolve_pretrained


def test_tiny_defaults_to_mini_weights_and_random_is_available():
    assert resolve_pretrained("sbir-tiny", None) == "mini"
    assert resolve_pretrained("sbir-tiny", "random") is None
    assert resolve_pretrained("ViT-B-32", None) is None


def test_pretrained_tiny_classifies_unseen_renders_zero_shot(tiny_backbone):
    assert tiny_backbone.pretrained == "mini" and tp.weights_path().is_file()
    images, labels, names = tp._corpus(seed=12345, per_class=10, sketches_per_class=10)  # never trained on
    model = tiny_backbone.model
    with torch.no_grad():
        text = F.normalize(model.encode_text(tiny_backbone.tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])), dim=-1)
        pred = (F.normalize(model.encode_image(tp.normalise(images)), dim=-1) @ text.t()).argmax(1)
    correct = (pred == labels).float().view(len(names), 20)
    chance = 1 / len(names)
    assert correct[:, :10].mean() > 4 * chance   # photos
    assert correct[:, 10:].mean() > 2 * chance   # sketches: seen rarely in pretraining, as by web CLIP
    random = load_backbone("sbir-tiny", "random")
    assert not torch.equal(random.model.visual.conv1.weight, model.visual.conv1.weight)
