"""The dataset catalog: what sbir-bench knows about each benchmark, registered by name.

A :class:`DatasetSpec` says where a benchmark is looked for (folder names and the layouts of the
public SBIR code), which zero-shot splits it has, its official class list and the counts the
literature reports. Built-in specs are registered below in :data:`~sbir_bench.plugins.DATASETS`;
a package adds its own through the ``sbir_bench.datasets`` entry-point group (docs/architecture.md).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from ..plugins import DATASETS
from .mini import MINI_UNSEEN, ensure_mini

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SplitSource = Union[str, Tuple[str, ...]]  # a bundled split file name, a path, or the unseen class names


@dataclass(frozen=True)
class Layout:
    """One public copy's sketch and photo folders (class sub-folders inside), relative to the dataset
    directory: a named entry, so that a new copy is one line in its spec and docs and tests read it."""

    sketch_dir: str
    photo_dir: str
    name: str = ""  # what this copy is called in docs, tests and `datasets check`
    source: str = ""  # whose code or archive lays the files out this way
    folder: str = ""  # the dataset folder this copy names (discovery tries every name in the spec's subdirs)


@dataclass
class DatasetSpec:
    """Everything sbir-bench knows about one benchmark."""

    name: str
    title: str
    subdirs: Tuple[str, ...]  # dataset folder names tried under --data-root ("" = the root itself)
    layouts: Tuple[Layout, ...]
    splits: Dict[str, SplitSource]  # split id -> bundled file name, file path, or unseen class names
    expected: Dict[str, int] = field(default_factory=dict)  # classes / sketches / photos
    class_list: Optional[str] = None  # bundled file with the official class names
    fine_grained: bool = False
    source: str = ""
    licence: str = ""
    default_root: Optional[Callable[[], Path]] = None  # where the data is when --data-root is not given
    sibling: str = ""  # a dataset with a similar layout, suggested when it is there and this one is not
    table_title: str = ""  # the name papers print in table headers
    photo_aliases: Optional[str] = None  # bundled file: photo folder spellings -> class (raw downloads)
    # photo file names that SAKE's / ZSE-SBIR's zero-shot lists name twice (data.gallery: published)
    listed_twice: str = ""

    def layout(self, name: str) -> Layout:
        """The layout entry called ``name``.

        >>> get_spec("quickdraw").layout("zse-sbir").sketch_dir
        'sketches'
        """
        for layout in self.layouts:
            if layout.name == name:
                return layout
        raise KeyError(f"{self.name} has no layout {name!r}; it has {', '.join(x.name for x in self.layouts)}")


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the dataset registry under its name."""
    return DATASETS.add(spec.name, spec)


def get_spec(name: str) -> DatasetSpec:
    """The spec called ``name`` or a one-line error listing the datasets."""
    return DATASETS.get(name)


def layout_table(names: Tuple[str, ...] = ("sketchy", "sketchy-fg", "tuberlin", "quickdraw")) -> str:
    """The Markdown table of every public copy's folders, in the order discovery tries them
    (docs/datasets.md holds it verbatim; a test compares)."""
    rows = ["| `--dataset` | layout | sketches | photos | whose copy |", "| --- | --- | --- | --- | --- |"]
    for name in names:
        for x in get_spec(name).layouts:
            sketches, photos = (posixpath.normpath(f"{x.folder}/{d}") for d in (x.sketch_dir, x.photo_dir))
            rows.append(f"| `{name}` | `{x.name}` | `{sketches}/<class>/` | `{photos}/<class>/` | {x.source} |")
    return "\n".join(rows)


def _mini_root() -> Path:
    return ensure_mini()


