"""The sbir-tiny backbone: shipped weights (the same bytes on every machine, their SHA-256 in every
record), CLIP-like (zero-shot above chance), and a generator that still builds one of the same quality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbir_bench.errors import WeightsError
from sbir_bench.fileio import file_sha256
from sbir_bench.models import load_backbone
from sbir_bench.models import tiny_pretrain as tp
from sbir_bench.models.factory import resolve_pretrained

# Zero-shot accuracy on renders never trained on (seed 12345): photos by photo captions, sketches by
# sketch captions. The shipped weights score PHOTO / SKETCH; a rebuilt backbone must land within BAND.
PHOTO, SKETCH, BAND = 0.415, 0.455, 0.12


def zero_shot_accuracy(model, tokenizer) -> tuple[float, float]:
    images, labels, names = tp._corpus(seed=12345, per_class=10, sketches_per_class=10)

    def predict(template: str) -> torch.Tensor:
        with torch.no_grad():
            text = F.normalize(model.encode_text(tokenizer([template.format(n) for n in names])), dim=-1)
            return (F.normalize(model.encode_image(tp.normalise(images)), dim=-1) @ text.t()).argmax(1)
    as_photo = (predict("a photo of a {}.") == labels).float().view(len(names), 20)
    as_sketch = (predict("a sketch of a {}.") == labels).float().view(len(names), 20)
    return float(as_photo[:, :10].mean()), float(as_sketch[:, 10:].mean())


def test_tiny_defaults_to_mini_weights_and_random_is_available():
    assert resolve_pretrained("sbir-tiny", None) == "mini"
    assert resolve_pretrained("sbir-tiny", "random") is None
    assert resolve_pretrained("ViT-B-32", None) is None


def test_the_weights_every_machine_loads_are_the_shipped_bytes(tiny_backbone):
    assert tiny_backbone.weights_file == str(tp.SHIPPED) and file_sha256(tp.SHIPPED) == tp.SHIPPED_SHA256
    assert tp.SHIPPED.stat().st_size < 8 * 2**20  # fp16: a few MB, not the fp32 build
    assert next(tiny_backbone.model.parameters()).dtype == torch.float32  # loaded into fp32


def test_shipped_tiny_classifies_unseen_renders_zero_shot(tiny_backbone):
    photo, sketch = zero_shot_accuracy(tiny_backbone.model, tiny_backbone.tokenizer)
    assert abs(photo - PHOTO) <= 0.011 and abs(sketch - SKETCH) <= 0.011  # two of 200 predictions: CPU rounding
    chance = 1 / 20
    assert photo > 4 * chance and sketch > 4 * chance


def test_damaged_shipped_weights_are_refused(tmp_path, monkeypatch):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(tp.SHIPPED.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr(tp, "SHIPPED", bad)
    monkeypatch.setattr(tp, "_verified", False)
    with pytest.raises(WeightsError, match="damaged"):
        tp.ensure_weights()


@pytest.mark.slow
def test_generator_still_builds_a_backbone_of_the_same_quality(tmp_path):
    path = tmp_path / "rebuilt.safetensors"
    tp.build(str(path))
    rebuilt = load_backbone("sbir-tiny", str(path))
    photo, sketch = zero_shot_accuracy(rebuilt.model, rebuilt.tokenizer)
    assert abs(photo - PHOTO) <= BAND and abs(sketch - SKETCH) <= BAND, (photo, sketch)


def test_sketch_vectors_sit_near_not_on_their_photo_vectors():
    photo, free = torch.randn(20, 64), torch.randn(20, 64)
    vectors = tp.class_vectors(photo, free)
    cos = (vectors[0] * vectors[1]).sum(-1)
    assert vectors.shape == (2, 20, 64) and ((cos > 0) & (cos < 0.9)).all()


def test_random_init_is_not_the_pretrained_weights(tiny_backbone):
    random = load_backbone("sbir-tiny", "random")
    assert not torch.equal(random.model.visual.conv1.weight, tiny_backbone.model.visual.conv1.weight)
