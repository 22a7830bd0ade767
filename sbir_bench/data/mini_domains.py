"""The mini DomainNet world: the mini set's 20 classes drawn in DomainNet's six domains, shipped.

It is laid out as DomainNet's download unpacks (``<domain>/<class>/``) with DomainNet's domain names, so
every path of the universal cross-domain protocol (data/domains.py) runs for real on a laptop: a held-out
domain, auxiliary training domains, the 92 % / 8 % draw over real photos, U^d-CDR's shares and the
245/55/45-style class lists (here 12 seen in a non-alphabetical order, 3 validation, 5 unseen).

* ``real``: the mini set's textured photos; ``painting``: the same, blurred and tinted;
* ``sketch``: thin jittered strokes; ``quickdraw``: thick strokes over every other vertex;
* ``clipart``: flat colour with a black outline on white; ``infograph``: a small object beside bars.

Like the mini set, the archive this generator wrote ships (:data:`SHIPPED`, its content digest
:data:`SHIPPED_SHA256` checked on unpacking), so every machine reads the same bytes;
``python -m sbir_bench.data.mini_domains OUT_DIR`` regenerates it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..locations import cache_root
from ..log import get_logger
from .mini import MINI_CLASSES, MINI_UNSEEN, SHAPES, SIZE, _atomic_folder, _photo, _sketch, _transform, \
    instance_params, unpack_shipped

VERSION = 1
SHIPPED = Path(__file__).parent / "shipped" / f"mini-domainnet-v{VERSION}.tar.gz"
SHIPPED_SHA256 = "acac95d177f6c4d7c6741d1954c00d8bb1f8a7cc3c99ece7e1120524808473c8"  # tree_digest of the unpacked world
VAL: Tuple[str, ...] = ("bell", "ring", "lightning")
# the seen classes in a fixed, non-alphabetical order (the official draws seed each class by its position)
TRAIN: Tuple[str, ...] = tuple(sorted((c for c in MINI_CLASSES if c not in MINI_UNSEEN + VAL),
                                      key=lambda c: (len(c), c[::-1])))
PER_CLASS: Dict[str, int] = {"real": 12, "quickdraw": 10, "clipart": 8, "infograph": 8, "painting": 8, "sketch": 8}
UDCDR_CLASSES = 12  # U^d-CDR's "first 45 seen classes", scaled


def _clipart(shape, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 20, 3), 0, 255))
    for poly in shape:
        draw.polygon(poly, fill=colour, outline=(0, 0, 0), width=2)
    return img


def _painting(shape, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    base = np.asarray(_photo(shape, rng, hue), dtype=np.float64)
    tint = rng.uniform(0.7, 1.2, 3)
    return Image.fromarray(np.clip(base * tint, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))


def _quickdraw(shape, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    img = Image.new("L", (SIZE, SIZE), 255)
    draw = ImageDraw.Draw(img)
    for poly in shape:
        pts = [(x + rng.normal(0, 1.5), y + rng.normal(0, 1.5)) for x, y in poly[::2]]
        draw.line(pts + [pts[0]], fill=0, width=3)
    return img.convert("RGB")


def _infograph(shape, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.uniform(200, 250, 3)))
    draw = ImageDraw.Draw(img)
    small = [[(x * 0.55 + 2, y * 0.55 + 2) for x, y in poly] for poly in shape]
    colour = tuple(int(v) for v in np.clip(hue + rng.normal(0, 20, 3), 0, 255))
    for poly in small:
        draw.polygon(poly, fill=colour)
    for k in range(int(rng.integers(2, 5))):
        y = 40 + 6 * k
        draw.rectangle((4, y, 4 + int(rng.integers(20, 56)), y + 3), fill=tuple(int(v) for v in rng.uniform(0, 150, 3)))
    return img


RENDER: Dict[str, Callable] = {"real": _photo, "painting": _painting, "clipart": _clipart, "infograph": _infograph,
                               "quickdraw": _quickdraw, "sketch": lambda shape, rng, hue: _sketch(shape, rng)}


def default_root() -> Path:
    """Where the world is unpacked: ``mini-domainnet-v<VERSION>`` in the sbir-bench cache."""
    return cache_root() / f"mini-domainnet-v{VERSION}"


def generate(root: Path, seed: int = 0) -> Path:
    """Write the world under ``root`` (atomically): ``<domain>/<class>/<domain>_<class>_<k>.<ext>``."""
    with _atomic_folder(root) as tmp:
        for ci, cname in enumerate(MINI_CLASSES):
            hue = np.random.default_rng([seed, ci]).uniform(30, 230, 3)
            for di, (domain, n) in enumerate(sorted(PER_CLASS.items())):
                folder = tmp / domain / cname
                folder.mkdir(parents=True)
                ext = "png" if domain in ("sketch", "quickdraw", "clipart") else "jpg"
                for k in range(n):
                    rng = np.random.default_rng([seed, ci, di, k])
                    image = RENDER[domain](_transform(SHAPES[cname](), *instance_params(rng)), rng, hue)
                    image.save(folder / f"{domain}_{cname}_{k:03d}.{ext}", **({"quality": 92} if ext == "jpg" else {}))
        (tmp / "VERSION").write_text(f"{VERSION} seed={seed}\n")
    return Path(root)


def ensure(root: Path | None = None) -> Path:
    """The world's root, unpacked from the shipped archive first if absent; the folder that holds the
    domain folders."""
    root = Path(root) if root else default_root()
    if not (root / "VERSION").is_file():
        get_logger(__name__).info(f"unpacking the mini DomainNet world into {root} ...")
        unpack_shipped(root, SHIPPED, SHIPPED_SHA256, "mini DomainNet world")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m sbir_bench.data.mini_domains OUT_DIR   (regenerates the mini DomainNet world)")
    print(generate(Path(sys.argv[1])))
