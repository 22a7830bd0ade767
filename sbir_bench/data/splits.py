"""Zero-shot split files: one unseen class name per line, ``#`` comments allowed.

The official splits ship as package data (see the header of each file for its source); a custom
split is any such file passed with ``--split-file``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import DataError
from .catalog import DatasetSpec, normalise_class


def read_class_file(text: str) -> List[str]:
    """Class names from a split/class file's text (comments and blank lines skipped)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def package_file(kind: str, filename: str) -> str:
    """Text of a bundled ``splits/`` or ``classes/`` file."""
    return resources.files("sbir_bench.data").joinpath(kind, filename).read_text()


def split_names(spec: DatasetSpec, split: str, split_file: Optional[str] = None) -> List[str]:
    """Unseen class names for ``split`` of ``spec`` (or from ``split_file``)."""
    if split_file:
        path = Path(split_file)
        if not path.is_file():
            raise DataError(f"split file not found: {path}")
        return read_class_file(path.read_text())
    if spec.name == "mini":
        from .mini import MINI_UNSEEN
        return list(MINI_UNSEEN)
    if split not in spec.splits:
        raise DataError(f"{spec.title} has no split {split!r}; choose one of: {', '.join(spec.splits)} or pass --split-file")
    return read_class_file(package_file("splits", spec.splits[split]))


def load_split(spec: DatasetSpec, class_names: Sequence[str], split: str,
               split_file: Optional[str] = None) -> List[int]:
    """Labels (indices into ``class_names``) of the unseen classes; unknown names are an error."""
    wanted = split_names(spec, split, split_file)
    index = {normalise_class(c): i for i, c in enumerate(class_names)}
    missing = [w for w in wanted if normalise_class(w) not in index]
    if missing:
        src = split_file or f"split {split}"
        raise DataError(f"{src} names {len(missing)} class(es) absent from the dataset copy: "
                        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    labels = sorted({index[normalise_class(w)] for w in wanted})
    if len(labels) == len(class_names):
        raise DataError("the split marks every class as unseen; nothing is left to train on")
    return labels
