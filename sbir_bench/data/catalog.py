"""The dataset catalog: what sbir-bench knows about each benchmark, registered by name.

A :class:`DatasetSpec` says where a benchmark is looked for (folder names and the layouts of the
public SBIR code), which zero-shot splits it has, its official class list and the counts the
literature reports. Built-in specs are registered below in :data:`~sbir_bench.plugins.DATASETS`;
a package adds its own through the ``sbir_bench.datasets`` entry-point group (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from ..plugins import DATASETS
from .mini import MINI_UNSEEN

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SplitSource = Union[str, Tuple[str, ...]]  # a bundled split file name, a path, or the unseen class names


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


def layouts(sketch: Sequence[str], photo: Sequence[str]) -> Tuple[Layout, ...]:
    """Every (sketch folder, photo folder) combination."""
    return tuple(Layout(s, p) for s in sketch for p in photo)


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the dataset registry under its name."""
    return DATASETS.add(spec.name, spec)


def get_spec(name: str) -> DatasetSpec:
    """The spec called ``name`` or a one-line error listing the datasets."""
    return DATASETS.get(name)


def _mini_root() -> Path:
    from .mini import ensure_mini
    return ensure_mini()


# Sketch and photo folders of every public copy (docs/datasets.md names the source of each): the
# official archive, SAKE / ZSE-SBIR / TCN (`_ready`), SEM-PCYC (`extended_photo`), Doodle2Search's
# loader (`EXTEND_image_sketchy` beside `Sketchy/`), CLIP-AT (`sketch/<c>`, `photo/<c>`).
_SKETCHY_SK = ("256x256/sketch/tx_000000000000", "256x256/sketch/tx_000000000000_ready", "sketch/tx_000000000000",
               "sketch/tx_000000000000_ready", "sketch")
_SKETCHY_FG_PH = ("256x256/photo/tx_000000000000", "256x256/photo/tx_000000000000_ready", "photo/tx_000000000000",
                  "photo/tx_000000000000_ready")
register(DatasetSpec(
    name="sketchy", title="Sketchy Extended", table_title="Sketchy-Ext", subdirs=("Sketchy", "sketchy", ""),
    layouts=layouts(_SKETCHY_SK, ("EXTEND_image_sketchy", "EXTEND_image_sketchy_ready", "256x256/EXTEND_image_sketchy",
                                  "extended_photo", "../EXTEND_image_sketchy", "photo")),
    splits={"1": "sketchy_split1.txt", "2": "sketchy_split2.txt"},
    expected={"classes": 125, "sketches": 75481, "photos": 73002}, class_list="sketchy.txt",
    source="Sangkloy et al. 2016 (sketchy.eye.gatech.edu) + extended photos of Liu et al. 2017",
    licence="CC BY 4.0 (sketches); photos from ImageNet, research use", sibling="sketchy-fg",
    listed_twice=r"n\d+_\d+\.\w+"))  # the original Sketchy photos (the extended ones are ext_N.jpg)
register(DatasetSpec(
    name="sketchy-fg", title="Sketchy (fine-grained pairs)", table_title="Sketchy", subdirs=("Sketchy", "sketchy", ""),
    layouts=layouts(_SKETCHY_SK, (*_SKETCHY_FG_PH, "photo")),
    splits={"1": "sketchy_split1.txt", "2": "sketchy_split2.txt"},
    expected={"classes": 125, "sketches": 75481, "photos": 12500}, class_list="sketchy.txt", fine_grained=True,
    source="Sangkloy et al. 2016 (sketchy.eye.gatech.edu)", licence="CC BY 4.0 (sketches); photos from ImageNet"))
register(DatasetSpec(
    name="tuberlin", title="TU-Berlin Extended", table_title="TU-Berlin-Ext", subdirs=("TUBerlin", "TU-Berlin", "tuberlin", ""),
    layouts=layouts(("png_ready", "sketches", "png", "sketch"), ("ImageResized_ready", "images", "ImageResized", "photo")),
    splits={"1": "tuberlin_split1.txt"}, photo_aliases="tuberlin_photo_aliases.txt",
    expected={"classes": 250, "sketches": 20000, "photos": 204489}, class_list="tuberlin.txt",
    source="Eitz et al. 2012 (cybertron.cg.tu-berlin.de/eitz/projects/classifysketch) + photos of Zhang et al. 2016",
    licence="CC BY 4.0 (sketches); photos research use"))
register(DatasetSpec(
    name="quickdraw", title="QuickDraw Extended", table_title="QuickDraw-Ext", subdirs=("QuickDraw", "quickdraw", ""),
    layouts=layouts(("QuickDraw_sketches_final", "sketches", "sketch"), ("QuickDraw_images_final", "images", "photo")),
    splits={"1": "quickdraw_split1.txt"},
    expected={"classes": 110, "sketches": 330000, "photos": 204000}, class_list="quickdraw.txt",
    source="Dey et al., Doodle to Search, CVPR 2019 (github.com/sounakdey/doodle2search)",
    licence="QuickDraw sketches CC BY 4.0; photos research use"))
register(DatasetSpec(
    name="mini", title="sbir-bench mini (generated)", table_title="mini", subdirs=("",), layouts=(Layout("sketch", "photo"),),
    splits={"1": MINI_UNSEEN}, expected={}, fine_grained=True,
    source="generated deterministically by sbir_bench.data.mini", licence="CC0 (synthetic)",
    default_root=_mini_root))
