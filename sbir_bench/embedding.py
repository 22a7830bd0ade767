"""Embedding a retrieval task's images with a method (method-agnostic), ready to be scored.

* Under ``torchrun`` each rank embeds a contiguous shard of the images (no padding, so no image is
  embedded or counted twice) and rank 0 gathers them; only rank 0 scores.
* Methods that see images only through the frozen backbone (``uses_frozen_features``) take their
  features from the disk cache (:mod:`.feature_cache`) when it is enabled; the rest of the method
  (a projection, class-probability fusion) runs on the cached features.
* Unreadable images are skipped, counted, and dropped from the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .data.discovery import Sample
from .data.images import image_loader
from .data.tasks import RetrievalTask
from .log import progress
from .precision import FP32, Precision
from .ranks import world
from .training import distributed as dist_utils

Embedded = Tuple[np.ndarray, np.ndarray, int]  # features of readable samples, their positions, n skipped


@dataclass
class EmbeddedTask:
    """Embeddings of a task's readable images plus the ground truth restricted to them."""

    query: np.ndarray
    gallery: np.ndarray
    query_labels: np.ndarray
    gallery_labels: np.ndarray
    query_to_gallery: Optional[np.ndarray]
    skipped: int
    query_paths: List[str]
    gallery_paths: List[str]
    query_seen: Optional[np.ndarray] = None

    def arrays(self) -> tuple:
        """(query, gallery, query_labels, gallery_labels, query_to_gallery) for the engine."""
        return self.query, self.gallery, self.query_labels, self.gallery_labels, self.query_to_gallery


@torch.no_grad()
def embed_samples(samples: Sequence[Sample], embed: Callable[[torch.Tensor], torch.Tensor], transform: Callable,
                  device: torch.device, batch_size: int, workers: Optional[int] = 0, desc: str = "embedding",
                  precision: Precision = FP32) -> Embedded:
    """(embeddings of the readable samples, their positions, number skipped), on this process."""
    loader = image_loader(samples, transform, batch_size, workers, pin_memory=device.type == "cuda")
    chunks: List[np.ndarray] = []
    positions: List[np.ndarray] = []
    skipped = 0
    for images, pos, n_bad in progress(loader, desc=desc, total=len(loader), unit="batch"):
        skipped += n_bad
        if images is None:
            continue
        with precision.autocast(device.type):
            out = embed(images.to(device, non_blocking=True))
        chunks.append(out.float().cpu().numpy())
        positions.append(pos.numpy())
    if not chunks:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64), skipped
    return np.concatenate(chunks), np.concatenate(positions), skipped


def shard_bounds(n: int, rank: int, world: int) -> Tuple[int, int]:
    """[start, stop) of this rank's contiguous shard of ``n`` items (sizes differ by at most one).

    >>> [shard_bounds(5, r, 2) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def sharded(embed_fn: Callable[[Sequence[Sample]], Embedded], samples: Sequence[Sample]) -> Optional[Embedded]:
    """Run ``embed_fn`` on this rank's shard and gather the shards on rank 0 (None on other ranks)."""
    rank, n_ranks = world()
    if n_ranks == 1 or not dist_utils.is_initialized():
        return embed_fn(samples)
    start, stop = shard_bounds(len(samples), rank, n_ranks)
    feats, pos, skipped = embed_fn(samples[start:stop])
    parts = dist_utils.gather_to_main((feats, pos + start, skipped))
    if parts is None:
        return None
    parts = [p for p in parts if len(p[1])] or parts[:1]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            sum(p[2] for p in parts))


def _modality_embedder(method, modality: str, transform: Callable, device: torch.device, batch_size: int,
                       workers: Optional[int], precision: Precision, cache) -> Callable[[Sequence[Sample]], Embedded]:
    """How to embed one modality's samples: through the feature cache, or straight through the method."""
    desc = "sketches" if modality == "sketch" else "photos"
    if cache is None or not getattr(method, "uses_frozen_features", False):
        embed = method.embed_sketches if modality == "sketch" else method.embed_photos
        return lambda s: embed_samples(s, embed, transform, device, batch_size, workers, desc, precision)

    def through_cache(samples: Sequence[Sample]) -> Embedded:
        feats, pos, skipped = cache.features(samples, lambda todo: embed_samples(
            todo, method.frozen_image_features, transform, device, batch_size, workers, desc, precision))
        return method.embed_cached(feats, modality, batch_size), pos, skipped
    return through_cache


def embed_task(task: RetrievalTask, method, transform: Callable, device: torch.device, batch_size: int,
               workers: Optional[int] = 0, precision: Precision = FP32, cache=None,
               sketch_transform: Optional[Callable] = None) -> Optional[EmbeddedTask]:
    """Embed queries (sketches) and gallery (photos); drop unreadable images from the ground truth.

    ``cache`` is an open :class:`~sbir_bench.feature_cache.FeatureCache` (or None); ``sketch_transform``
    the sketches' own transform (default ``transform``). Returns None on DDP ranks other than 0 (they
    only embed their shard).
    """
    fc = cache
    sketch_tf = sketch_transform or transform
    sketches = sharded(_modality_embedder(method, "sketch", sketch_tf, device, batch_size, workers, precision, fc),
                       task.queries)
    photos = sharded(_modality_embedder(method, "photo", transform, device, batch_size, workers, precision, fc), task.gallery)
    if sketches is None or photos is None:
        return None
    return _with_ground_truth(task, sketches, photos)


def _with_ground_truth(task: RetrievalTask, sketches: Embedded, photos: Embedded) -> EmbeddedTask:
    (q, qpos, q_bad), (g, gpos, g_bad) = sketches, photos
    ql, gl = task.query_labels()[qpos], task.gallery_labels()[gpos]
    q2g = None
    if task.level == "instance":
        new_index = np.full(len(task.gallery), -1, dtype=np.int64)
        new_index[gpos] = np.arange(len(gpos))
        old = task.query_to_gallery()[qpos]
        q2g = np.where(old >= 0, new_index[np.maximum(old, 0)], -1)
    seen = task.query_seen()
    return EmbeddedTask(q, g, ql, gl, q2g, q_bad + g_bad, [task.queries[i].path for i in qpos],
                        [task.gallery[i].path for i in gpos], None if seen is None else seen[qpos])
