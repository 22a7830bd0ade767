"""Decoding images for embedding and training, surviving unreadable files.

A corrupt or truncated image is skipped with one warning line naming the file and counted (the count
goes into the run record); it never crashes an epoch half-way. Skips are reported through the
collate function so they are seen even when images are decoded in DataLoader worker processes.

Transparency is composited onto white before conversion to RGB: drawing apps export sketches as black
strokes on a transparent background, and a plain ``convert("RGB")`` would drop the alpha channel and
turn the whole sketch black.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..log import get_logger
from .discovery import Sample

log = get_logger(__name__)
_WARNED: Set[str] = set()
WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of ``image``; transparent pixels (RGBA, LA, palette transparency) become white paper.

    >>> to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str, warn_once: bool = True) -> Optional[Image.Image]:
    """Decode ``path`` as RGB (see :func:`to_rgb`), or None if unreadable (one warning per file).

    An image over PIL's decompression-bomb limit (about 179 megapixels, e.g. 20000 x 20000) counts as
    unreadable: no SBIR image is that large, and decoding it would take gigabytes of memory.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if warn_once and path not in _WARNED:
            _WARNED.add(path)
            log.warning(f"skipping unreadable image {path} ({type(exc).__name__})")
        return None


def transform_for(transform: Callable, sample: Sample) -> Callable:
    """The transform ``sample`` gets: ``transform``, or its choice for the sample's domain where it is
    chosen per domain (:class:`sbir_bench.models.preprocess.ByDomain`)."""
    choose = getattr(transform, "for_domain", None)
    return choose(sample.domain) if choose is not None else transform


class ImageList(Dataset):
    """Samples -> (image tensor, position in the list), or None for an unreadable file."""

    def __init__(self, samples: Sequence[Sample], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = load_rgb(self.samples[i].path)
        return None if img is None else (transform_for(self.transform, self.samples[i])(img), i)


def collate_skip(batch: List):
    """Stack the readable items; return (images, positions, n_skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([g[0] for g in good])
    positions = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, positions, skipped


MIN_CORES_FOR_WORKERS = 4
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(workers: Optional[int], n_items: int, batch_size: int) -> int:
    """Loader worker processes: ``workers`` if given, else automatic.

    Automatic: one core per local process stays with the main process (the model's forward), the
    rest decode images, at most :data:`MAX_AUTO_WORKERS`. With fewer than :data:`MIN_CORES_FOR_WORKERS`
    cores per process, or a loader of two batches or fewer, images are decoded in the main process:
    there a worker only adds start-up and inter-process copies (on 2 cores, one worker loaded at 0.63x
    the main process's rate, ``benchmarks/loader.py``).
    """
    if workers is not None:
        return workers
    if n_items <= 2 * batch_size:
        return 0
    cores = available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return 0 if cores < MIN_CORES_FOR_WORKERS else min(MAX_AUTO_WORKERS, cores - 1)


def epoch_and_index(item, epoch: int) -> Tuple[int, int]:
    """``(epoch, index)`` of a training dataset's ``item``: a sampler's pair (training/samplers.py), or a plain
    index read in the dataset's current ``epoch`` (its ``set_epoch``)."""
    return (int(item[0]), int(item[1])) if isinstance(item, tuple) else (epoch, int(item))


@contextlib.contextmanager
def seeded_augmentation(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Run the transforms of item ``index`` in ``epoch`` under torch's generator seeded from the three, then
    put the generator back: an item's augmentation is the same on resume, in any worker, on any rank."""
    state = torch.random.get_rng_state()
    torch.manual_seed(hash((seed, epoch, index)) & 0x7FFFFFFF)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def loader_generator() -> torch.Generator:
    """A private generator for a DataLoader: each ``iter(loader)`` draws its workers' base seed from it, not
    from torch's global generator, which a method's dropout, jigsaw or triplet draws read. Otherwise how
    often a loader is iterated (a validation schedule, a progress bar that opens its own iterator) would
    move those draws and change a trained model without changing its stated run. (Our datasets seed each
    item's augmentation themselves, so the base seed itself changes no value.)"""
    return torch.Generator().manual_seed(0)


def image_loader(samples: Sequence[Sample], transform: Callable, batch_size: int, workers: Optional[int] = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Ordered loader over ``samples`` for embedding (no shuffling, skip-tolerant)."""
    n_workers = resolve_workers(workers, len(samples), batch_size)
    return DataLoader(ImageList(samples, transform), batch_size=batch_size, shuffle=False, num_workers=n_workers,
                      collate_fn=collate_skip, pin_memory=pin_memory and torch.cuda.is_available(),
                      prefetch_factor=4 if n_workers else None, generator=loader_generator())
