"""Scores, in one place: normalisation, score blocks and the block size that fits in memory.

Every consumer of cosine similarity (the exact engine, the faiss backend, PR curves and retrieval
grids) normalises with :func:`unit_rows`, so a zero vector or a float16 embedding is handled the
same way everywhere. The ``euclidean`` similarity (ProS's protocol) scores minus the squared distance
of the embeddings as they are.

>>> import numpy as np
>>> [[round(float(s), 2) for s in row] for row in cosine_scores(np.array([[3.0, 4.0]]), np.eye(2))]
[[0.6, 0.8]]
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import DataError, SbirError
from ..gpus import SCORING_SHARE, parse_memory, usable

EPS = 1e-12
BYTES_PER_SCORE = 13  # score row + sorted copy + comparison masks, float32
MAX_BLOCK = 512


def unit_rows(x: np.ndarray | torch.Tensor, device: Optional[torch.device | str] = None) -> torch.Tensor:
    """float32 rows scaled to unit L2 norm (a zero row stays zero), on ``device``."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    t = t.to(device=device or t.device, dtype=torch.float32)
    if t.dim() != 2:
        raise SbirError(f"embeddings must be 2-D (N x d), got shape {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=1, eps=EPS)


def check_finite_rows(x: np.ndarray | torch.Tensor, what: str) -> None:
    """A one-line :class:`DataError` naming the first row of ``x`` that holds NaN or infinity.

    Every path to a score (a run's embeddings, an embeddings file, a score matrix) passes this check
    in :class:`ScoreSource`: a NaN ranks arbitrarily, so scoring it would print a plausible, wrong number.
    """
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.dim() != 2:
        raise SbirError(f"{what} must be 2-D (N x d), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        bad = torch.nonzero(~torch.isfinite(t).all(dim=1)).flatten()
        if len(bad):
            raise DataError(f"{what} row {int(bad[0])} holds NaN or infinity ({len(bad)} such row(s)); these "
                            f"cannot be ranked (non-finite weights, or a damaged input?)")


def cosine_scores(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix (numpy, float32) of two embedding sets."""
    return (unit_rows(query) @ unit_rows(gallery).T).numpy()


def memory_budget(memory: str | int, device: torch.device) -> int:
    """Bytes a score block may use: ``memory``, or with ``"auto"`` half the free GPU memory (1 GiB on CPU)."""
    size = parse_memory(memory)
    if size is not None:
        return size
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return usable(free, SCORING_SHARE)
    return 2**30


def block_rows(n_gallery: int, memory: str | int, device: torch.device | str = "cpu") -> int:
    """Query rows per block so that a block's working set stays within the memory budget."""
    dev = torch.device(device)
    cap = MAX_BLOCK if dev.type == "cpu" else 8 * MAX_BLOCK  # a GPU wants big blocks; CPU caches small ones
    return int(max(1, min(cap, memory_budget(memory, dev) // max(1, BYTES_PER_SCORE * n_gallery))))


class ScoreSource:
    """Yields score rows for query positions: cosine of normalised embeddings, minus squared Euclidean
    distances of the embeddings as they are (``euclidean``), or a given matrix."""

    def __init__(self, query, gallery, scores, device: torch.device, similarities=("cosine",)) -> None:
        if scores is not None:
            check_finite_rows(np.asarray(scores), "the score matrix")
            self.matrix: Optional[torch.Tensor] = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
            self.n_query, self.n_gallery = self.matrix.shape
            self.device = torch.device("cpu")
        else:
            self.matrix = None
            check_finite_rows(query, "query embeddings")
            check_finite_rows(gallery, "gallery embeddings")
            self.q, self.g = unit_rows(query, device), unit_rows(gallery, device)
            if "euclidean" in similarities:  # the embeddings as saved, and their squared norms
                self.raw_q, self.raw_g = (_float_rows(x, device) for x in (query, gallery))
                self.q_sq, self.g_sq = (self.raw_q ** 2).sum(1), (self.raw_g ** 2).sum(1)
            if self.q.shape[1] != self.g.shape[1]:
                raise SbirError(f"query and gallery dimensions differ: {self.q.shape[1]} vs {self.g.shape[1]}")
            self.n_query, self.n_gallery = self.q.shape[0], self.g.shape[0]
            self.device = device
        if self.n_gallery == 0:
            raise SbirError("the gallery is empty: no readable photos to retrieve")

    def rows(self, idx: np.ndarray, similarity: str = "cosine") -> torch.Tensor:
        """Scores of the queries at positions ``idx`` against the whole gallery (len(idx) x N)."""
        if self.matrix is not None:
            if similarity != "cosine":
                raise SbirError(f"a score matrix is ranked as given; similarity={similarity} needs the embeddings")
            return self.matrix[torch.from_numpy(idx)]
        at = torch.from_numpy(idx).to(self.device)
        if similarity == "euclidean":  # -(|q|^2 - 2 q.g + |g|^2): the same order as -||q - g||^2
            return 2 * self.raw_q[at] @ self.raw_g.T - self.g_sq[None, :] - self.q_sq[at, None]
        return self.q[at] @ self.g.T


def _float_rows(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device, dtype=torch.float32)
