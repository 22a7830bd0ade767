"""Saved embeddings (``.npz``) so any run can be re-evaluated without re-encoding an image.

Format: ``query`` (Nq x d float), ``gallery`` (Ng x d float), ground truth as ``query_labels`` +
``gallery_labels`` (int, category level) and/or ``query_to_gallery`` (int, instance level: the
gallery index of each query's photo, -1 if absent; FG runs store the labels too, for
``fg_gallery=category``); optionally ``query_seen`` (bool, GZS: the query's class was seen in
training) and ``query_paths`` / ``gallery_paths`` (the image files, for retrieval grids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write_npz
from ..log import get_logger
from .scoring import check_finite_rows

log = get_logger(__name__)


def save_embeddings(path: str | Path, query: np.ndarray, gallery: np.ndarray,
                    query_labels: Optional[np.ndarray] = None, gallery_labels: Optional[np.ndarray] = None,
                    query_to_gallery: Optional[np.ndarray] = None, query_paths: Optional[Sequence[str]] = None,
                    gallery_paths: Optional[Sequence[str]] = None, query_seen: Optional[np.ndarray] = None) -> Path:
    """Atomically write the ``.npz`` (float32 embeddings, int64 ground truth, optional extras)."""
    arrays: Dict[str, np.ndarray] = {"query": np.asarray(query, np.float32), "gallery": np.asarray(gallery, np.float32)}
    if query_to_gallery is not None:
        arrays["query_to_gallery"] = np.asarray(query_to_gallery, np.int64)
    if query_labels is not None and gallery_labels is not None:
        arrays["query_labels"] = np.asarray(query_labels, np.int64)
        arrays["gallery_labels"] = np.asarray(gallery_labels, np.int64)
    if query_seen is not None:
        arrays["query_seen"] = np.asarray(query_seen, bool)
    if query_paths is not None and gallery_paths is not None:  # unicode arrays: loadable without pickle
        arrays["query_paths"] = np.asarray(list(query_paths), dtype=str)
        arrays["gallery_paths"] = np.asarray(list(gallery_paths), dtype=str)
    return atomic_write_npz(path, **arrays)


def load_embeddings(path: str | Path) -> Dict[str, np.ndarray]:
    """Read and validate an embeddings file, with one-line errors for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"embeddings file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{p} is not a readable .npz file ({type(exc).__name__})") from None
    _validate(p, data)
    return data


def _validate(p: Path, data: Dict[str, np.ndarray]) -> None:
    for key in ("query", "gallery"):
        if key not in data or data[key].ndim != 2:
            raise DataError(f"{p}: needs a 2-D array {key!r}")
        if not np.issubdtype(data[key].dtype, np.number):
            raise DataError(f"{p}: {key!r} is not numeric")
        check_finite_rows(data[key], f"{p}: {key}")
    if data["query"].shape[1] != data["gallery"].shape[1]:
        raise DataError(f"{p}: query and gallery dimensions differ")
    instance = "query_to_gallery" in data
    category = "query_labels" in data and "gallery_labels" in data
    if not instance and not category:
        raise DataError(f"{p}: give either query_labels + gallery_labels or query_to_gallery")
    if instance and len(data["query_to_gallery"]) != len(data["query"]):
        raise DataError(f"{p}: query_to_gallery has {len(data['query_to_gallery'])} entries for {len(data['query'])} queries")
    if category and (len(data["query_labels"]) != len(data["query"]) or len(data["gallery_labels"]) != len(data["gallery"])):
        raise DataError(f"{p}: label arrays do not match the embeddings")
    if "query_seen" in data and len(data["query_seen"]) != len(data["query"]):
        raise DataError(f"{p}: query_seen has {len(data['query_seen'])} entries for {len(data['query'])} queries")


def save_per_query(path: str | Path, result) -> Path:
    """Write a run's ``per_query.npz``: each metric's per-query values (``@`` spelled ``_at_``), the
    positions of the queries they belong to (``query_index``), and ``query_index_<metric>`` for a
    metric that counts queries mAP leaves out (``no_relevant=exclude_map``)."""
    arrays = {k.replace("@", "_at_"): v for k, v in result.per_query.items()}
    arrays.update({f"query_index_{k.replace('@', '_at_')}": v for k, v in result.query_index_of.items()})
    return atomic_write_npz(path, compressed=True, query_index=result.query_index, **arrays)


def per_query_values(path: str, metric: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(query positions, per-query values of ``metric``) from a ``per_query.npz``, or None (with a
    warning if the file is unreadable) when the run did not save them."""
    if not path or not Path(path).is_file():
        return None
    key = ("AP@all" if metric == "mAP@all" else metric).replace("@", "_at_")
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files or "query_index" not in z.files:
                return None
            own = f"query_index_{key}"
            return (z[own] if own in z.files else z["query_index"]), z[key]
    except (OSError, ValueError) as exc:
        log.warning(f"per-query values {path} are unreadable ({type(exc).__name__})")
        return None
