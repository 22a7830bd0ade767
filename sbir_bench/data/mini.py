"""The bundled mini benchmark: shipped as a small archive, unpacked on first use (no download).

It is built to *look like* SBIR so that every code path runs for real on a laptop: 20 object classes
drawn as filled, textured, coloured objects on varied backgrounds ("photos") and as thin, jittered
black strokes on white ("sketches"). Every sketch is drawn from one photo's instance parameters and
named ``<photo-id>-<n>.png`` exactly like Sketchy, so fine-grained pairing works too. The folder
layout (``sketch/<class>/``, ``photo/<class>/``) is the one the real loaders read.

Every machine must see the same bytes (the README's numbers and the tests' margins depend on them),
so the package ships the set this generator wrote (:data:`SHIPPED`, under 1 MB; its content digest
:data:`SHIPPED_SHA256` is checked on unpacking and written into every mini run's record). The
generator stays a command, ``python -m sbir_bench.data.mini OUT_DIR``, and a test checks that it
still writes the same files with the same pixels up to JPEG rounding.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import DataError
from ..locations import cache_root
from ..log import get_logger

Point = Tuple[float, float]
Shape = List[List[Point]]  # one or more closed polylines in [-1, 1]^2

VERSION = 1
SHIPPED = Path(__file__).parent / "shipped" / f"mini-v{VERSION}.tar.gz"
SHIPPED_SHA256 = "807c06687c420d96185a109b832bc94595a6b3450117b6f6f2d82490e3e7ac09"  # tree_digest of the unpacked set
SIZE = 64
PHOTOS_PER_CLASS = 16
SKETCHES_PER_PHOTO = 2


def _circle(n: int = 28, r: float = 0.8, cx: float = 0.0, cy: float = 0.0) -> List[Point]:
    return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n)]


def _star(points: int, outer: float = 0.9, inner: float = 0.4) -> List[Point]:
    out = []
    for i in range(points * 2):
        r = outer if i % 2 == 0 else inner
        a = math.pi * i / points - math.pi / 2
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart() -> List[Point]:
    pts = []
    for i in range(40):
        t = 2 * math.pi * i / 40
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 18, -y / 18))
    return pts


SHAPES: Dict[str, Callable[[], Shape]] = {
    "circle": lambda: [_circle()],
    "square": lambda: [[(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]],
    "triangle": lambda: [[(0, -0.85), (0.8, 0.7), (-0.8, 0.7)]],
    "star": lambda: [_star(5)],
    "heart": lambda: [_heart()],
    "cross": lambda: [[(-0.25, -0.85), (0.25, -0.85), (0.25, -0.25), (0.85, -0.25), (0.85, 0.25), (0.25, 0.25),
                       (0.25, 0.85), (-0.25, 0.85), (-0.25, 0.25), (-0.85, 0.25), (-0.85, -0.25), (-0.25, -0.25)]],
    "arrow": lambda: [[(-0.85, -0.2), (0.2, -0.2), (0.2, -0.6), (0.9, 0), (0.2, 0.6), (0.2, 0.2), (-0.85, 0.2)]],
    "moon": lambda: [[(0.8 * math.cos(a), 0.8 * math.sin(a)) for a in np.linspace(0.5 * math.pi, 1.5 * math.pi, 16)]
                     + [(0.3 + 0.55 * math.cos(a), 0.8 * math.sin(a)) for a in np.linspace(1.5 * math.pi, 0.5 * math.pi, 16)]],
    "house": lambda: [[(-0.6, 0.8), (-0.6, -0.1), (0, -0.8), (0.6, -0.1), (0.6, 0.8)], [(-0.15, 0.8), (-0.15, 0.3), (0.15, 0.3), (0.15, 0.8)]],
    "tree": lambda: [[(0, -0.9), (0.65, 0.2), (0.15, 0.2), (0.15, 0.85), (-0.15, 0.85), (-0.15, 0.2), (-0.65, 0.2)]],
    "fish": lambda: [[(0.5 * math.cos(a) - 0.15, 0.35 * math.sin(a)) for a in np.linspace(0.25 * math.pi, 1.75 * math.pi, 18)]
                     + [(0.85, -0.4), (0.85, 0.4)]],
    "cup": lambda: [[(-0.55, -0.6), (0.45, -0.6), (0.35, 0.7), (-0.45, 0.7)], _circle(12, 0.25, 0.6, 0.0)],
    "umbrella": lambda: [[(0.85 * math.cos(a), 0.85 * math.sin(a)) for a in np.linspace(math.pi, 2 * math.pi, 18)]
                         + [(0.06, 0.0), (0.06, 0.75), (-0.2, 0.75), (-0.2, 0.65), (-0.04, 0.65), (-0.04, 0.0)]],
    "key": lambda: [_circle(14, 0.3, -0.5, 0.0), [(-0.2, -0.08), (0.85, -0.08), (0.85, 0.3), (0.7, 0.3), (0.7, 0.08), (-0.2, 0.08)]],
    "bell": lambda: [[(-0.7, 0.55), (-0.45, -0.3), (-0.25, -0.7), (0.25, -0.7), (0.45, -0.3), (0.7, 0.55)], _circle(10, 0.15, 0, 0.72)],
    "flower": lambda: [_circle(12, 0.3, 0.5 * math.cos(a), 0.5 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6)[:-1]]
                      + [_circle(12, 0.25)],
    "lightning": lambda: [[(0.1, -0.9), (-0.5, 0.1), (-0.05, 0.1), (-0.2, 0.9), (0.5, -0.2), (0.05, -0.2), (0.3, -0.9)]],
    "diamond": lambda: [[(0, -0.9), (0.6, 0), (0, 0.9), (-0.6, 0)]],
    "ring": lambda: [_circle(28, 0.8), _circle(20, 0.45)],
    "kite": lambda: [[(0, -0.9), (0.55, -0.2), (0, 0.9), (-0.55, -0.2)], [(0, 0.9), (0.1, 0.95), (-0.05, 1.0)]],
}
MINI_CLASSES: Tuple[str, ...] = tuple(SHAPES)
MINI_UNSEEN: Tuple[str, ...] = ("star", "house", "cup", "flower", "kite")


def default_mini_root() -> Path:
    """Where the generated set lives: ``mini-v<VERSION>`` in the sbir-bench cache (:func:`cache_root`)."""
    return cache_root() / f"mini-v{VERSION}"


def _transform(shape: Shape, cx: float, cy: float, scale: float, angle: float) -> Shape:
    ca, sa = math.cos(angle), math.sin(angle)
    half = SIZE / 2
    return [[(half + (cx + scale * (x * ca - y * sa)) * half, half + (cy + scale * (x * sa + y * ca)) * half)
             for x, y in poly] for poly in shape]


def _photo(shape: Shape, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    """Filled, textured object on a gradient-and-noise background."""
    g = np.linspace(0, 1, SIZE)[:, None, None]
    c0, c1 = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    bg = c0 * (1 - g) + c1 * g + rng.normal(0, 12, (SIZE, SIZE, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8).repeat(1, axis=1))
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for poly in shape:
        draw.polygon(poly, fill=255)
    colour = np.clip(hue + rng.normal(0, 25, 3), 0, 255)
    texture = colour + rng.normal(0, 18, (SIZE, SIZE, 3)) + 30 * np.sin(np.arange(SIZE) / rng.uniform(2, 5))[None, :, None]
    obj = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))
    img.paste(obj, (0, 0), mask.filter(ImageFilter.GaussianBlur(0.6)))
    return img


def _sketch(shape: Shape, rng: np.random.Generator) -> Image.Image:
    """Thin black jittered strokes on white tracing the same instance's outline."""
    img = Image.new("L", (SIZE, SIZE), 255)
    draw = ImageDraw.Draw(img)
    for poly in shape:
        pts = [(x + rng.normal(0, 0.9), y + rng.normal(0, 0.9)) for x, y in poly]
        draw.line(pts + [pts[0]], fill=0, width=int(rng.integers(1, 3)))
    return img.convert("RGB")