# Every public copy's folders, one entry each (docs/datasets.md names the source of each; the first
# entry that exists under a dataset folder is read). Sources: ../shared/field/dataset-copies.md.
_SAKE, _SEM_PCYC = "SAKE (qliu24/SAKE), ZSE-SBIR (buptLinfy/ZSE-SBIR), TCN", "SEM-PCYC (AnjanDutta/sem-pcyc) download script"
_RAW = "the official archives as downloaded"
_FLAT = "plain sketch/ and photo/ class folders"
SKETCHY_LAYOUTS = (
    Layout("256x256/sketch/tx_000000000000", "EXTEND_image_sketchy", "raw",
           "official Sketchy archive + Deep Sketch Hashing's extended photos", "Sketchy"),
    Layout("256x256/sketch/tx_000000000000_ready", "EXTEND_image_sketchy_ready", "sake", _SAKE, "Sketchy"),
    Layout("sketch/tx_000000000000", "extended_photo", "sem-pcyc", _SEM_PCYC + " and Doodle2Search's", "Sketchy"),
    Layout("sketch/tx_000000000000", "../EXTEND_image_sketchy", "doodle2search-loader",
           "Doodle2Search's loader (sounakdey/doodle2search): the extended photos beside Sketchy/", "Sketchy"),
    Layout("sketch", "photo", "clip-at", "CLIP-AT (aneeshan95/Sketch_LVM): photo/ holds the extended photos", "Sketchy"),
)
SKETCHY_FG_LAYOUTS = (
    Layout("256x256/sketch/tx_000000000000", "256x256/photo/tx_000000000000", "raw", "official Sketchy archive", "Sketchy"),
    Layout("256x256/sketch/tx_000000000000_ready", "256x256/photo/tx_000000000000_ready", "sake", _SAKE, "Sketchy"),
    Layout("sketch/tx_000000000000", "photo/tx_000000000000", "sem-pcyc", _SEM_PCYC, "Sketchy"),
    Layout("sketch", "photo", "flat", _FLAT + " (refused when photo/ holds the extended photos)", "Sketchy"),
)
TUBERLIN_LAYOUTS = (
    Layout("png_ready", "ImageResized_ready", "sake", _SAKE, "TUBerlin"),
    Layout("sketches", "images", "sem-pcyc", _SEM_PCYC + " (classes with underscores, .jpg photos)", "TU-Berlin"),
    Layout("png", "ImageResized", "raw", _RAW + " (52 photo folders spelled otherwise: the alias table)", "TUBerlin"),
    Layout("sketch", "photo", "flat", _FLAT, "TUBerlin"),
)
QUICKDRAW_LAYOUTS = (
    Layout("QuickDraw_sketches_final", "QuickDraw_images_final", "doodle2search",
           "Doodle2Search's archives (sounakdey/doodle2search)", "QuickDraw"),
    Layout("sketches", "images", "zse-sbir", "ZSE-SBIR (buptLinfy/ZSE-SBIR)", "QuickDraw"),
    Layout("sketch", "photo", "flat", _FLAT, "QuickDraw"),
)
register(DatasetSpec(
    name="sketchy", title="Sketchy Extended", table_title="Sketchy-Ext", subdirs=("Sketchy", "sketchy", ""),
    layouts=SKETCHY_LAYOUTS,
    splits={"1": "sketchy_split1.txt", "2": "sketchy_split2.txt"},
    expected={"classes": 125, "sketches": 75481, "photos": 73002}, class_list="sketchy.txt",
    source="Sangkloy et al. 2016 (sketchy.eye.gatech.edu) + extended photos of Liu et al. 2017",
    licence="CC BY 4.0 (sketches); photos from ImageNet, research use", sibling="sketchy-fg",
    listed_twice=r"n\d+_\d+\.\w+"))  # the original Sketchy photos (the extended ones are ext_N.jpg)
register(DatasetSpec(
    name="sketchy-fg", title="Sketchy (fine-grained pairs)", table_title="Sketchy", subdirs=("Sketchy", "sketchy", ""),
    layouts=SKETCHY_FG_LAYOUTS,
    splits={"1": "sketchy_split1.txt", "2": "sketchy_split2.txt"},
    expected={"classes": 125, "sketches": 75481, "photos": 12500}, class_list="sketchy.txt", fine_grained=True,
    source="Sangkloy et al. 2016 (sketchy.eye.gatech.edu)", licence="CC BY 4.0 (sketches); photos from ImageNet"))
register(DatasetSpec(
    name="tuberlin", title="TU-Berlin Extended", table_title="TU-Berlin-Ext", subdirs=("TUBerlin", "TU-Berlin", "tuberlin", ""),
    layouts=TUBERLIN_LAYOUTS,
    splits={"1": "tuberlin_split1.txt"}, photo_aliases="tuberlin_photo_aliases.txt",
    expected={"classes": 250, "sketches": 20000, "photos": 204489}, class_list="tuberlin.txt",
    source="Eitz et al. 2012 (cybertron.cg.tu-berlin.de/eitz/projects/classifysketch) + photos of Zhang et al. 2016",
    licence="CC BY 4.0 (sketches); photos research use"))
register(DatasetSpec(
    name="quickdraw", title="QuickDraw Extended", table_title="QuickDraw-Ext", subdirs=("QuickDraw", "quickdraw", ""),
    layouts=QUICKDRAW_LAYOUTS,
    splits={"1": "quickdraw_split1.txt"},
    expected={"classes": 110, "sketches": 330000, "photos": 204000}, class_list="quickdraw.txt",
    source="Dey et al., Doodle to Search, CVPR 2019 (github.com/sounakdey/doodle2search)",
    licence="QuickDraw sketches CC BY 4.0; photos research use"))
register(DatasetSpec(
    name="mini", title="sbir-bench mini (generated)", table_title="mini", subdirs=("",), layouts=(Layout("sketch", "photo", "mini", "sbir_bench.data.mini"),),
    splits={"1": MINI_UNSEEN}, expected={}, fine_grained=True,
    source="generated deterministically by sbir_bench.data.mini", licence="CC0 (synthetic)",
    default_root=_mini_root))
