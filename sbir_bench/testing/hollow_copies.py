"""Hollow copies of the real benchmarks: every file a hard link to one tiny valid image.

The zero-shot test sets of SAKE's and ZSE-SBIR's file lists (``file_lists/`` beside this module: the
Sketchy and TU-Berlin lists verbatim, xz-compressed; QuickDraw's as per-class counts, its file names
being ids no loader reads) are laid out in each folder layout that researchers' copies use
(docs/datasets.md), so loaders, splits and task building meet the real names and counts without the
data. Used by ``tests/test_dataset_copies.py``, ``tests/test_published_lists.py`` and
``benchmarks/dataset_check.py``.
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

LISTS = Path(__file__).parent / "file_lists"
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


# The lists' own folder names (SAKE's / ZSE-SBIR's naming, relative to Sketchy/, TUBerlin/ or QuickDraw/).
SK_READY, EXT_READY, PH_READY = "256x256/sketch/tx_000000000000_ready/", "EXTEND_image_sketchy_ready/", \
    "256x256/photo/tx_000000000000_ready/"
LIST_FOLDERS = {"sketchy": (SK_READY, EXT_READY), "tuberlin": ("png_ready/", "ImageResized_ready/"),
                "quickdraw": ("sketches/", "images/")}
# Copies whose download script renames files as well as folders (SEM-PCYC's download_datasets.sh).
RENAMES = {("tuberlin", "sem-pcyc"): lambda cls, name: (cls.replace(" ", "_"),
                                                         name if name.endswith(".png") else name.rsplit(".", 1)[0] + ".jpg")}
# A placement maps a list path to a path relative to the data root, or None when that copy lacks the file.
Placement = Callable[[str], Optional[str]]


def layouts(dataset: str) -> List[str]:
    """The names of the catalog's layouts of ``dataset``: every public copy the tests lay out."""
    from sbir_bench.data.catalog import get_spec
    return [x.name for x in get_spec(dataset).layouts]


def placement(dataset: str, layout: str) -> Placement:
    """Where the copy the catalog calls ``layout`` keeps each listed file: its sketch and photo folders,
    and, for Sketchy, the paired-photo folder of the fine-grained layout of the same name (if any)."""
    from sbir_bench.data.catalog import get_spec
    entry = get_spec(dataset).layout(layout)
    folders = dict(zip(LIST_FOLDERS[dataset], (entry.sketch_dir, entry.photo_dir)))
    if dataset == "sketchy":
        twin = [x for x in get_spec("sketchy-fg").layouts if x.name == layout]
        folders[PH_READY] = twin[0].photo_dir if twin else None
    rename = RENAMES.get((dataset, layout), lambda cls, name: (cls, name))

    def place(path: str) -> Optional[str]:
        for old, new in folders.items():
            if path.startswith(old):
                if new is None:
                    return None
                cls, name = rename(*path[len(old):].split("/"))
                return os.path.normpath(f"{entry.folder}/{new}/{cls}/{name}")
        raise ValueError(f"no rule for {path}")
    return place


def has_paired_photos(dataset: str, layout: str) -> bool:
    """True when the copy also holds Sketchy's paired-photo folder (the lists' second listing)."""
    return placement(dataset, layout)(PH_READY + "c/n0_1.jpg") is not None if dataset == "sketchy" else False


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
    place = placement(dataset, layout)
    sources = root / ".sources"
    sources.mkdir(parents=True, exist_ok=True)
    linker = _Linker(sources)
    for path in sketches + photos + (extra if extra is not None else seen_class_files(dataset, unseen)):
        target = place(path)
        if target is not None:
            linker.link(root / target)
    return HollowCopy(root, sketches, photos)
