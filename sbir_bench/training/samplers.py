"""The order a training stage reads its data in, cut into global batches and each rank's share of them.

Both samplers yield ``(epoch, index)`` pairs: the epoch travels with each index to the dataset, so
persistent loader workers (which hold their own copy of the dataset) draw the current epoch's items.
Every global batch is cut the same way on every rank (drop-last), each rank taking its contiguous share.
"""

from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np
from torch.utils.data import Sampler

from ..data.balanced import IMAGES_PER_PAIR, OfficialStream
from ..errors import ConfigError


class GlobalBatches(Sampler):
    """``steps`` global batches of ``global_batch`` items cut from :meth:`order` (one epoch's), this rank's
    share of each."""

    def __init__(self, global_batch: int, steps: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ConfigError(f"batch size {global_batch} is not divisible by the {world} DDP processes")
        self.global_batch, self.steps, self.rank, self.world = global_batch, steps, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """The indices of the current epoch, at least ``steps x global_batch`` of them."""
        raise NotImplementedError

    def data_epoch(self) -> int:
        """The epoch the dataset is told (it seeds each item's augmentation with it)."""
        return self.epoch

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        order, epoch = self.order(), self.data_epoch()
        per_rank = self.global_batch // self.world
        for s in range(self.steps):
            chunk = order[s * self.global_batch: (s + 1) * self.global_batch]
            yield from ((epoch, i) for i in chunk[self.rank * per_rank: (self.rank + 1) * per_rank].tolist())

    def __len__(self) -> int:
        return self.steps * (self.global_batch // self.world)


class EpochSampler(GlobalBatches):
    """The toolkit's triplet order: a seeded permutation of the ``n`` training sketches per epoch (repeated
    when the epoch asks for more)."""

    def __init__(self, n: int, global_batch: int, steps: int, seed: int | Tuple[int, ...], rank: int = 0,
                 world: int = 1) -> None:
        super().__init__(global_batch, steps, rank, world)
        self.n = n
        self.seed = tuple(seed) if isinstance(seed, tuple) else (seed,)  # (seed,), or (seed, stage) for later stages

    def order(self) -> np.ndarray:
        rng = np.random.default_rng([*self.seed, self.epoch])
        need = self.steps * self.global_batch
        return np.concatenate([rng.permutation(self.n) for _ in range(math.ceil(need / self.n))])[:need]


def check_stage_fits(stream: OfficialStream, batch_size: int, steps: int) -> None:
    """One line when ``steps`` batches of ``batch_size`` pairs (a ``train.steps_per_epoch``, or one batch
    larger than the epoch) ask for more images than one epoch of ``stream`` holds."""
    images = IMAGES_PER_PAIR * batch_size
    if steps * images > stream.size:
        raise ConfigError(f"{steps} step(s) of {images} images exceed the {stream.size} images of one "
                          f"train.sampler={stream.rule.name} epoch (lower train.batch_size or train.steps_per_epoch)")


class StreamSampler(GlobalBatches):
    """An official sampler's stream (``train.sampler``, :class:`~sbir_bench.data.balanced.OfficialStream`)
    cut into global batches of ``2 x batch_size`` images, drop-last (the official loader keeps a last partial
    batch); this stage's first epoch is the stream's epoch ``epochs_before`` (the earlier stages read those)."""

    def __init__(self, stream: OfficialStream, batch_size: int, steps: int, epochs_before: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        super().__init__(IMAGES_PER_PAIR * batch_size, steps, rank, world)
        check_stage_fits(stream, batch_size, steps)
        self.stream, self.epochs_before = stream, epochs_before

    def data_epoch(self) -> int:
        """The stream's epoch: an image read again in a later stage is augmented afresh."""
        return self.epochs_before + self.epoch

    def order(self) -> np.ndarray:
        return self.stream.epoch(self.data_epoch())