def instance_params(rng: np.random.Generator) -> Tuple[float, float, float, float]:
    """Placement of one object instance: centre x, centre y, scale, rotation."""
    return rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), rng.uniform(0.55, 0.85), rng.uniform(-0.6, 0.6)


def render_photo(cname: str, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    """A photo-like image of a new instance of ``cname`` (used by the mini set and tiny pretraining)."""
    return _photo(_transform(SHAPES[cname](), *instance_params(rng)), rng, hue)


def render_sketch(cname: str, rng: np.random.Generator) -> Image.Image:
    """A sketch-like drawing of a new instance of ``cname`` (used by tiny pretraining)."""
    return _sketch(_transform(SHAPES[cname](), *instance_params(rng)), rng)


@contextlib.contextmanager
def _atomic_folder(root: Path) -> Iterator[Path]:
    """A temp folder beside ``root`` that replaces ``root`` when the block succeeds (else is removed)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mini-", dir=root.parent))
    try:
        yield tmp
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def generate_mini(root: Path, seed: int = 0) -> Path:
    """Write the mini set under ``root`` (atomically: a temp dir renamed into place)."""
    with _atomic_folder(root) as tmp:
        for ci, cname in enumerate(MINI_CLASSES):
            crng = np.random.default_rng([seed, ci])
            hue = crng.uniform(30, 230, 3)
            (tmp / "photo" / cname).mkdir(parents=True)
            (tmp / "sketch" / cname).mkdir(parents=True)
            for k in range(PHOTOS_PER_CLASS):
                rng = np.random.default_rng([seed, ci, k])
                params = instance_params(rng)
                shape = _transform(SHAPES[cname](), *params)
                pid = f"{cname}_{k:03d}"
                _photo(shape, rng, hue).save(tmp / "photo" / cname / f"{pid}.jpg", quality=92)
                for n in range(1, SKETCHES_PER_PHOTO + 1):
                    jitter = (params[0] + rng.normal(0, 0.03), params[1] + rng.normal(0, 0.03), params[2] * rng.uniform(0.95, 1.05), params[3] + rng.normal(0, 0.05))
                    _sketch(_transform(SHAPES[cname](), *jitter), rng).save(tmp / "sketch" / cname / f"{pid}-{n}.png")
        (tmp / "VERSION").write_text(f"{VERSION} seed={seed}\n")
    return Path(root)


def ensure_mini(root: Path | None = None) -> Path:
    """Return the mini set's root, unpacking the shipped archive first if it is absent or incomplete."""
    root = Path(root) if root else default_mini_root()
    if not (root / "VERSION").is_file():
        get_logger(__name__).info(f"unpacking the mini dataset into {root} ...")
        unpack_shipped(root)
    return root


def unpack_shipped(root: Path, archive: Optional[Path] = None, digest: Optional[str] = None,
                   what: str = "mini set") -> Path:
    """Unpack a shipped archive (default :data:`SHIPPED`) into ``root`` atomically and check its content
    digest (default :data:`SHIPPED_SHA256`); the mini DomainNet world is unpacked the same way."""
    archive, digest = archive or SHIPPED, digest or SHIPPED_SHA256
    with _atomic_folder(root) as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.10.12 lacks filters
            tar.extractall(tmp, **safe)
        if tree_digest(tmp) != digest:
            raise DataError(f"the shipped {what} {archive} is damaged (content digest differs); reinstall sbir-bench")
    return Path(root)


def pack(root: Path) -> bytes:
    """A reproducible ``.tar.gz`` of the set at ``root``: sorted names, no owners, times or gzip name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                info = tarfile.TarInfo(str(p.relative_to(root)))
                data = p.read_bytes()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def tree_digest(root: Path) -> str:
    """SHA-256 over every file's relative path and bytes (used to test determinism)."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m sbir_bench.data.mini OUT_DIR   (regenerates the mini set; see the module docstring)")
    print(generate_mini(Path(sys.argv[1])))
