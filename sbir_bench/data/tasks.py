"""Retrieval tasks of each evaluation setting: ZS, GZS and FG-ZS built from a dataset split.

* ``zs``  - category level: unseen-class sketches query unseen-class photos.
* ``gzs`` - category level, seen classes mixed in (``gzs_protocol``):

  - ``sem-pcyc`` (default, the literature's protocol: SEM-PCYC, Dutta & Akata CVPR'19,
    ``src/test.py``): the queries gain seen-class sketches and the gallery seen-class photos, each
    numbering ``seen_fraction`` (0.2) of the unseen test sketches / photos, drawn at random (seeded)
    from the seen classes' *training* files.
  - ``heldout`` (stricter): a ``seen_fraction`` share of every seen class's photos and sketches is
    held out of training and validation; those sketches join the queries and those photos the gallery,
    so no seen-class query or gallery photo was ever trained on.

* ``fg`` - instance level: each unseen-class sketch must retrieve the one photo it was drawn from.
* ``ucdr``, ``udcdr`` - DomainNet's universal cross-domain retrieval (multi-domain datasets only): the
  held-out domain's images query real photos of unseen (ucdr) or seen (udcdr) classes; built by
  :mod:`sbir_bench.data.domains`, which also partitions such a copy as the official code draws it.

Seen classes are partitioned once, deterministically from the seed, into training, validation and
held-out samples; the same seed always gives the same partition whatever the setting.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..log import get_logger
from .catalog import get_spec
from .discovery import DatasetIndex, Sample
from .domains import DOMAIN_SETTINGS, domain_partition, domain_task

log = get_logger(__name__)

SETTINGS = ("zs", "gzs", "fg") + DOMAIN_SETTINGS
GZS_PROTOCOLS = ("sem-pcyc", "heldout")
GALLERIES = ("unique", "published")


@dataclass
class RetrievalTask:
    """A query set, a gallery and the ground truth that links them."""

    name: str
    level: str  # "category" or "instance"
    queries: List[Sample]
    gallery: List[Sample]
    seen_classes: Tuple[int, ...] = ()  # GZS: classes trained on (their queries are the "seen" group)

    @property
    def evaluable(self) -> bool:
        """True when some query has something to retrieve (a gallery item of its class / its photo)."""
        return self.problem() is None

    def problem(self) -> Optional[str]:
        """Why this task cannot be scored (no query, no gallery, no query with a relevant item), or None."""
        if not self.queries:
            return "it has no query sketch"
        if not self.gallery:
            return "its gallery has no photo"
        if self.level == "instance" and not (self.query_to_gallery() >= 0).any():
            return "no query sketch has its photo in the gallery"
        if self.level == "category" and not np.isin(self.query_labels(), self.gallery_labels()).any():
            return "no query sketch has a photo of its class in the gallery"
        return None

    def check(self, where: str) -> None:
        """Raise a one-line :class:`DataError` if the task cannot be scored."""
        why = self.problem()
        if why:
            raise DataError(f"{where}: the {self.name} task cannot be evaluated: {why}")

    def query_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.queries], dtype=np.int64)

    def gallery_labels(self) -> np.ndarray:
        return np.array([s.label for s in self.gallery], dtype=np.int64)

    def query_seen(self) -> Optional[np.ndarray]:
        """GZS: whether each query's class was seen in training (None outside GZS)."""
        if not self.seen_classes:
            return None
        return np.isin(self.query_labels(), np.asarray(self.seen_classes, dtype=np.int64))

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
    train_sketches: List[Sample] = field(default_factory=list)
    train_photos: List[Sample] = field(default_factory=list)
    val_sketches: List[Sample] = field(default_factory=list)
    val_photos: List[Sample] = field(default_factory=list)
    heldout_photos: List[Sample] = field(default_factory=list)
    heldout_sketches: List[Sample] = field(default_factory=list)
    unseen_sketches: List[Sample] = field(default_factory=list)
    unseen_photos: List[Sample] = field(default_factory=list)
    udcdr_queries: List[Sample] = field(default_factory=list)  # multi-domain: U^d-CDR's official draws
    udcdr_gallery: List[Sample] = field(default_factory=list)
    # multi-domain: each training query domain's unseen-class images (data.query_domain)
    unseen_by_domain: Dict[str, List[Sample]] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingPartition:
    """Everything the seen-class partition, and so the training data, depends on: the one statement
    that loading (:func:`partition`) and a trained model's identity (``runner.training_identity``)
    both read, so two runs that share an identity trained on the very same samples.

    ``heldout_fraction``: the share of each seen class held out of training and validation. GZS's
    ``heldout`` protocol tests on it; it is held out whenever ``gzs_protocol`` is ``heldout``, whatever
    the setting, so a ZS run and a GZS run under that protocol train the same model (and a model
    trained on the full partition is never reused as one that held photos out, or back).
    """

    seed: int = 0
    val_fraction: float = 0.1
    heldout_fraction: float = 0.0
    max_per_class: Optional[int] = None
    instance_triplets: bool = False  # FG trains on instance triplets (a sketch and its own photo)
    held_out_domain: str = ""  # multi-domain datasets: the domain never trained on
    seen_split: str = ""  # multi-domain datasets: train+val (300 DomainNet classes) or train (245)

    def identity(self) -> Dict[str, object]:
        """The fields as a trained model's identity and its record state them: the multi-domain ones
        only where they apply, so a Sketchy model's identity is what it was before they existed."""
        out = asdict(self)
        return {k: v for k, v in out.items() if k not in ("held_out_domain", "seen_split") or v}


