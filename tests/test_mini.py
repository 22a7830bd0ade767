"""The mini set: shipped bytes (the same on every machine), a generator that still writes it, SBIR-like,
laid out like the real datasets."""

from __future__ import annotations

import numpy as np
from PIL import Image

import pytest

from sbir_bench.data import mini
from sbir_bench.data.mini import MINI_CLASSES, generate_mini, tree_digest
from sbir_bench.errors import DataError


def test_the_set_every_machine_gets_is_the_shipped_bytes(mini_root):
    assert tree_digest(mini_root) == mini.SHIPPED_SHA256
    assert len(list(mini_root.rglob("*.png"))) == 20 * 16 * 2 and len(list(mini_root.rglob("*.jpg"))) == 20 * 16


def test_generator_still_writes_the_shipped_set_up_to_codec_rounding(mini_root, tmp_path):
    fresh = generate_mini(tmp_path / "fresh")
    names = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert names(fresh) == names(mini_root)
    for rel in names(mini_root)[::7]:
        if rel == "VERSION":
            continue
        a = np.asarray(Image.open(mini_root / rel).convert("RGB"), dtype=float)
        b = np.asarray(Image.open(fresh / rel).convert("RGB"), dtype=float)
        assert np.abs(a - b).mean() < 1.0, rel


def test_a_damaged_shipped_archive_is_refused(tmp_path, monkeypatch):
    broken = tmp_path / "mini.tar.gz"
    broken.write_bytes(mini.pack(generate_mini(tmp_path / "other", seed=3)))
    monkeypatch.setattr(mini, "SHIPPED", broken)
    with pytest.raises(DataError, match="damaged"):
        mini.unpack_shipped(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
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
