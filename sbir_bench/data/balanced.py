"""The official UCDR-line samplers as image streams: ProS's ``BalancedSampler`` and DePro's DPK.

ProS, DePro and UCDR-Adapter do not train on triplets: their loader draws *images*, a fixed number from
every training domain in turn, and their losses read each image's class and domain. ``train.sampler``
chooses between the toolkit's triplets (``triplets``) and these streams:

- ``balanced`` (ProS's ``BalancedSampler``, which DePro without ``--triplet`` and UCDR-Adapter reuse):
  Python's ``random`` seeded with 0 shuffles each domain's image list once, in domain order; each block
  then takes ``batch // domains`` consecutive images of every domain in turn.
- ``dpk`` (DePro's ``MoreMoreBalancedSampler``): each block takes, for every domain in turn, 3 classes in
  sorted class order (never shuffled, so every domain shows the same classes) and 4 images of each; each
  (domain, class) list is shuffled once under the same seed.

Both keep their position across epochs and stages (stage 2 continues where stage 1 stopped), wrap a list
by doubling it (a take near a list's end is cut at the doubled length, as theirs), and make an epoch of
``smallest domain // images per domain per block`` blocks. The loader cuts that stream into batches of
``train.batch_size`` images: DePro's 60 on a two-domain dataset holds 2.5 blocks of 24, its boundaries
drifting. ``train.batch_size`` counts sketch-photo pairs under every sampler: a batch holds twice as many
images (the official ``-bs 50`` is ``batch_size: 25``; ProS's stage-1 loader of 400 images is
``units_batch_size: 200``), so a step costs what a triplet step of the same size costs these methods,
whose losses read the sketches and the positive photos. Given the same image list, :class:`OfficialStream` yields the indices theirs yields
(``tests/test_balanced_sampler.py`` holds it to a stream recorded from their code).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .discovery import Sample
from .images import epoch_and_index, load_rgb, seeded_augmentation, transform_for

IMAGES_PER_PAIR = 2  # train.batch_size counts pairs: an official sampler's batch holds twice as many images
DPK_CLASSES, DPK_PER_CLASS = 3, 4  # DePro's P classes x K images per domain and block
PHOTO_DOMAIN, SKETCH_DOMAIN = 0, 1  # a photo/sketch dataset's domain dictionary (sorted folder names)


class _Doubling:
    """A shuffled list the official code lengthens by appending it to itself when a take passes its end:
    element ``p`` is ``order[p % len(order)]``, and a take is cut at the current (doubled) length, which
    happens only when a take is longer than twice the list (DPK's four images of a class of one).
    (BalancedSampler also doubles when a take ends exactly at the end; its takes are never longer than a
    domain's list, so that changes no index.)"""

    def __init__(self, order: List[int]) -> None:
        self.order, self.length, self.position = order, len(order), 0

    def take(self, n: int) -> List[int]:
        end = self.position + n
        if end > self.length:
            self.length *= 2
        cut = min(end, self.length)
        out = [self.order[p % len(self.order)] for p in range(self.position, cut)]
        self.position = end
        return out


@dataclass(frozen=True)
class StreamRule:
    """Which stream and its block: ``per_domain`` images of each domain per block (balanced), or
    :data:`DPK_CLASSES` x :data:`DPK_PER_CLASS` (dpk)."""

    name: str
    per_domain: int

    @classmethod
    def of(cls, sampler: str, batch_size: int, n_domains: int) -> "StreamRule":
        """The rule of ``train.sampler`` with ``train.batch_size`` pairs (the run's, not a first stage's: the
        official sampler is built once, from the run's batch) over ``n_domains`` training domains."""
        if sampler == "dpk":
            return cls("dpk", DPK_CLASSES * DPK_PER_CLASS)
        per_domain = IMAGES_PER_PAIR * batch_size // n_domains  # its batch // domains: a remainder drifts batches
        if per_domain < 1:
            raise ConfigError(f"train.sampler=balanced takes 2 x batch_size // domains images of each of the "
                              f"{n_domains} domains per block; train.batch_size={batch_size} gives none")
        return cls("balanced", per_domain)


def training_images(sketches: Sequence[Sample], photos: Sequence[Sample],
                    seen: Sequence[int]) -> Tuple[List[Tuple[Sample, bool]], List[int]]:
    """The seen-class training images (sketches, then photos, each as listed, with whether it is a photo) and
    each one's domain in the official dictionary: the sorted names of a multi-domain dataset's training
    domains, else photo 0 and sketch 1."""
    keep = set(seen)
    samples = [(s, False) for s in sketches if s.label in keep] + [(p, True) for p in photos if p.label in keep]
    names = sorted({s.domain for s, _ in samples})
    if len(names) > 1:
        index = {n: i for i, n in enumerate(names)}
        return samples, [index[s.domain] for s, _ in samples]
    return samples, [PHOTO_DOMAIN if photo else SKETCH_DOMAIN for _, photo in samples]


def domain_sizes(domain_ids: Sequence[int]) -> List[int]:
    """Images per domain id, in id order.

    >>> domain_sizes([1, 0, 1, 1])
    [1, 3]
    """
    return np.bincount(np.asarray(domain_ids, dtype=np.int64)).tolist() if len(domain_ids) else []


def stream_steps(sampler: str, run_batch: int, batch: int, sizes: Sequence[int]) -> int:
    """Steps of ``batch`` pairs in one epoch of the stream that ``run_batch`` pairs define over domains of
    ``sizes`` images (a first stage reads the run's stream in its own batches).

    >>> stream_steps("balanced", 25, 200, [67304, 60725])  # ProS's stage 1 on Sketchy: 303 (its loader: 304)
    303
    """
    return stream_batches(stream_epoch_size(StreamRule.of(sampler, run_batch, len(sizes)), sizes), batch)


def stream_batches(epoch_images: int, batch: int) -> int:
    """Whole batches of ``batch`` pairs in a stream epoch of ``epoch_images`` (its last partial batch dropped;
    at least one, which :func:`~sbir_bench.training.samplers.check_stage_fits` then refuses if too large)."""
    return max(1, epoch_images // (IMAGES_PER_PAIR * batch))


def stream_epoch_size(rule: StreamRule, domain_sizes: Sequence[int]) -> int:
    """Images in one epoch of the stream: ``smallest domain // per_domain`` blocks of every domain.

    >>> stream_epoch_size(StreamRule("balanced", 25), [60725, 67304])  # Sketchy's training sketches, photos
    121450
    """
    return (min(domain_sizes) // rule.per_domain) * rule.per_domain * len(domain_sizes) if domain_sizes else 0


class OfficialStream:
    """The index stream of the official sampler over images with ``domain_ids`` (0..D-1) and ``class_ids``.

    :meth:`epoch` ``e`` is the stream's ``e``-th epoch, the position carried over from the epochs before
    (recomputed from the start when asked for an earlier one: a resumed run gets the same indices).
    """

    def __init__(self, rule: StreamRule, domain_ids: Sequence[int], class_ids: Sequence[int]) -> None:
        self.rule = rule
        self.domain_ids, self.class_ids = [int(d) for d in domain_ids], [int(c) for c in class_ids]
        self.n_domains = max(self.domain_ids, default=-1) + 1
        sizes = domain_sizes(self.domain_ids)
        if not sizes or min(sizes) < rule.per_domain:
            raise DataError(f"train.sampler={rule.name}: each of the {self.n_domains} training domains needs at least "
                            f"{rule.per_domain} images for one block; their sizes are {sizes}")
        if rule.name == "dpk":
            few = [d for d in range(self.n_domains) if len(self._classes_of(d)) < DPK_CLASSES]
            if few:
                raise DataError(f"train.sampler=dpk takes {DPK_CLASSES} classes per domain and block; training "
                                f"domain(s) {few} have fewer")
        self.sizes = sizes
        self.blocks = min(sizes) // rule.per_domain
        self.size = stream_epoch_size(rule, sizes)
        self._reset()

    def check_whole_epochs(self) -> None:
        """Refuse, in one line, an image list on which the official DPK cuts takes short: a class with one
        image in a domain (its doubled list of two cannot give four), which makes its epochs vary in length
        where a training run's steps per epoch are fixed in advance. Balanced blocks are never cut."""
        if self.rule.name != "dpk":
            return
        counts: Dict[Tuple[int, int], int] = {}
        for d, c in zip(self.domain_ids, self.class_ids):
            counts[d, c] = counts.get((d, c), 0) + 1
        single = sorted(key for key, n in counts.items() if 2 * n < DPK_PER_CLASS)
        if single:
            raise DataError(f"train.sampler=dpk takes {DPK_PER_CLASS} images of a class per domain; (domain, class) "
                            f"{single[:5]} have a single training image, on which its sampler cuts blocks short "
                            f"(use train.sampler=balanced or triplets)")

    def _classes_of(self, domain: int) -> List[int]:
        return sorted({c for d, c in zip(self.domain_ids, self.class_ids) if d == domain})

    def _reset(self) -> None:
        rng = random.Random(0)  # the official random.seed(0) before its shuffles
        self._next_epoch = 0
        if self.rule.name == "balanced":
            lists = [[i for i, d in enumerate(self.domain_ids) if d == domain] for domain in range(self.n_domains)]
            for order in lists:
                rng.shuffle(order)
            self._domains = [_Doubling(order) for order in lists]
            return
        by_domain: Dict[int, Dict[int, List[int]]] = {}  # insertion order: first appearance, as its dicts
        for i, (d, c) in enumerate(zip(self.domain_ids, self.class_ids)):
            by_domain.setdefault(d, {}).setdefault(c, []).append(i)
        for classes in by_domain.values():
            for order in classes.values():
                rng.shuffle(order)
        self._classes = [_Doubling(self._classes_of(d)) for d in range(self.n_domains)]
        self._samples = {(d, c): _Doubling(order)
                         for d, classes in by_domain.items() for c, order in classes.items()}

    def _block(self, domain: int) -> List[int]:
        if self.rule.name == "balanced":
            return self._domains[domain].take(self.rule.per_domain)
        return [i for c in self._classes[domain].take(DPK_CLASSES) for i in self._samples[domain, c].take(DPK_PER_CLASS)]

    def epoch(self, e: int) -> np.ndarray:
        """The indices of the stream's epoch ``e`` (0-based, counted over every stage)."""
        if e < self._next_epoch:
            self._reset()
        out: List[int] = []
        while self._next_epoch <= e:
            out = [i for _ in range(self.blocks) for d in range(self.n_domains) for i in self._block(d)]
            self._next_epoch += 1
        return np.asarray(out, dtype=np.int64)


@dataclass
class ImageBatch:
    """One batch of an official sampler: images with their class and their domain (the official domain
    dictionary's index: sorted training-domain names; photo 0 and sketch 1 on a photo/sketch dataset)."""

    images: torch.Tensor
    label: torch.Tensor
    domain: torch.Tensor
    features: bool = False  # always images: these methods train their image tower

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ImageBatch":
        return ImageBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.images, self.label, self.domain)))


class DomainImages(Dataset):
    """The seen-class training images of every domain, one item per image, for an official sampler.

    The order is the training sketches (query domains) then the photos, each as listed; ``stream`` is the
    run's :class:`OfficialStream`, built from ``train.batch_size`` (the official sampler is built once, from
    the run's batch, and every stage reads it: ProS's stage 1 takes 400 of its images at a time).
    """

    in_memory = False
    items_per_pair = IMAGES_PER_PAIR  # loader items per unit of train.batch_size (a triplet dataset: 1)

    def __init__(self, sketches: Sequence[Sample], photos: Sequence[Sample], seen: Sequence[int], transform: Callable,
                 sampler: str, batch_size: int, seed: int = 0, sketch_transform: Optional[Callable] = None) -> None:
        self.seen_index = {c: i for i, c in enumerate(seen)}
        self.samples, self.domain_ids = training_images(sketches, photos, seen)
        self.class_ids = [self.seen_index[s.label] for s, _ in self.samples]
        n_domains = max(self.domain_ids, default=-1) + 1
        self.stream = OfficialStream(StreamRule.of(sampler, batch_size, n_domains), self.domain_ids, self.class_ids)
        self.stream.check_whole_epochs()
        self.transform, self.sketch_transform = transform, sketch_transform or transform
        self.seed, self.epoch, self.skipped = seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        epoch, index = epoch_and_index(item, self.epoch)
        sample, photo = self.samples[index]
        image = load_rgb(sample.path)
        if image is None:
            return None
        with seeded_augmentation(self.seed, epoch, index):
            tensor = (self.transform if photo else transform_for(self.sketch_transform, sample))(image)
        return tensor, self.class_ids[index], self.domain_ids[index]

    @staticmethod
    def collate(batch: List):
        """Stack the readable images into an :class:`ImageBatch`; return (batch or None, n_skipped)."""
        good = [b for b in batch if b is not None]
        if not good:
            return None, len(batch)
        images, labels, domains = zip(*good)
        return ImageBatch(torch.stack(images), torch.tensor(labels), torch.tensor(domains)), len(batch) - len(good)