def training_partition(data, seed: int) -> TrainingPartition:
    """The :class:`TrainingPartition` of a run's ``data`` section (a ``config.DataConfig``) and seed.

    >>> from types import SimpleNamespace as NS
    >>> training_partition(NS(dataset="sketchy", setting="zs", gzs_protocol="heldout", gzs_seen_photo_fraction=0.2,
    ...                       val_fraction=0.1, max_per_class=None), 0).heldout_fraction
    0.2
    """
    if get_spec(data.dataset).domain_split is not None:  # the official draws: no fractions of ours apply
        return TrainingPartition(seed, 0.0, 0.0, data.max_per_class, False, data.held_out_domain, data.seen_split)
    heldout = data.gzs_seen_photo_fraction if data.gzs_protocol == "heldout" else 0.0
    return TrainingPartition(seed, data.val_fraction, heldout, data.max_per_class, data.setting == "fg")


# What one training epoch passes over (train.epoch_length): every training sketch once (ours), or as many
# triplets as the smaller of the training sketches and photos (ProS's BalancedSampler: min_domain // batch)
EPOCH_LENGTHS = ("sketches", "smallest-domain")
# What a training batch holds (train.sampler): the toolkit's triplets, or an official UCDR-line sampler's
# images (data/balanced.py)
SAMPLERS = ("triplets", "balanced", "dpk")


def epoch_triplets(rule: str, sketches: int, photos: Optional[int] = None) -> int:
    """Triplets in one epoch under ``rule`` (:data:`EPOCH_LENGTHS`), from the training sketches and photos
    (photos unknown: as many as the sketches). The trainer and the estimate both count epochs with it.

    >>> epoch_triplets("sketches", 900, 600), epoch_triplets("smallest-domain", 900, 600)
    (900, 600)
    """
    if rule == "smallest-domain":
        return min(sketches, sketches if photos is None else photos)
    if rule == "sketches":
        return sketches
    raise DataError(f"unknown epoch length {rule!r}; choose one of: {', '.join(EPOCH_LENGTHS)}")


COUNTED = ("train_sketches", "train_photos", "val_sketches", "val_photos", "heldout_sketches", "heldout_photos",
           "unseen_sketches", "unseen_photos", "udcdr_queries", "udcdr_gallery")


