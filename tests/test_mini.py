"""The generated mini set: deterministic, SBIR-like, laid out like the real datasets."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sbir_bench.data.mini import MINI_CLASSES, generate_mini, tree_digest


def test_generation_is_deterministic(tmp_path):
    a = generate_mini(tmp_path / "a")
    b = generate_mini(tmp_path / "b")
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(generate_mini(tmp_path / "c", seed=1)) != tree_digest(a)


def test_layout_and_modalities_look_like_sbir(mini_root):
    assert len(MINI_CLASSES) >= 20
    for cname in MINI_CLASSES:
        photos = sorted((mini_root / "photo" / cname).glob("*.jpg"))
        sketches = sorted((mini_root / "sketch" / cname).glob("*.png"))
        assert photos and sketches
        assert all(s.stem.rsplit("-", 1)[0] in {p.stem for p in photos} for s in sketches)
    photo = np.asarray(Image.open(next((mini_root / "photo" / "star").glob("*.jpg"))).convert("RGB"), dtype=float)
    sketch = np.asarray(Image.open(next((mini_root / "sketch" / "star").glob("*.png"))).convert("L"), dtype=float)
    assert photo.std(axis=(0, 1)).mean() > 15            # coloured, textured
    assert (sketch > 200).mean() > 0.8                    # mostly white paper
    assert (sketch < 60).mean() > 0.02                    # with dark strokes
