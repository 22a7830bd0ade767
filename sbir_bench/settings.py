"""Evaluation settings as first-class objects: ZS, GZS and FG-ZS built from a dataset split.

* ``zs``  - category level: unseen-class sketches vs unseen-class photos.
* ``gzs`` - category level: unseen-class sketches vs unseen photos *plus* a held-out share of every
  seen class's photos (``gzs_seen_photo_fraction``, default 0.2, never used for training).
* ``fg``  - instance level: each unseen-class sketch must retrieve the one photo it was drawn from.

Seen classes are split once, deterministically from the seed, into training, validation and (for
GZS) held-out gallery photos, so the same seed always gives the same partition whatever the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data.catalog import DatasetIndex, Sample
from .errors import DataError

SETTINGS = ("zs", "gzs", "fg")


@dataclass
class RetrievalTask:
    """A query set, a gallery and the ground truth that links them."""

    name: str
    level: str  # "category" or "instance"
    queries: List[Sample]
    gallery: List[Sample]

    @property
    def evaluable(self) -> bool:
        """True when there is something to retrieve with and from."""
        return bool(self.queries) and bool(self.gallery)

    def query_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.queries], dtype=np.int64)

    def gallery_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.gallery], dtype=np.int64)

    def query_to_gallery(self) -> np.ndarray:
        """Index of each query's true photo in the gallery (-1 if absent): instance level only."""
        pos = {s.instance: i for i, s in enumerate(self.gallery)}
        return np.array([pos.get(s.instance, -1) for s in self.queries], dtype=np.int64)


@dataclass
class SplitPartition:
    """Seen/unseen classes and the seen-class sample partition used for training and validation."""

    class_names: List[str]
    seen: List[int]
    unseen: List[int]
    train_sketches: List[Sample]
    train_photos: List[Sample]
    val_sketches: List[Sample]
    val_photos: List[Sample]
    heldout_photos: List[Sample]
    unseen_sketches: List[Sample]
    unseen_photos: List[Sample]
    counts: Dict[str, int] = field(default_factory=dict)


def _take(samples: List[Sample], fraction: float, rng: np.random.Generator) -> tuple[List[Sample], List[Sample]]:
    """Split ``samples`` into (taken, rest) with round(fraction * n) taken, at least one if n > 1."""
    if not samples or fraction <= 0:
        return [], list(samples)
    n = len(samples)
    k = min(n - 1, max(1, int(round(fraction * n)))) if n > 1 else 0
    order = rng.permutation(n)
    taken = sorted(order[:k].tolist())
    taken_set = set(taken)
    return [samples[i] for i in taken], [samples[i] for i in range(n) if i not in taken_set]


def _by_class(samples: Sequence[Sample]) -> Dict[int, List[Sample]]:
    out: Dict[int, List[Sample]] = {}
    for s in samples:
        out.setdefault(s.label, []).append(s)
    return out


def _cap(samples: List[Sample], cap: Optional[int]) -> List[Sample]:
    return samples if cap is None else samples[:cap]


def partition(index: DatasetIndex, unseen: Sequence[int], seed: int = 0, val_fraction: float = 0.1,
              heldout_fraction: float = 0.2, max_per_class: Optional[int] = None) -> SplitPartition:
    """Deterministically partition seen-class samples; unseen classes go to test untouched.

    For fine-grained data the photo partition decides the sketches: a sketch follows its photo
    (train, val or held-out), so no training sketch's photo is ever a test or validation target.
    """
    unseen_set = set(unseen)
    seen = [c for c in range(len(index.class_names)) if c not in unseen_set]
    sk_by, ph_by = _by_class(index.sketches), _by_class(index.photos)
    empty = [index.class_names[c] for c in range(len(index.class_names)) if not sk_by.get(c) or not ph_by.get(c)]
    if empty:
        raise DataError(f"class(es) with no sketches or no photos: {', '.join(empty[:8])}; run `sbir-bench datasets check`")
    rng = np.random.default_rng(seed)
    out = SplitPartition(list(index.class_names), seen, sorted(unseen_set), [], [], [], [], [], [], [])
    fine = index.spec.fine_grained
    for c in seen:
        photos = _cap(ph_by[c], max_per_class)
        held, rest = _take(photos, heldout_fraction, rng)
        val_ph, train_ph = _take(rest, val_fraction, rng)
        sketches = _cap(sk_by[c], None if fine else max_per_class)
        if fine:
            where = {p.instance: k for k, group in enumerate((train_ph, val_ph, held)) for p in group}
            groups: List[List[Sample]] = [[], [], []]
            for s in sketches:
                if s.instance in where:
                    groups[where[s.instance]].append(s)
            train_sk, val_sk = groups[0], groups[1]
        else:
            val_sk, train_sk = _take(sketches, val_fraction, rng)
        out.train_photos += train_ph
        out.val_photos += val_ph
        out.heldout_photos += held
        out.train_sketches += train_sk
        out.val_sketches += val_sk
    for c in out.unseen:
        photos = _cap(ph_by[c], max_per_class)
        out.unseen_photos += photos
        if fine:
            keep = {p.instance for p in photos}
            out.unseen_sketches += [s for s in sk_by[c] if s.instance in keep]
        else:
            out.unseen_sketches += _cap(sk_by[c], max_per_class)
    out.counts = {k: len(getattr(out, k)) for k in ("train_sketches", "train_photos", "val_sketches", "val_photos",
                                                      "heldout_photos", "unseen_sketches", "unseen_photos")}
    return out


def build_task(setting: str, part: SplitPartition, fine_grained: bool) -> RetrievalTask:
    """The test task of ``setting`` over ``part``."""
    if setting == "zs":
        return RetrievalTask("zs", "category", list(part.unseen_sketches), list(part.unseen_photos))
    if setting == "gzs":
        return RetrievalTask("gzs", "category", list(part.unseen_sketches), list(part.unseen_photos) + list(part.heldout_photos))
    if setting == "fg":
        if not fine_grained:
            raise DataError("the fg setting needs sketch-photo instance pairs: use --dataset sketchy-fg (or mini)")
        return _instance_task("fg", part.unseen_sketches, part.unseen_photos)
    raise DataError(f"unknown setting {setting!r}; choose one of: {', '.join(SETTINGS)}")


def build_val_task(setting: str, part: SplitPartition, fine_grained: bool) -> RetrievalTask:
    """Seen-class validation task matching ``setting``'s level (used for model selection and tests)."""
    if setting == "fg" and fine_grained:
        return _instance_task("val-fg", part.val_sketches, part.val_photos)
    return RetrievalTask("val", "category", list(part.val_sketches), list(part.val_photos))


def _instance_task(name: str, sketches: Sequence[Sample], photos: Sequence[Sample]) -> RetrievalTask:
    keep = {p.instance for p in photos}
    queries = [s for s in sketches if s.instance in keep]
    return RetrievalTask(name, "instance", queries, list(photos))
