"""Seeded triplet sampling for training: (anchor sketch, positive photo, negative photo).

Category level: the positive is a random photo of the sketch's class, the negative a random photo of
another seen class. Instance level (FG): the positive is the sketch's own photo and the negative a
different photo of the *same* class (the hard, fine-grained case).

Every choice is drawn from ``np.random.default_rng([seed, epoch, index])``, so a sample is the same
whichever worker process or DDP rank loads it and whether or not training was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .discovery import Sample
from .images import epoch_and_index, load_rgb, seeded_augmentation, transform_for


@dataclass
class TripletBatch:
    """One training batch: anchor sketches with a positive and a negative photo each."""

    sketch: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    label: torch.Tensor  # class of sketch and positive (index into the seen-class list)
    negative_label: torch.Tensor  # class of the negative photo (same list)
    features: bool = False  # True: the three tensors are cached frozen features (N x D), not images
    # each anchor's and each positive photo's domain, as an index into the sorted names of the training
    # domains (the official code's domain dictionary; DomainNet: the four query domains and real); a sketch
    # dataset has one name (""), so both are 0 there. None: not known (a method then assumes sketch / photo)
    domain: Optional[torch.Tensor] = None
    positive_domain: Optional[torch.Tensor] = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TripletBatch":
        tensors = (self.sketch, self.positive, self.negative, self.label, self.negative_label)
        domains = [None if d is None else d.to(device, non_blocking=non_blocking)
                   for d in (self.domain, self.positive_domain)]
        return TripletBatch(*(t.to(device, non_blocking=non_blocking) for t in tensors), features=self.features,
                            domain=domains[0], positive_domain=domains[1])


class TripletDataset(Dataset):
    """Triplets over the training sketches; labels are re-indexed into the seen-class list."""

    in_memory = False  # images are decoded: the loader may use worker processes

    def __init__(self, sketches: Sequence[Sample], photos: Sequence[Sample], seen: Sequence[int],
                 transform: Callable, seed: int = 0, fine_grained: bool = False,
                 sketch_transform: Optional[Callable] = None) -> None:
        self.seen_index = {c: i for i, c in enumerate(seen)}
        self.sketches = [s for s in sketches if s.label in self.seen_index]
        self.photos_by_class: Dict[int, List[Sample]] = {}
        for p in photos:
            if p.label in self.seen_index:
                self.photos_by_class.setdefault(p.label, []).append(p)
        self.photo_by_instance = {p.instance: p for p in photos if p.instance}
        names = {s.domain for s in self.sketches} | {p.domain for p in photos if p.label in self.seen_index}
        self.domain_index = {d: i for i, d in enumerate(sorted(names))}  # the official dictionary's order
        self.classes = sorted(self.photos_by_class)
        self.transform = transform
        self.sketch_transform = sketch_transform or transform  # the sketches' own (ProS inverts some)
        self.seed = seed
        self.epoch = 0
        self.fine_grained = fine_grained
        self.skipped = 0
        if fine_grained:
            self.sketches = [s for s in self.sketches if s.instance in self.photo_by_instance]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def n_photos(self) -> int:
        """Training photos of the seen classes (``train.epoch_length: smallest-domain`` counts them)."""
        return sum(len(group) for group in self.photos_by_class.values())

    def __len__(self) -> int:
        return len(self.sketches)

    def choose(self, item) -> tuple[Sample, Sample, Sample]:
        """The (sketch, positive, negative) samples of ``item`` (index, or (epoch, index))."""
        epoch, index = epoch_and_index(item, self.epoch)
        rng = np.random.default_rng([self.seed, epoch, index])
        sketch = self.sketches[index]
        same = self.photos_by_class[sketch.label]
        if self.fine_grained:
            positive = self.photo_by_instance[sketch.instance]
            others = [p for p in same if p.instance != sketch.instance] or same
            negative = others[int(rng.integers(len(others)))]
        else:
            positive = same[int(rng.integers(len(same)))]
            other_classes = [c for c in self.classes if c != sketch.label] or self.classes
            neg_class = other_classes[int(rng.integers(len(other_classes)))]
            pool = self.photos_by_class[neg_class]
            negative = pool[int(rng.integers(len(pool)))]
        return sketch, positive, negative

    def __getitem__(self, item):
        samples = self.choose(item)
        images = [load_rgb(s.path) for s in samples]
        if any(im is None for im in images):
            return None
        with seeded_augmentation(self.seed, *epoch_and_index(item, self.epoch)):
            tensors = [transform_for(self.sketch_transform, samples[0])(images[0]),
                       *(self.transform(im) for im in images[1:])]
        return (*tensors, *self.labels_of(samples))

    def labels_of(self, samples) -> tuple:
        """(anchor class, negative class, anchor domain, positive domain) of a chosen triplet, as indices."""
        return (self.seen_index[samples[0].label], self.seen_index[samples[2].label],
                self.domain_index[samples[0].domain], self.domain_index[samples[1].domain])


class FeatureTriplets(TripletDataset):
    """The same triplets as :class:`TripletDataset`, as rows of precomputed frozen features.

    No augmentation (CLIP's own linear-probe protocol trains on features of the unaugmented images),
    no decoding: an epoch costs a few table lookups. Images whose features are absent (unreadable)
    make their triplet skipped, like an unreadable image does.
    """

    in_memory = True  # nothing to decode: no worker processes

    def __init__(self, sketches: Sequence[Sample], photos: Sequence[Sample], seen: Sequence[int],
                 features: Dict[str, np.ndarray], seed: int = 0, fine_grained: bool = False) -> None:
        super().__init__(sketches, photos, seen, transform=None, seed=seed, fine_grained=fine_grained)
        self.features = features

    def __getitem__(self, item):
        samples = self.choose(item)
        if any(s.path not in self.features for s in samples):
            return None
        tensors = [torch.from_numpy(np.asarray(self.features[s.path], np.float32)) for s in samples]
        return (*tensors, *self.labels_of(samples))

    @staticmethod
    def collate(batch: List):
        """Stack readable feature triplets into a :class:`TripletBatch` with ``features=True``."""
        out, skipped = collate_triplets(batch)
        if out is not None:
            out.features = True
        return out, skipped


def collate_triplets(batch: List):
    """Stack readable triplets; return (TripletBatch or None, n_skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, skipped
    sk, pos, neg, y, yn, dom, pos_dom = zip(*good)
    return TripletBatch(torch.stack(sk), torch.stack(pos), torch.stack(neg), torch.tensor(y), torch.tensor(yn),
                        domain=torch.tensor(dom), positive_domain=torch.tensor(pos_dom)), skipped
