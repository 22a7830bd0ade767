"""Image datasets for embedding and training that survive unreadable files.

A corrupt or truncated image is skipped with one warning line naming the file and counted (the count
goes into the run record); it never crashes an epoch half-way. Skips are reported through the
collate function so they are seen even when images are decoded in DataLoader worker processes.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Set

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..progress import warn
from .catalog import Sample

_WARNED: Set[str] = set()


def load_rgb(path: str, warn_once: bool = True) -> Optional[Image.Image]:
    """Decode ``path`` as RGB, or None (with one warning per file, unless ``warn_once`` is off) if unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        if warn_once and path not in _WARNED:
            _WARNED.add(path)
            warn(f"skipping unreadable image {path} ({type(exc).__name__})")
        return None


class ImageList(Dataset):
    """Samples -> (image tensor, position in the list), or None for an unreadable file."""

    def __init__(self, samples: Sequence[Sample], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = load_rgb(self.samples[i].path)
        return None if img is None else (self.transform(img), i)


def collate_skip(batch: List):
    """Stack the readable items; return (images, positions, n_skipped)."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([g[0] for g in good])
    positions = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, positions, skipped


def image_loader(samples: Sequence[Sample], transform: Callable, batch_size: int, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Ordered loader over ``samples`` for embedding (no shuffling, skip-tolerant)."""
    return DataLoader(ImageList(samples, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_skip, pin_memory=pin_memory and torch.cuda.is_available(),
                      persistent_workers=False)
