"""Class names (data/classnames.py): the one rule that turns folder names into CLIP's words and
matching keys, as the reference code does, and every text path using it."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("name,text,key", [
    ("car_(sedan)", "car (sedan)", "car (sedan)"), ("computer-mouse", "computer-mouse", "computer mouse"),
    ("hot-air_balloon", "hot-air balloon", "hot air balloon"), ("jack-o-lantern", "jack-o-lantern", "jack o lantern"),
    ("t-shirt", "t-shirt", "t shirt"), ("wine bottle", "wine bottle", "wine bottle"), ("  Teddy_bear ", "Teddy bear",
                                                                                         "teddy bear")])
def test_class_text_rule_is_the_reference_codes(name, text, key):
    """CoOp's and MaPLe's official code: ``classname.replace("_", " ")``, hyphens kept; matching keys
    ignore case, ``_`` and ``-``."""
    from sbir_bench.data.classnames import class_key, class_text
    assert class_text(name) == text and class_key(name) == key
    assert class_text(name) == " ".join(name.replace("_", " ").split())  # the reference rule, written again


@pytest.mark.parametrize("dataset", ["sketchy", "tuberlin", "quickdraw"])
def test_every_shipped_class_reads_as_words_and_keys_are_unique(dataset):
    from conftest import official_classes

    from sbir_bench.data.classnames import class_key, class_text
    names = official_classes(dataset)
    texts = [class_text(n) for n in names]
    assert not any("_" in t or "  " in t for t in texts)
    assert len({class_key(n) for n in names}) == len(names)


def test_every_text_path_uses_the_one_class_text(tiny_backbone):
    from sbir_bench.baselines.coop import CoOp

    from sbir_bench.data.classnames import class_text
    names = ["car_(sedan)", "computer-mouse", "hot-air_balloon", "jack-o-lantern"]
    coop = CoOp(tiny_backbone, names, [0, 1, 2])
    assert coop.prompts.texts(names) == [f"a photo of a {class_text(n)}." for n in names]
    frozen = coop.frozen_class_text(names)
    expected = torch.nn.functional.normalize(tiny_backbone.model.encode_text(
        tiny_backbone.tokenizer([f"a photo of a {class_text(n)}." for n in names])).float(), dim=-1)
    assert torch.allclose(frozen, expected, atol=1e-6)
