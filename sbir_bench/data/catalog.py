"""Dataset specs (where each benchmark is looked for, in which layouts) and folder discovery.

Researchers bring their own copies laid out as the public SBIR code expects: one folder per class
for each modality. Each :class:`DatasetSpec` lists the layouts we accept (relative to the data root)
and the counts the literature reports, so ``sbir-bench datasets check`` can say what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass(frozen=True)
class Sample:
    """One image: its path, class index and instance key (the photo id it depicts, for FG)."""

    path: str
    label: int
    instance: str = ""


@dataclass(frozen=True)
class Layout:
    """Sketch and photo folders (class sub-folders inside) relative to the dataset directory."""

    sketch_dir: str
    photo_dir: str


@dataclass
class DatasetSpec:
    """Everything sbir-bench knows about one benchmark."""

    name: str
    title: str
    subdirs: Tuple[str, ...]  # dataset folder names tried under --data-root ("" = the root itself)
    layouts: Tuple[Layout, ...]
    splits: Dict[str, str]  # split id -> package split file name
    expected: Dict[str, int] = field(default_factory=dict)  # classes / sketches / photos
    class_list: Optional[str] = None  # package file with the official class names
    fine_grained: bool = False
    source: str = ""
    licence: str = ""


def _layouts(sketch: Sequence[str], photo: Sequence[str]) -> Tuple[Layout, ...]:
    return tuple(Layout(s, p) for s in sketch for p in photo)


DATASETS: Dict[str, DatasetSpec] = {}


def _add(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


_SKETCHY_SK = ("256x256/sketch/tx_000000000000", "sketch/tx_000000000000", "sketch")
_add(DatasetSpec(
    name="sketchy", title="Sketchy Extended", subdirs=("Sketchy", "sketchy", ""),
    layouts=_layouts(_SKETCHY_SK, ("EXTEND_image_sketchy", "256x256/EXTEND_image_sketchy", "extended_photo", "photo")),
    splits={"1": "sketchy_split1.txt", "2": "sketchy_split2.txt"},
    expected={"classes": 125, "sketches": 75471, "photos": 73002}, class_list="sketchy.txt",
    source="Sangkloy et al. 2016 (sketchy.eye.gatech.edu) + extended photos of Liu et al. 2017",
    licence="CC BY 4.0 (sketches); photos from ImageNet, research use"))
_add(DatasetSpec(
    name="sketchy-fg", title="Sketchy (fine-grained pairs)", subdirs=("Sketchy", "sketchy", ""),
    layouts=_layouts(_SKETCHY_SK, ("256x256/photo/tx_000000000000", "photo/tx_000000000000", "photo")),
    splits={"1": "sketchy_split1.txt", "2": "sketchy_split2.txt"},
    expected={"classes": 125, "sketches": 75471, "photos": 12500}, class_list="sketchy.txt", fine_grained=True,
    source="Sangkloy et al. 2016 (sketchy.eye.gatech.edu)", licence="CC BY 4.0 (sketches); photos from ImageNet"))
_add(DatasetSpec(
    name="tuberlin", title="TU-Berlin Extended", subdirs=("TUBerlin", "TU-Berlin", "tuberlin", ""),
    layouts=_layouts(("png_ready", "sketches", "png", "sketch"), ("ImageResized_ready", "images", "ImageResized", "photo")),
    splits={"1": "tuberlin_split1.txt"},
    expected={"classes": 250, "sketches": 20000, "photos": 204489}, class_list="tuberlin.txt",
    source="Eitz et al. 2012 (cybertron.cg.tu-berlin.de/eitz/projects/classifysketch) + photos of Zhang et al. 2016",
    licence="CC BY 4.0 (sketches); photos research use"))
_add(DatasetSpec(
    name="quickdraw", title="QuickDraw Extended", subdirs=("QuickDraw", "quickdraw", ""),
    layouts=_layouts(("QuickDraw_sketches_final", "sketch"), ("QuickDraw_images_final", "photo")),
    splits={"1": "quickdraw_split1.txt"},
    expected={"classes": 110, "sketches": 330000, "photos": 204000}, class_list="quickdraw.txt",
    source="Dey et al., Doodle to Search, CVPR 2019 (github.com/sounakdey/doodle2search)",
    licence="QuickDraw sketches CC BY 4.0; photos research use"))
_add(DatasetSpec(
    name="mini", title="sbir-bench mini (generated)", subdirs=("",), layouts=(Layout("sketch", "photo"),),
    splits={"1": "mini_split1.txt"}, expected={}, fine_grained=True,
    source="generated deterministically by sbir_bench.data.mini", licence="CC0 (synthetic)"))


def get_spec(name: str) -> DatasetSpec:
    """The spec called ``name`` or a one-line error listing the datasets."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def default_data_root() -> Path:
    """``$SBIR_BENCH_DATA`` or ``~/data/sbir``: where datasets are looked for without --data-root."""
    return Path(os.environ.get("SBIR_BENCH_DATA", Path.home() / "data" / "sbir")).expanduser()


