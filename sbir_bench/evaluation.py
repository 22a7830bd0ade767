"""Embed a retrieval task with a method and score it (method-agnostic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .data.catalog import Sample
from .data.images import image_loader
from .progress import progress
from .retrieval import Protocol, RetrievalResult, evaluate
from .settings import RetrievalTask


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

    def evaluate(self, protocol: Protocol, memory: str, device: Optional[torch.device] = None,
                 desc: str = "evaluating") -> RetrievalResult:
        if self.query_to_gallery is not None:
            return evaluate(self.query, self.gallery, query_to_gallery=self.query_to_gallery, protocol=protocol,
                            memory=memory, device=device, desc=desc)
        return evaluate(self.query, self.gallery, self.query_labels, self.gallery_labels, protocol=protocol,
                        memory=memory, device=device, desc=desc)


@torch.no_grad()
def embed_samples(samples: Sequence[Sample], embed: Callable[[torch.Tensor], torch.Tensor], transform: Callable,
                  device: torch.device, batch_size: int, workers: int = 0, desc: str = "embedding",
                  amp: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(embeddings of readable samples, their positions, number skipped)."""
    loader = image_loader(samples, transform, batch_size, workers, pin_memory=device.type == "cuda")
    chunks: List[np.ndarray] = []
    positions: List[np.ndarray] = []
    skipped = 0
    for images, pos, n_bad in progress(loader, desc=desc, total=len(loader), unit="batch"):
        skipped += n_bad
        if images is None:
            continue
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            out = embed(images.to(device, non_blocking=True))
        chunks.append(out.float().cpu().numpy())
        positions.append(pos.numpy())
    if not chunks:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64), skipped
    return np.concatenate(chunks), np.concatenate(positions), skipped


def embed_task(task: RetrievalTask, embed_sketch: Callable, embed_photo: Callable, transform: Callable,
               device: torch.device, batch_size: int, workers: int = 0, amp: bool = False) -> EmbeddedTask:
    """Embed queries (sketches) and gallery (photos); drop unreadable images from the ground truth."""
    q, qpos, q_bad = embed_samples(task.queries, embed_sketch, transform, device, batch_size, workers,
                                   f"{task.name}: sketches", amp)
    g, gpos, g_bad = embed_samples(task.gallery, embed_photo, transform, device, batch_size, workers,
                                   f"{task.name}: photos", amp)
    ql = task.query_labels()[qpos]
    gl = task.gallery_labels()[gpos]
    q2g = None
    if task.level == "instance":
        new_index = np.full(len(task.gallery), -1, dtype=np.int64)
        new_index[gpos] = np.arange(len(gpos))
        old = task.query_to_gallery()[qpos]
        q2g = np.where(old >= 0, new_index[np.maximum(old, 0)], -1)
    return EmbeddedTask(q, g, ql, gl, q2g, q_bad + g_bad, [task.queries[i].path for i in qpos],
                        [task.gallery[i].path for i in gpos])