def _take(samples: List[Sample], fraction: float, rng: np.random.Generator) -> Tuple[List[Sample], List[Sample]]:
    """Split ``samples`` into (taken, rest) with round(fraction * n) taken, at least one if n > 1."""
    if not samples or fraction <= 0:
        return [], list(samples)
    n = len(samples)
    k = min(n - 1, max(1, int(round(fraction * n)))) if n > 1 else 0
    taken = sorted(rng.permutation(n)[:k].tolist())
    taken_set = set(taken)
    return [samples[i] for i in taken], [samples[i] for i in range(n) if i not in taken_set]


def _by_class(samples: Sequence[Sample]) -> Dict[int, List[Sample]]:
    out: Dict[int, List[Sample]] = {}
    for s in samples:
        out.setdefault(s.label, []).append(s)
    return out


def _cap(samples: List[Sample], cap: Optional[int]) -> List[Sample]:
    return samples if cap is None else samples[:cap]


def _follow_photos(where_: str, sketches: Sequence[Sample], *photo_groups: Sequence[Sample]) -> List[List[Sample]]:
    """Fine-grained: each sketch goes to the group of its photo; sketches of absent photos are dropped,
    and one warning says so, naming ``where_`` they are missing from."""
    where = {p.instance: k for k, group in enumerate(photo_groups) for p in group}
    groups: List[List[Sample]] = [[] for _ in photo_groups]
    for s in sketches:
        if s.instance in where:
            groups[where[s.instance]].append(s)
    warn_unpaired([s for s in sketches if s.instance not in where], where_)
    return groups


def warn_unpaired(dropped: Sequence[Sample], where: str) -> None:
    """One warning naming the sketches left out of ``where`` because their paired photo is missing from
    the copy: a test set that shrinks must say so (``datasets check`` lists them all)."""
    if dropped:
        shown = ", ".join(os.path.basename(s.path) for s in dropped[:3]) + (" ..." if len(dropped) > 3 else "")
        log.warning(f"{len(dropped)} sketch(es) left out of {where}: their paired photo is missing from the copy "
                    f"({shown})")


def _split_seen_class(out: SplitPartition, sketches: List[Sample], photos: List[Sample], fine: bool,
                      val_fraction: float, heldout_fraction: float, rng: np.random.Generator) -> None:
    """Partition one seen class into held-out, validation and training samples (appended to ``out``)."""
    held_ph, rest = _take(photos, heldout_fraction, rng)
    val_ph, train_ph = _take(rest, val_fraction, rng)
    if fine:
        train_sk, val_sk, held_sk = _follow_photos("the seen-class training, validation and held-out sets", sketches,
                                                   train_ph, val_ph, held_ph)
    else:
        held_sk, rest_sk = _take(sketches, heldout_fraction, rng)
        val_sk, train_sk = _take(rest_sk, val_fraction, rng)
    for name, group in (("train_photos", train_ph), ("val_photos", val_ph), ("heldout_photos", held_ph),
                        ("train_sketches", train_sk), ("val_sketches", val_sk), ("heldout_sketches", held_sk)):
        getattr(out, name).extend(group)


def partition(index: DatasetIndex, unseen: Sequence[int], spec: TrainingPartition = TrainingPartition()
              ) -> SplitPartition:
    """Deterministically partition seen-class samples as ``spec`` states; unseen classes go to test untouched.

    For fine-grained data the photo partition decides the sketches: a sketch follows its photo
    (train, val or held-out), so no training sketch's photo is ever a test or validation target.
    A multi-domain copy is partitioned by the official draws (:func:`~sbir_bench.data.domains.domain_partition`).
    """
    if index.spec.domain_split is not None:
        return domain_partition(index, index.spec, spec.held_out_domain or "sketch", spec.seen_split or "train+val",
                                spec.max_per_class)
    unseen_set = set(unseen)
    seen = [c for c in range(len(index.class_names)) if c not in unseen_set]
    sk_by, ph_by = _by_class(index.sketches), _by_class(index.photos)
    empty = [index.class_names[c] for c in range(len(index.class_names)) if not sk_by.get(c) or not ph_by.get(c)]
    if empty:
        raise DataError(f"class(es) with no sketches or no photos: {', '.join(empty[:8])}; run `sbir-bench datasets check`")
    rng = np.random.default_rng(spec.seed)
    max_per_class = spec.max_per_class
    out = SplitPartition(list(index.class_names), seen, sorted(unseen_set))
    fine = index.spec.fine_grained
    for c in seen:
        _split_seen_class(out, _cap(sk_by[c], None if fine else max_per_class), _cap(ph_by[c], max_per_class), fine,
                          spec.val_fraction, spec.heldout_fraction, rng)
    for c in out.unseen:
        photos = _cap(ph_by[c], max_per_class)
        out.unseen_photos += photos
        out.unseen_sketches += _follow_photos(f"the unseen-class test sketches ({index.class_names[c]})", sk_by[c],
                                              photos)[0] if fine else _cap(sk_by[c], max_per_class)
    out.counts = {k: len(getattr(out, k)) for k in COUNTED}
    return out