def candidate_dirs(spec: DatasetSpec, data_root: Optional[str | Path]) -> List[Path]:
    """Every (dataset dir) path tried for ``spec`` under ``data_root``."""
    root = Path(data_root).expanduser() if data_root else default_data_root()
    return [root / sub if sub else root for sub in spec.subdirs]


def locate(spec: DatasetSpec, data_root: Optional[str | Path]) -> Tuple[Path, Layout]:
    """Find the dataset directory and layout, or raise a one-line error saying where we looked."""
    tried: List[str] = []
    for base in candidate_dirs(spec, data_root):
        for layout in spec.layouts:
            sk, ph = base / layout.sketch_dir, base / layout.photo_dir
            if sk.is_dir() and ph.is_dir() and sk != ph:
                return base, layout
        tried.append(str(base))
    first = spec.layouts[0]
    raise DataError(
        f"{spec.title} not found: looked in {', '.join(dict.fromkeys(tried))} for <class>/ folders under "
        f"'{first.sketch_dir}' and '{first.photo_dir}' (or the other layouts in docs/datasets.md); "
        f"point --data-root at the folder that holds it")


def normalise_class(name: str) -> str:
    """Case/space/underscore/hyphen-insensitive key, so 'hot-air_balloon' == 'hot air balloon'."""
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


def list_images(folder: Path) -> List[Path]:
    """Image files directly inside ``folder`` (sorted, hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def class_folders(folder: Path) -> Dict[str, Path]:
    """Class name -> class folder for every visible sub-directory."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def photo_instance(path: str | Path) -> str:
    """Instance key of a photo: its file stem (``n02691156_10151.jpg`` -> ``n02691156_10151``)."""
    return Path(path).stem


def sketch_instance(path: str | Path) -> str:
    """Instance key of a Sketchy-style sketch ``<photo-id>-<n>.png`` -> ``<photo-id>``."""
    stem = Path(path).stem
    head, sep, tail = stem.rpartition("-")
    return head if sep and tail.isdigit() else stem


@dataclass
class DatasetIndex:
    """All sketches and photos of a dataset copy, with one class list shared by both modalities."""

    spec: DatasetSpec
    root: Path
    layout: Layout
    class_names: List[str]
    sketches: List[Sample]
    photos: List[Sample]

    def class_index(self) -> Dict[str, int]:
        """Normalised class name -> label."""
        return {normalise_class(c): i for i, c in enumerate(self.class_names)}


def index_dataset(name: str, data_root: Optional[str | Path] = None) -> DatasetIndex:
    """Walk a dataset copy and list every sketch and photo with its class (and instance) label."""
    spec = get_spec(name)
    if name == "mini" and data_root is None:
        from .mini import ensure_mini
        data_root = ensure_mini()
    base, layout = locate(spec, data_root)
    sk_classes = class_folders(base / layout.sketch_dir)
    ph_classes = class_folders(base / layout.photo_dir)
    ph_by_key = {normalise_class(c): p for c, p in ph_classes.items()}
    names = [c for c in sk_classes if normalise_class(c) in ph_by_key]
    if not names:
        raise DataError(f"{spec.title} at {base}: no class folder appears under both "
                        f"'{layout.sketch_dir}' and '{layout.photo_dir}'")
    sketches: List[Sample] = []
    photos: List[Sample] = []
    for label, cname in enumerate(names):
        for p in list_images(sk_classes[cname]):
            sketches.append(Sample(str(p), label, sketch_instance(p) if spec.fine_grained else ""))
        for p in list_images(ph_by_key[normalise_class(cname)]):
            photos.append(Sample(str(p), label, photo_instance(p) if spec.fine_grained else ""))
    return DatasetIndex(spec, base, layout, names, sketches, photos)
