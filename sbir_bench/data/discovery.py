"""Finding a dataset copy on disk and listing every sketch and photo in it.

Researchers bring their own copies laid out as the public SBIR code expects: one folder per class
for each modality. :func:`locate` tries the folder names and layouts of the dataset's
:class:`~sbir_bench.data.catalog.DatasetSpec`; :func:`index_dataset` walks the copy it finds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import DataError
from .catalog import IMAGE_EXTENSIONS, DatasetSpec, Layout, get_spec
from .classnames import class_key


@dataclass(frozen=True)
class Sample:
    """One image: its path, class index and instance key (the photo id it depicts, for FG)."""

    path: str
    label: int
    instance: str = ""


def default_data_root() -> Path:
    """``$SBIR_BENCH_DATA`` or ``~/data/sbir``: where datasets are looked for without --data-root."""
    return Path(os.environ.get("SBIR_BENCH_DATA", Path.home() / "data" / "sbir")).expanduser()


def resolve_root(spec: DatasetSpec, data_root: Optional[str | Path]) -> Optional[Path]:
    """The data root to search: the one given, else the dataset's own default (the generated mini set)."""
    if data_root is None and spec.default_root is not None:
        return spec.default_root()
    return Path(data_root).expanduser() if data_root else None


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
    hint = ""
    if spec.sibling and _present(spec.sibling, data_root):
        hint = f"; the folders there are {get_spec(spec.sibling).title}'s: use --dataset {spec.sibling}"
    raise DataError(
        f"{spec.title} not found: looked in {', '.join(dict.fromkeys(tried))} for <class>/ folders under "
        f"'{first.sketch_dir}' and '{first.photo_dir}' (or the other layouts in docs/datasets.md); "
        f"point --data-root at the folder that holds it{hint}")


def _present(name: str, data_root: Optional[str | Path]) -> bool:
    """True when dataset ``name`` is found at ``data_root``."""
    try:
        locate(get_spec(name), data_root)
        return True
    except DataError:
        return False


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

    def fingerprint(self) -> Dict[str, object]:
        """What identifies this copy of the data: counts and a SHA-256 of every file's path (relative
        to the dataset folder) and class; the generated mini set adds the digest of its bytes.

        Two copies with the same files give the same fingerprint wherever they live, so records of
        one seed on two copies are recognised as one seed, and a copy with other files is not.
        """
        h = hashlib.sha256()
        for kind, samples in (("sketch", self.sketches), ("photo", self.photos)):
            for s in samples:
                h.update(f"{kind}\t{self.class_names[s.label]}\t{Path(s.path).relative_to(self.root)}\n".encode())
        out: Dict[str, object] = {"sketches": len(self.sketches), "photos": len(self.photos),
                                  "classes": len(self.class_names), "files_sha256": h.hexdigest()}
        if self.spec.name == "mini":
            from .mini import tree_digest
            out["content_sha256"] = tree_digest(self.root)
        return out

    def class_index(self) -> Dict[str, int]:
        """Class key (:func:`~sbir_bench.data.classnames.class_key`) -> label."""
        return {class_key(c): i for i, c in enumerate(self.class_names)}


def index_dataset(name: str, data_root: Optional[str | Path] = None) -> DatasetIndex:
    """Walk a dataset copy and list every sketch and photo with its class (and instance) label."""
    spec = get_spec(name)
    base, layout = locate(spec, resolve_root(spec, data_root))
    sk_classes = class_folders(base / layout.sketch_dir)
    ph_by_key = {class_key(c): p for c, p in class_folders(base / layout.photo_dir).items()}
    names = [c for c in sk_classes if class_key(c) in ph_by_key]
    if not names:
        raise DataError(f"{spec.title} at {base}: no class folder appears under both "
                        f"'{layout.sketch_dir}' and '{layout.photo_dir}'")
    sketches: List[Sample] = []
    photos: List[Sample] = []
    for label, cname in enumerate(names):
        for p in list_images(sk_classes[cname]):
            sketches.append(Sample(str(p), label, sketch_instance(p) if spec.fine_grained else ""))
        for p in list_images(ph_by_key[class_key(cname)]):
            photos.append(Sample(str(p), label, photo_instance(p) if spec.fine_grained else ""))
    return DatasetIndex(spec, base, layout, names, sketches, photos)
