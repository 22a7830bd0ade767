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
from .mini import MINI_UNSEEN, default_mini_root, ensure_mini
from .mini_domains import UDCDR_CLASSES
from .mini_domains import default_root as mini_domains_root
from .mini_domains import ensure as ensure_mini_domains

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


@dataclass(frozen=True)
class DomainSplit:
    """A multi-domain benchmark's universal cross-domain protocol (DomainNet's UCDR, as SnMpNet's code
    defines it and ProS, DePro and UCDR-Adapter copy it; ../shared/field/domainnet-ucdr.md): which folder
    is each domain, which is the gallery, and the three class lists. The order of ``train`` matters: the
    official draws seed each class with its index there, and U^d-CDR uses its first ``udcdr_classes``."""

    domains: Tuple[str, ...]  # every domain folder the protocol knows (others are reported, never read)
    gallery: str  # the gallery domain (DomainNet: real), never held out
    train: str  # bundled file: the seen classes, in the official order
    val: str  # bundled file: the validation classes (merged into the seen ones by ProS and DePro)
    test: str  # bundled file: the unseen classes
    seen_domain: Dict[str, str] = field(default_factory=dict)  # held-out -> the scripts' -sd (its extra evaluation)
    udcdr_classes: int = 45  # U^d-CDR: the first this-many seen classes
    udcdr_fraction: Dict[str, float] = field(default_factory=dict)  # per held-out domain; else ``udcdr_default``
    udcdr_default: float = 0.25
    train_share: float = 0.92  # of each seen class's gallery-domain images trained on; the rest: G1's distractors
    val_query_share: float = 0.3  # SnMpNet's validation queries: this share of each val class per training domain
    inverted: Tuple[str, ...] = ("sketch", "quickdraw")  # domains the official loaders colour-invert
    images: Dict[str, int] = field(default_factory=dict)  # published per-domain totals (the dry-run estimate)


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
    shipped_at: Optional[Callable[[], Path]] = None  # a shipped set: where it is unpacked (without unpacking it)
    sibling: str = ""  # a dataset with a similar layout, suggested when it is there and this one is not
    table_title: str = ""  # the name papers print in table headers
    photo_aliases: Optional[str] = None  # bundled file: photo folder spellings -> class (raw downloads)
    # photo file names that SAKE's / ZSE-SBIR's zero-shot lists name twice (data.gallery: published)
    listed_twice: str = ""
    domain_split: Optional[DomainSplit] = None  # a multi-domain benchmark (data/domains.py builds its tasks)

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
    splits={"1": "tuberlin_split1.txt", "depro25": "tuberlin_depro25.txt"}, photo_aliases="tuberlin_photo_aliases.txt",
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
DOMAINNET_SPLIT = DomainSplit(
    domains=("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), gallery="real",
    train="domainnet_train.txt", val="domainnet_val.txt", test="domainnet_test.txt",
    seen_domain={"sketch": "quickdraw", "quickdraw": "sketch", "painting": "infograph", "infograph": "painting",
                 "clipart": "painting"},
    udcdr_fraction={"quickdraw": 0.1},
    # ai.bu.edu/M3SDA's "original" counts (the held-out-sketch set sizes of DePro's logs fit them best)
    images={"clipart": 48837, "infograph": 53201, "painting": 75759, "quickdraw": 172500, "real": 175327,
            "sketch": 70386})
register(DatasetSpec(
    name="domainnet", title="DomainNet (UCDR)", table_title="DomainNet", subdirs=("DomainNet", "domainnet", ""),
    layouts=(Layout(".", "real", "official", "download_domainnet.sh of SnMpNet, ProS, DePro and UCDR-Adapter "
                    "(<domain>/<class>/ folders)", "DomainNet"),),
    splits={"1": "domainnet_test.txt"}, domain_split=DOMAINNET_SPLIT,
    expected={"classes": 345},
    source="Peng et al., ICCV 2019 (ai.bu.edu/M3SDA); UCDR protocol of Paul et al., SnMpNet, ICCV 2021",
    licence="research use (DomainNet's terms)"))
register(DatasetSpec(
    name="mini", title="sbir-bench mini (generated)", table_title="mini", subdirs=("",), layouts=(Layout("sketch", "photo", "mini", "sbir_bench.data.mini"),),
    splits={"1": MINI_UNSEEN}, expected={}, fine_grained=True,
    source="generated deterministically by sbir_bench.data.mini", licence="CC0 (synthetic)",
    default_root=_mini_root, shipped_at=default_mini_root))
register(DatasetSpec(
    name="mini-domainnet", title="sbir-bench mini DomainNet world (generated)", table_title="mini-DomainNet",
    subdirs=("",), layouts=(Layout(".", "real", "mini-domainnet", "sbir_bench.data.mini_domains"),),
    splits={"1": "mini_domainnet_test.txt"},
    domain_split=DomainSplit(domains=DOMAINNET_SPLIT.domains, gallery="real", train="mini_domainnet_train.txt",
                             val="mini_domainnet_val.txt", test="mini_domainnet_test.txt",
                             seen_domain=DOMAINNET_SPLIT.seen_domain, udcdr_classes=UDCDR_CLASSES,
                             udcdr_fraction=DOMAINNET_SPLIT.udcdr_fraction),
    source="generated deterministically by sbir_bench.data.mini_domains", licence="CC0 (synthetic)",
    default_root=ensure_mini_domains, shipped_at=mini_domains_root))
