"""Zero-shot splits: which classes are unseen. One class name per line, ``#`` comments allowed.

The official splits ship as package data (see the header of each file for its source); a dataset
spec may also list its unseen classes inline (the mini set) or point at its own file; a custom
split is any such file passed with ``--split-file``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import DataError
from .catalog import DatasetSpec
from .classnames import class_key


def read_class_file(text: str) -> List[str]:
    """Class names from a split/class file's text (comments and blank lines skipped)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def package_file(kind: str, filename: str) -> str:
    """Text of a bundled ``splits/`` or ``classes/`` file."""
    return resources.files("sbir_bench.data").joinpath(kind, filename).read_text()


def read_split_file(path: str | Path) -> List[str]:
    """Unseen class names of a custom split file; a missing or empty file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"split file not found: {p}")
    names = read_class_file(p.read_text())
    if not names:
        raise DataError(f"split file {p} names no class (one unseen class name per line)")
    return names


def check_split(spec: DatasetSpec, split: str) -> None:
    """Refuse a split id the dataset does not have (before anything is loaded)."""
    if split not in spec.splits:
        raise DataError(f"{spec.title} has no split {split!r}; choose one of: {', '.join(spec.splits)} "
                          f"or pass --split-file")


def split_names(spec: DatasetSpec, split: str, split_file: Optional[str] = None) -> List[str]:
    """Unseen class names for ``split`` of ``spec`` (or from ``split_file``)."""
    if split_file:
        return read_split_file(split_file)
    check_split(spec, split)
    source = spec.splits[split]
    if isinstance(source, (tuple, list)):
        return list(source)
    if Path(source).is_absolute():
        return read_split_file(source)
    return read_class_file(package_file("splits", source))


def load_split(spec: DatasetSpec, class_names: Sequence[str], split: str,
               split_file: Optional[str] = None) -> List[int]:
    """Labels (indices into ``class_names``) of the unseen classes; unknown names are an error."""
    wanted = split_names(spec, split, split_file)
    index = {class_key(c): i for i, c in enumerate(class_names)}
    missing = [w for w in wanted if class_key(w) not in index]
    if missing:
        src = split_file or f"split {split}"
        raise DataError(f"{src} names {len(missing)} class(es) absent from the dataset copy: "
                        f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    labels = sorted({index[class_key(w)] for w in wanted})
    if len(labels) == len(class_names):
        raise DataError("the split marks every class as unseen; nothing is left to train on")
    return labels
