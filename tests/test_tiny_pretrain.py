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

    def predict(template: str) -> torch.Tensor:
        with torch.no_grad():
            text = F.normalize(model.encode_text(tiny_backbone.tokenizer([template.format(n) for n in names])), dim=-1)
            return (F.normalize(model.encode_image(tp.normalise(images)), dim=-1) @ text.t()).argmax(1)
    as_photo = (predict("a photo of a {}.") == labels).float().view(len(names), 20)
    as_sketch = (predict("a sketch of a {}.") == labels).float().view(len(names), 20)
    chance = 1 / len(names)
    assert as_photo[:, :10].mean() > 4 * chance   # photos, by photo captions
    assert as_sketch[:, 10:].mean() > 4 * chance  # sketches, by sketch captions


def test_sketch_vectors_sit_near_not_on_their_photo_vectors():
    photo, free = torch.randn(20, 64), torch.randn(20, 64)
    vectors = tp.class_vectors(photo, free)
    cos = (vectors[0] * vectors[1]).sum(-1)
    assert vectors.shape == (2, 20, 64) and ((cos > 0) & (cos < 0.9)).all()


def test_random_init_is_not_the_pretrained_weights(tiny_backbone):
    random = load_backbone("sbir-tiny", "random")
    assert not torch.equal(random.model.visual.conv1.weight, tiny_backbone.model.visual.conv1.weight)
