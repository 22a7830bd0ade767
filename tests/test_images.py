"""Image loading (data/images.py): transparency on white, decompression bombs refused, and the
automatic loader worker count."""

from __future__ import annotations

import os
from unittest.mock import patch

import numpy as np
import pytest
from PIL import Image, ImageDraw


def _strokes(size: int = 64):
    return [(8, 8, 56, 56), (8, 56, 56, 8), (32, 4, 32, 60)]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_sketch_equals_the_same_strokes_on_white(tmp_path, mode):
    from sbir_bench.data.images import load_rgb
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(white)
    for line in _strokes():
        draw.line(line, fill=(0, 0, 0), width=3)
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clear)
    for line in _strokes():
        draw.line(line, fill=(0, 0, 0, 255), width=3)
    if mode == "LA":
        clear = clear.convert("LA")
    elif mode == "P":
        clear = clear.convert("P", palette=Image.ADAPTIVE, colors=2)
        clear.info["transparency"] = clear.getpixel((0, 0))
    path = tmp_path / f"sketch_{mode}.png"
    clear.save(path)
    loaded = np.asarray(load_rgb(str(path)), dtype=np.int32)
    assert loaded.mean() > 200  # white paper, not the black of a dropped alpha channel
    assert np.abs(loaded - np.asarray(white, dtype=np.int32)).max() == 0


def test_a_decompression_bomb_is_an_unreadable_image(tmp_path):
    from PIL import Image

    from sbir_bench.data.images import load_rgb
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    assert load_rgb(str(path)) is None


def test_automatic_workers():
    from sbir_bench.data.images import resolve_workers
    assert resolve_workers(3, 10_000, 64) == 3
    assert resolve_workers(None, 100, 64) == 0  # two batches or fewer: no worker processes
    with_cores = lambda n: patch("sbir_bench.data.images.available_cores", return_value=n)  # noqa: E731
    with with_cores(2):
        assert resolve_workers(None, 10_000, 64) == 0   # no spare core: decode in the main process
    with with_cores(3):
        assert resolve_workers(None, 10_000, 64) == 0   # below four cores: still the main process
    with with_cores(4):
        assert resolve_workers(None, 10_000, 64) == 3   # one core stays with the model
    with with_cores(16):
        assert resolve_workers(None, 10_000, 64) == 8   # capped
    with with_cores(16), patch.dict(os.environ, {"LOCAL_WORLD_SIZE": "4"}):
        assert resolve_workers(None, 10_000, 64) == 3   # four ranks share the cores
