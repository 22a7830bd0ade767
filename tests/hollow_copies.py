"""Hollow copies of the real benchmarks: every file a hard link to one tiny valid image.

The zero-shot test sets of SAKE's and ZSE-SBIR's file lists (``tests/fixtures/file_lists``: the
Sketchy and TU-Berlin lists verbatim, xz-compressed; QuickDraw's as per-class counts, its file names
being ids no loader reads) are laid out in each folder layout that researchers' copies use
(docs/datasets.md), so loaders, splits and task building meet the real names and counts without the
data. Used by ``tests/test_dataset_copies.py`` and ``benchmarks/dataset_check.py``.
"""

from __future__ import annotations

import csv
import lzma
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from PIL import Image

LISTS = Path(__file__).parent / "fixtures" / "file_lists"
LINKS_PER_FILE = 60_000  # ext4 allows 65,000 hard links per inode

# published zero-shot test sets (queries x gallery as listed, duplicates included)
PUBLISHED = {"sketchy-split1": (15_229, 17_101), "sketchy-split2": (12_694, 12_553),
             "tuberlin": (2_400, 27_989), "quickdraw": (92_291, 54_151)}


def read_list(name: str) -> List[str]:
    """Relative paths of one xz-compressed list (labels dropped), in list order."""
    with lzma.open(LISTS / f"{name}.txt.xz", "rt") as f:
        return [line.rsplit(" ", 1)[0] for line in f if line.strip()]


def quickdraw_counts() -> Dict[str, Tuple[int, int]]:
    with open(LISTS / "quickdraw_zero_counts.csv") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {r["class"]: (int(r["sketches"]), int(r["photos"])) for r in rows}


def zero_lists(dataset: str) -> Tuple[List[str], List[str]]:
    """(sketch paths, photo paths) of a published zero-shot list, relative to the dataset folder."""
    if dataset == "quickdraw":
        counts = quickdraw_counts()
        sketches = [f"sketches/{c}/{i:016d}.png" for c, (n, _) in counts.items() for i in range(n)]
        photos = [f"images/{c}/image_{i:05d}.jpg" for c, (_, n) in counts.items() for i in range(n)]
        return sketches, photos
    return read_list(f"{dataset}_sketch_zero"), read_list(f"{dataset}_photo_zero")


def subsample(paths: List[str], every: int) -> List[str]:
    """About one in ``every`` files, chosen by name: a photo listed twice stays twice, and a Sketchy
    sketch (``<photo-id>-<n>.png``) stays with its photo."""
    if every <= 1:
        return paths
    return [p for p in paths if _name_hash(_instance(p.rsplit("/", 1)[-1])) % every == 0]


