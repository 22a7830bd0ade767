"""Finding a dataset copy on disk and listing every sketch and photo in it.

Researchers bring their own copies laid out as the public SBIR code expects: one folder per class
for each modality. :func:`locate` tries the folder names and layouts of the dataset's
:class:`~sbir_bench.data.catalog.DatasetSpec`; :func:`index_dataset` walks the copy it finds.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import DataError
from ..log import get_logger
from .catalog import IMAGE_EXTENSIONS, DatasetSpec, Layout, get_spec
from .classnames import class_key
from .domains import locate_domains, unknown_domains
from .mini import tree_digest
from .splits import package_file, read_class_file

log = get_logger(__name__)


@dataclass(frozen=True)
class Sample:
    """One image: its path, class index, instance key (the photo id it depicts, for FG) and, in a
    multi-domain benchmark, its domain folder."""

    path: str
    label: int
    instance: str = ""
    domain: str = ""


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
    if spec.domain_split is not None:
        return locate_domains(spec, candidate_dirs(spec, data_root)), spec.layouts[0]
    tried: List[str] = []
    for base in candidate_dirs(spec, data_root):
        for layout in spec.layouts:
            sk, ph = base / layout.sketch_dir, base / layout.photo_dir
            if sk.is_dir() and ph.is_dir() and sk != ph:
                return base, layout
        tried.append(str(base))
    hint = ""
    if spec.sibling and _present(spec.sibling, data_root):
        hint = f"; the folders there are {get_spec(spec.sibling).title}'s: use --dataset {spec.sibling}"
    raise DataError(
        f"{spec.title} not found: looked in {', '.join(dict.fromkeys(tried))} for <class>/ folders under "
        f"{' or '.join(repr(x.sketch_dir) + ' and ' + repr(x.photo_dir) for x in spec.layouts[:2])} "
        f"(or the other layouts in docs/datasets.md: {', '.join(x.name or '?' for x in spec.layouts)}); "
        f"point --data-root at the folder that holds it{hint}")


def _present(name: str, data_root: Optional[str | Path]) -> bool:
    """True when dataset ``name`` is found at ``data_root``."""
    try:
        locate(get_spec(name), data_root)
        return True
    except DataError:
        return False


def list_images(folder: Path) -> List[Path]:
    """Image files directly inside ``folder`` (sorted, hidden files skipped). ``os.scandir`` reads the
    file type from the directory entry: no ``stat`` per file, which counts on 500k-file copies."""
    names, broken = [], []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                if e.is_file():
                    names.append(e.name)
            except OSError as exc:  # a symlink loop (ELOOP) or an entry that vanished: not an image
                broken.append(f"{e.name} ({exc.strerror or exc})")
    if broken:
        log.warning(f"{folder}: {len(broken)} entr{'y' if len(broken) == 1 else 'ies'} skipped, not readable as a file: "
                    f"{', '.join(sorted(broken)[:3])}{' ...' if len(broken) > 3 else ''}")
    return [folder / n for n in sorted(names)]


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
            out["content_sha256"] = tree_digest(self.root)
        return out

    def class_index(self) -> Dict[str, int]:
        """Class key (:func:`~sbir_bench.data.classnames.class_key`) -> label."""
        return {class_key(c): i for i, c in enumerate(self.class_names)}


def photo_aliases(spec: DatasetSpec) -> Dict[str, str]:
    """Class key of a photo folder's spelling -> the class it holds (raw downloads spell some differently)."""
    if not spec.photo_aliases:
        return {}
    pairs = [line.split("\t") for line in read_class_file(package_file("classes", spec.photo_aliases))]
    return {class_key(raw): cls for raw, cls in pairs}


def photo_folders(spec: DatasetSpec, folder: Path, sketch_keys: set) -> Dict[str, Path]:
    """Class key -> photo class folder, photo spellings mapped through the dataset's alias table."""
    aliases = photo_aliases(spec)
    out: Dict[str, Path] = {}
    for name, path in class_folders(folder).items():
        key = class_key(name)
        out[key if key in sketch_keys else class_key(aliases.get(key, name))] = path
    return out


def check_not_fine_grained(spec: DatasetSpec, base: Path, layout: Layout, photo_names: List[str]) -> None:
    """Photo "class" folders named ``tx_...`` are the fine-grained copy's render folders: one line naming
    the sibling dataset (``run`` and ``datasets check`` alike)."""
    if photo_names and all(n.startswith("tx_") for n in photo_names) and spec.sibling:
        raise DataError(f"{spec.title} at {base}: '{layout.photo_dir}' holds {', '.join(sorted(photo_names))}, not "
                        f"class folders: that is the fine-grained photo layout; use --dataset {spec.sibling}")


def _check_modalities(spec: DatasetSpec, base: Path, layout: Layout, sketch_keys: Dict[str, str],
                      photo_keys: Dict[str, Path]) -> None:
    """A class with sketches but no photo folder (or the reverse) is an error naming it, never a silent drop."""
    check_not_fine_grained(spec, base, layout, [p.name for p in photo_keys.values()])
    no_photos = [name for key, name in sketch_keys.items() if key not in photo_keys]
    no_sketches = [p.name for key, p in photo_keys.items() if key not in sketch_keys]
    if no_photos or no_sketches:
        parts = [f"{len(v)} class(es) only in '{d}' ({', '.join(sorted(v)[:6])}{', ...' if len(v) > 6 else ''})"
                 for v, d in ((no_photos, layout.sketch_dir), (no_sketches, layout.photo_dir)) if v]
        raise DataError(f"{spec.title} at {base}: {'; '.join(parts)}; every class needs sketches and photos "
                        f"(see docs/datasets.md for the copies and spellings sbir-bench knows)")