def _draw(pool: Sequence[Sample], n: int, rng: np.random.Generator) -> List[Sample]:
    """``n`` samples of ``pool`` without replacement, in pool order (SEM-PCYC: np.sort(np.random.choice))."""
    n = min(n, len(pool))
    return [pool[i] for i in np.sort(rng.choice(len(pool), n, replace=False))] if n else []


def gzs_task(part: SplitPartition, protocol: str = "sem-pcyc", seen_fraction: float = 0.2, seed: int = 0) -> RetrievalTask:
    """The GZS task of ``protocol`` (see the module docstring); seen-class queries come first."""
    if protocol == "heldout":
        extra_q, extra_g = list(part.heldout_sketches), list(part.heldout_photos)
    elif protocol == "sem-pcyc":
        rng = np.random.default_rng([seed, 2019])  # its own stream: the partition's draws stay as they are
        extra_q = _draw(part.train_sketches, int(seen_fraction * len(part.unseen_sketches)), rng)
        extra_g = _draw(part.train_photos, int(seen_fraction * len(part.unseen_photos)), rng)
    else:
        raise DataError(f"unknown GZS protocol {protocol!r}; choose one of: {', '.join(GZS_PROTOCOLS)}")
    return RetrievalTask("gzs", "category", extra_q + list(part.unseen_sketches), extra_g + list(part.unseen_photos),
                         seen_classes=tuple(part.seen))


def build_task(setting: str, part: SplitPartition, fine_grained: bool, gzs_protocol: str = "sem-pcyc",
               seen_fraction: float = 0.2, seed: int = 0,
               listed_again: Optional[Sequence[Sample]] = None, dataset=None, ucdr_gallery: str = "g0",
               udcdr_gallery: str = "official", query_domain: str = "") -> RetrievalTask:
    """The test task of ``setting`` over ``part``. ``listed_again`` (ZS only): photos the gallery lists
    a second time, to compose SAKE's / ZSE-SBIR's published lists
    (:func:`~sbir_bench.data.discovery.photos_listed_twice`); their unseen-class ones are appended.
    ``dataset`` (a ``DatasetSpec``), ``ucdr_gallery``, ``udcdr_gallery``, ``query_domain``: the multi-domain
    settings'."""
    if setting in DOMAIN_SETTINGS:
        if dataset is None or dataset.domain_split is None:
            raise DataError(f"the {setting} setting needs a multi-domain dataset (--dataset domainnet or mini-domainnet)")
        return domain_task(setting, part, dataset, ucdr_gallery, udcdr_gallery, query_domain)
    if listed_again is not None and setting != "zs":
        raise DataError("data.gallery=published composes SAKE's/ZSE-SBIR's zero-shot lists: setting zs only")
    if setting == "zs":
        unseen = set(part.unseen)
        again = [p for p in listed_again or () if p.label in unseen]
        return RetrievalTask("zs", "category", list(part.unseen_sketches), list(part.unseen_photos) + again)
    if setting == "gzs":
        return gzs_task(part, gzs_protocol, seen_fraction, seed)
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
    warn_unpaired([s for s in sketches if s.instance not in keep], f"the {name} queries")
    return RetrievalTask(name, "instance", queries, list(photos))