def _instance(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem.rsplit("-", 1)[0] if re.fullmatch(r"n\d+_\d+-\d+", stem) else stem


def _name_hash(name: str) -> int:
    return sum((i + 1) * ord(ch) for i, ch in enumerate(name))


# A layout maps a list path (SAKE/ZSE-SBIR's naming, relative to Sketchy/, TUBerlin/ or QuickDraw/) to
# a path relative to the data root, or None when that copy does not hold the file.
Layout = Callable[[str], Optional[str]]


def _swap(prefixes: Dict[str, str]) -> Layout:
    def place(path: str) -> Optional[str]:
        for old, new in prefixes.items():
            if path.startswith(old):
                return None if new is None else new + path[len(old):]
        raise ValueError(f"no rule for {path}")
    return place


SK_READY, EXT_READY, PH_READY = "256x256/sketch/tx_000000000000_ready/", "EXTEND_image_sketchy_ready/", \
    "256x256/photo/tx_000000000000_ready/"
LAYOUTS: Dict[str, Dict[str, Layout]] = {
    "sketchy": {
        "sake": _swap({SK_READY: "Sketchy/" + SK_READY, EXT_READY: "Sketchy/" + EXT_READY, PH_READY: "Sketchy/" + PH_READY}),
        "sem-pcyc": _swap({SK_READY: "Sketchy/sketch/tx_000000000000/", EXT_READY: "Sketchy/extended_photo/",
                           PH_READY: "Sketchy/photo/tx_000000000000/"}),
        "doodle2search-loader": _swap({SK_READY: "Sketchy/sketch/tx_000000000000/", EXT_READY: "EXTEND_image_sketchy/",
                                       PH_READY: None}),
        "clip-at": _swap({SK_READY: "Sketchy/sketch/", EXT_READY: "Sketchy/photo/", PH_READY: None}),
    },
    "tuberlin": {
        "sake": _swap({"png_ready/": "TUBerlin/png_ready/", "ImageResized_ready/": "TUBerlin/ImageResized_ready/"}),
        "sem-pcyc": lambda p: _sem_pcyc_tuberlin(p),
    },
    "quickdraw": {
        "zse-sbir": _swap({"sketches/": "QuickDraw/sketches/", "images/": "QuickDraw/images/"}),
        "doodle2search": _swap({"sketches/": "QuickDraw/QuickDraw_sketches_final/",
                                "images/": "QuickDraw/QuickDraw_images_final/"}),
    },
}


def _sem_pcyc_tuberlin(path: str) -> str:
    """SEM-PCYC's download script: TU-Berlin/sketches and images, class names with underscores, .jpg photos."""
    folder, cls, name = path.split("/")
    cls = cls.replace(" ", "_")
    if folder == "png_ready":
        return f"TU-Berlin/sketches/{cls}/{name}"
    return f"TU-Berlin/images/{cls}/{name.rsplit('.', 1)[0]}.jpg"


@dataclass
class HollowCopy:
    root: Path
    sketches: List[str]  # list paths placed (relative to the dataset folder, list naming)
    photos: List[str]

    @property
    def unique_photos(self) -> int:
        """The photos of the lists without their second listing: for Sketchy, the extended folder's
        (the originals listed again from ``256x256/photo/`` left out), elsewhere every listed photo."""
        return len({p for p in self.photos if not p.startswith(PH_READY)})


class _Linker:
    """Hard links to a few tiny valid images, a fresh source every LINKS_PER_FILE links."""

    def __init__(self, where: Path) -> None:
        self.where, self.count, self.sources = where, 0, {}

    def source(self, suffix: str) -> Path:
        key = (suffix, self.count // LINKS_PER_FILE)
        if key not in self.sources:
            path = self.where / f"source_{key[1]}{suffix}"
            Image.new("RGB", (8, 8), (255, 255, 255)).save(path, format="PNG" if suffix == ".png" else "JPEG")
            self.sources[key] = path
        return self.sources[key]

    def link(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(self.source(target.suffix.lower()), target)
            self.count += 1


def seen_class_files(dataset: str, unseen: set) -> List[str]:
    """One sketch and one photo (paired, for Sketchy) of every official class the zero list lacks, in
    list naming: the training side a split needs, not part of the published test set."""
    from sbir_bench.data.catalog import get_spec
    from sbir_bench.data.classnames import class_key
    from sbir_bench.data.splits import package_file, read_class_file
    names = read_class_file(package_file("classes", get_spec(dataset).class_list))
    out = []
    for i, c in enumerate(n for n in names if class_key(n) not in unseen):
        photo_id = f"n9{i:07d}_1"
        out += {"sketchy": [f"{SK_READY}{c}/{photo_id}-1.png", f"{EXT_READY}{c}/{photo_id}.jpg",
                            f"{PH_READY}{c}/{photo_id}.jpg"],
                "tuberlin": [f"png_ready/{c}/{i}.png", f"ImageResized_ready/{c}/{photo_id}.JPEG"],
                "quickdraw": [f"sketches/{c}/{i}.png", f"images/{c}/image_{i}.jpg"]}[dataset]
    return out


def quickdraw_ext_training_side(per_class_sketches: int = 3_000, total_photos: int = 204_000) -> List[str]:
    """The seen classes of a whole QuickDraw-Ext copy (Doodle2Search: 3,000 sketches per class, 204,000
    photos in all), in list naming: with the zero list, a 534k-file copy."""
    from sbir_bench.data.classnames import class_key
    from sbir_bench.data.splits import package_file, read_class_file
    counts = quickdraw_counts()
    unseen = {class_key(c) for c in counts}
    seen = [c for c in read_class_file(package_file("classes", "quickdraw.txt")) if class_key(c) not in unseen]
    per_class_photos = (total_photos - sum(p for _, p in counts.values())) // len(seen)
    return [path for c in seen for path in
            [f"sketches/{c}/{i:016d}.png" for i in range(per_class_sketches)]
            + [f"images/{c}/image_{i:05d}.jpg" for i in range(per_class_photos)]]


def build(root: Path, dataset: str, layout: str, split: str = "1", every: int = 1,
          extra: Optional[List[str]] = None) -> HollowCopy:
    """Lay out a published zero-shot list (every ``every``-th name per class) under ``root``, with one
    sketch and photo of each seen class (or the list paths ``extra`` instead)."""
    from sbir_bench.data.classnames import class_key
    name = f"sketchy-split{split}" if dataset == "sketchy" else dataset
    sketches, photos = (subsample(p, every) for p in zero_lists(name))
    unseen = {class_key(p.split("/")[-2]) for p in sketches}
    place = LAYOUTS[dataset][layout]
    sources = root / ".sources"
    sources.mkdir(parents=True, exist_ok=True)
    linker = _Linker(sources)
    for path in sketches + photos + (extra if extra is not None else seen_class_files(dataset, unseen)):
        target = place(path)
        if target is not None:
            linker.link(root / target)
    return HollowCopy(root, sketches, photos)