def _check_pairs(spec: DatasetSpec, base: Path, layout: Layout, sketches: List[Sample], photos: List[Sample]) -> None:
    """Fine-grained data: refuse a photo folder most of whose photos no sketch depicts (the extended
    photos under a fine-grained name would silently become distractors of every query)."""
    depicted = {s.instance for s in sketches}
    unpaired = sum(1 for p in photos if p.instance not in depicted)
    if photos and unpaired > 0.1 * len(photos):
        raise DataError(f"{spec.title} at {base}: {unpaired} of the {len(photos)} photos in '{layout.photo_dir}' are "
                        f"depicted by no sketch (the extended photos?); fine-grained retrieval needs Sketchy's "
                        f"paired photos (256x256/photo/tx_000000000000); use --dataset sketchy for the extended set")


def index_dataset(name: str, data_root: Optional[str | Path] = None) -> DatasetIndex:
    """Walk a dataset copy and list every sketch and photo with its class (and instance) label."""
    spec = get_spec(name)
    base, layout = locate(spec, resolve_root(spec, data_root))
    if spec.domain_split is not None:
        return index_domains(spec, base, layout)
    sk_classes = class_folders(base / layout.sketch_dir)
    sketch_keys = {class_key(c): c for c in sk_classes}
    ph_by_key = photo_folders(spec, base / layout.photo_dir, set(sketch_keys))
    _check_modalities(spec, base, layout, sketch_keys, ph_by_key)
    names = list(sk_classes)
    sketches: List[Sample] = []
    photos: List[Sample] = []
    for label, cname in enumerate(names):
        for p in list_images(sk_classes[cname]):
            sketches.append(Sample(str(p), label, sketch_instance(p) if spec.fine_grained else ""))
        for p in list_images(ph_by_key[class_key(cname)]):
            photos.append(Sample(str(p), label, photo_instance(p) if spec.fine_grained else ""))
    if spec.fine_grained:
        _check_pairs(spec, base, layout, sketches, photos)
    return DatasetIndex(spec, base, layout, names, sketches, photos)


def index_domains(spec: DatasetSpec, base: Path, layout: Layout) -> DatasetIndex:
    """A multi-domain copy (``<base>/<domain>/<class>/``): the gallery domain's images are the photos,
    every other known domain's the "sketches" (the query side), each with its domain; classes are the
    gallery domain's class folders. Listings are sorted (data/domains.py says why)."""
    split = spec.domain_split
    stray = unknown_domains(spec, base)
    if stray:
        log.warning(f"{spec.title} at {base}: folder(s) {', '.join(stray)} are no domain of the protocol and are not "
                    f"read (the official code would train on them as auxiliary domains)")
    gallery = class_folders(base / split.gallery)
    names = list(gallery)
    labels = {class_key(c): i for i, c in enumerate(names)}
    sketches: List[Sample] = []
    photos: List[Sample] = []
    for domain in split.domains:
        if not (base / domain).is_dir():
            continue
        target = photos if domain == split.gallery else sketches
        for cname, folder in class_folders(base / domain).items():
            if class_key(cname) not in labels:
                raise DataError(f"{spec.title} at {base}: class folder {domain}/{cname} has no {split.gallery}/ "
                                f"counterpart; every class needs gallery photos (run `sbir-bench datasets check "
                                f"{spec.name}`)")
            target += [Sample(str(p), labels[class_key(cname)], "", domain) for p in list_images(folder)]
    return DatasetIndex(spec, base, layout, names, sketches, photos)


def photos_listed_twice(index: DatasetIndex, data_root: Optional[str | Path]) -> List[Sample]:
    """The photos that SAKE's and ZSE-SBIR's zero-shot lists name a second time (``data.gallery: published``).

    Their Sketchy photo lists hold the extended folder (where the original photos sit under their own
    names) and, again, every original photo from the paired-photo folder (``256x256/photo/...``), the
    folder ``--dataset sketchy-fg`` reads: those are returned, labelled in ``index``'s classes. A copy
    without that folder gets the originals found inside the extended folder by name, with a warning
    (the lists differ there in one camel photo, whose extended copy is named ``c.jpg``).
    """
    spec = index.spec
    if not spec.listed_twice:
        raise DataError(f"data.gallery=published composes SAKE's/ZSE-SBIR's zero-shot lists, whose galleries differ "
                        f"from the unique one only on sketchy; {spec.name}'s lists hold no duplicate: use unique")
    labels = index.class_index()
    try:
        paired = index_dataset(spec.sibling, data_root)
    except DataError as exc:
        pattern = re.compile(spec.listed_twice)
        again = [p for p in index.photos if pattern.fullmatch(Path(p.path).name)]
        log.warning(f"data.gallery=published: the copy has no paired-photo folder ({exc}); listing the {len(again)} "
                    f"original photos of the extended folder twice instead")
        return again
    return [Sample(p.path, labels[class_key(paired.class_names[p.label])], "") for p in paired.photos
            if class_key(paired.class_names[p.label]) in labels]
