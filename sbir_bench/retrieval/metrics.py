"""The exact retrieval engine: every metric from one pass over query blocks.

Conventions (also in docs/metrics.md):

* Similarity is cosine: query and gallery embeddings are L2-normalised, score = dot product.
* mAP@all: for each query, AP = (1/R) * sum over its R relevant items j of P(s_j), where
  P(s) = #relevant with score >= s / #items with score >= s. A block of tied scores therefore counts
  as one operating point, exactly like scikit-learn's ``average_precision_score``.
  ``all_interpolation="voc"`` instead applies SAKE's VOC envelope over the whole ranking.
* Top-K metrics rank the gallery by score. Ties matter more than one expects: float32 cosine
  scores of a 54k gallery collide a dozen times per query. ``ties="grouped"`` (default) treats a
  tied block as one operating point at its end, exactly as mAP@all does (rank = #items scored >= s,
  precision = #relevant >= s / #items >= s), independent of gallery order; ``"stable"`` is the real
  ranking of a stable ``argsort(-score)`` (ties by gallery order, as SAKE's code gets on tie-free
  data); ``"optimistic"`` / ``"pessimistic"`` rank relevant items first / last inside each block.
  P@K = hits in the top K / min(K, gallery size) (SAKE's ``eval_precision``). AP@K sums precision at
  each hit in the top K - VOC-interpolated (precision envelope) or not - divided by min(K, R)
  (SAKE), by the hits in the top K (torchmetrics) or by R.
* Acc@K (instance level): fraction of queries whose true photo is ranked within the top K.
* Queries with no relevant gallery item are excluded and counted in ``n_excluded``.

Nothing ranks a whole gallery per query: each block of queries gets one matrix product and one
sort of its score rows (SIMD ``np.sort`` on CPU, ``torch.sort`` on CUDA); the rank of every relevant
item is then a binary search into its row (one plus the number of gallery items scored above it).
Memory is bounded by the block size, derived from ``memory`` (e.g. ``"2GiB"``).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, SbirError
from ..progress import progress
from .protocol import Protocol

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}
BYTES_PER_SCORE = 13  # score row + sorted copy + comparison masks, float32
MAX_BLOCK = 512


def parse_memory(text: str | int) -> int:
    """``"2GiB"`` -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"cannot parse memory size {text!r}; use e.g. 512MiB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class RetrievalResult:
    """Aggregate metrics plus the per-query values needed for confidence intervals and paired tests."""

    level: str
    metrics: Dict[str, float]
    per_query: Dict[str, np.ndarray]
    query_index: np.ndarray  # positions (in the input query array) of the evaluated queries
    n_queries: int
    n_excluded: int
    per_class: Dict[int, float] = field(default_factory=dict)
    protocol: Dict[str, object] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        """The record fragment: metrics, counts, per-class mAP and protocol."""
        return {"metrics": self.metrics, "level": self.level, "n_queries": self.n_queries,
                "n_evaluated": int(len(self.query_index)), "n_excluded": self.n_excluded,
                "per_class_map": {str(k): v for k, v in self.per_class.items()}, "protocol": self.protocol}


def _normalise(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=torch.float32)
    if t.dim() != 2:
        raise SbirError(f"embeddings must be 2-D (N x d), got shape {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=1)


def _sort_rows(scores: torch.Tensor, pool: Optional[ThreadPoolExecutor]) -> torch.Tensor:
    """Ascending sort of each row; numpy's SIMD sort on CPU (several times faster than torch's)."""
    if scores.is_cuda:
        return torch.sort(scores, dim=1).values
    arr = scores.numpy()
    out = np.empty_like(arr)
    if pool is None or arr.shape[0] < 8:
        out[:] = np.sort(arr, axis=1)
    else:
        halves = np.array_split(np.arange(arr.shape[0]), 2)
        def work(idx: np.ndarray) -> None:
            out[idx[0]: idx[-1] + 1] = np.sort(arr[idx[0]: idx[-1] + 1], axis=1)
        list(pool.map(work, [h for h in halves if len(h)]))
    return torch.from_numpy(out)


def block_rows(n_gallery: int, memory: str | int) -> int:
    """Query rows per block so that a block's working set stays within ``memory``."""
    return int(max(1, min(MAX_BLOCK, parse_memory(memory) // max(1, BYTES_PER_SCORE * n_gallery))))


def _stable_ranks_slow(row: torch.Tensor, rel_idx: torch.Tensor) -> torch.Tensor:
    """Exact stable ranks of ``rel_idx`` in one score row (used only for rows with tied scores)."""
    order = np.argsort(-row.cpu().numpy(), kind="stable")
    rank_of = np.empty_like(order)
    rank_of[order] = np.arange(1, len(order) + 1)
    return torch.from_numpy(rank_of[rel_idx.cpu().numpy()]).to(row.device)


def _envelope(precision: torch.Tensor) -> torch.Tensor:
    """VOC interpolation: precision at each hit becomes the best precision at or after it."""
    return torch.flip(torch.cummax(torch.flip(precision, [1]), dim=1).values, [1])


def _topk_metrics(ranks: torch.Tensor, precision: torch.Tensor, n_rel: int, n_gallery: int,
                  protocol: Protocol) -> Dict[str, torch.Tensor]:
    """P@K and AP@K from each relevant item's rank and precision (b x R, ranks non-decreasing)."""
    out: Dict[str, torch.Tensor] = {}
    for k in protocol.prec_k:
        out[f"P@{k}"] = (ranks <= k).sum(1).double() / min(k, n_gallery)
    for k in protocol.map_k:
        inside = ranks <= k
        prec = torch.where(inside, precision, torch.zeros_like(precision))
        if protocol.topk_interpolation == "voc":
            prec = torch.where(inside, _envelope(prec), torch.zeros_like(prec))
        total = prec.sum(1)
        if protocol.topk_normalization == "min_k_r":
            norm = torch.full_like(total, float(min(k, n_rel)))
        elif protocol.topk_normalization == "hits":
            norm = inside.sum(1).double().clamp(min=1)
        else:
            norm = torch.full_like(total, float(n_rel))
        out[f"mAP@{k}"] = total / norm
    return out


def _tie_ranks(scores: torch.Tensor, sorted_all: torch.Tensor, rel_desc: torch.Tensor, rel_asc: torch.Tensor,
               n_ge: torch.Tensor, tp_ge: torch.Tensor, rel_idx: torch.Tensor, perm: torch.Tensor,
               protocol: Protocol) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank, precision) of each relevant item, descending score order, under the tie policy.

    ``grouped``: a block of tied scores is one operating point at its end (rank = #items scored
    >= s, precision = #relevant >= s / #items >= s), the convention of mAP@all. ``optimistic`` /
    ``pessimistic``: a real ranking with relevant items first / last inside each tied block.
    ``stable``: the real ranking of a stable sort by descending score (ties by gallery order).
    """
    n_gallery, n_rel = scores.shape[1], rel_desc.shape[1]
    if protocol.ties == "grouped":
        return n_ge, tp_ge.double() / n_ge.double()
    hit = torch.arange(n_rel, device=scores.device).expand_as(n_ge)  # 0-based hit number
    if protocol.ties == "pessimistic":
        ranks = n_ge - (tp_ge - 1 - hit)
    else:
        n_gt = n_gallery - torch.searchsorted(sorted_all, rel_desc, side="right")
        rel_gt = n_rel - torch.searchsorted(rel_asc, rel_desc, side="right")
        ranks = n_gt + 1 + (hit - rel_gt)
        if protocol.ties == "stable":
            tied_rows = (n_ge - n_gt > 1).any(1).nonzero().flatten().tolist()
            for r in tied_rows:
                ranks[r] = torch.sort(_stable_ranks_slow(scores[r], rel_idx[perm[r]])).values
    return ranks, (hit + 1).double() / ranks.double()


def _category_block(scores: torch.Tensor, rel_idx: torch.Tensor, protocol: Protocol,
                    pool: Optional[ThreadPoolExecutor]) -> Dict[str, torch.Tensor]:
    """Per-query AP@all and top-K metrics for a block of queries sharing one relevant set."""
    n_gallery, n_rel = scores.shape[1], rel_idx.numel()
    sorted_all = _sort_rows(scores, pool)
    rel = scores[:, rel_idx]
    rel_desc, perm = torch.sort(rel, dim=1, descending=True, stable=True)
    rel_desc = rel_desc.contiguous()
    rel_asc = torch.flip(rel_desc, [1]).contiguous()
    n_ge = n_gallery - torch.searchsorted(sorted_all, rel_desc, side="left")
    tp_ge = n_rel - torch.searchsorted(rel_asc, rel_desc, side="left")
    out = {"AP": (tp_ge.double() / n_ge.double()).mean(1)}
    if protocol.map_k or protocol.prec_k or protocol.all_interpolation == "voc":
        ranks, precision = _tie_ranks(scores, sorted_all, rel_desc, rel_asc, n_ge, tp_ge, rel_idx, perm, protocol)
        out.update(_topk_metrics(ranks, precision, n_rel, n_gallery, protocol))
        if protocol.all_interpolation == "voc":  # SAKE's eval_AP_inner without a cut-off
            out["AP"] = _envelope(precision).mean(1)
    return out


def _instance_ranks(scores: torch.Tensor, targets: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """Rank (1-based) of each query's true gallery item."""
    true = scores.gather(1, targets[:, None])
    above = (scores > true).sum(1, dtype=torch.int64)
    if protocol.ties in ("grouped", "pessimistic"):  # one true item: its block's end is its pessimistic rank
        return above + (scores == true).sum(1, dtype=torch.int64)
    if protocol.ties == "optimistic":
        return above + 1
    before = torch.arange(scores.shape[1], device=scores.device)[None, :] < targets[:, None]
    return above + ((scores == true) & before).sum(1, dtype=torch.int64) + 1


def _class_blocks(query_labels: np.ndarray, gallery_labels: np.ndarray, rows: int):
    """(query positions, relevant gallery positions) per block, queries grouped by class."""
    for c in np.unique(query_labels):
        q = np.flatnonzero(query_labels == c)
        rel = np.flatnonzero(gallery_labels == c)
        for start in range(0, len(q), rows):
            yield q[start: start + rows], rel


class _Scores:
    """Yields score rows for query positions: cosine of normalised embeddings, or a given matrix."""

    def __init__(self, query, gallery, scores, device: torch.device) -> None:
        if scores is not None:
            self.matrix = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
            self.n_query, self.n_gallery = self.matrix.shape
            self.device = torch.device("cpu")
            return
        self.matrix = None
        self.q, self.g = _normalise(query, device), _normalise(gallery, device)
        if self.q.shape[1] != self.g.shape[1]:
            raise SbirError(f"query and gallery dimensions differ: {self.q.shape[1]} vs {self.g.shape[1]}")
        self.n_query, self.n_gallery = self.q.shape[0], self.g.shape[0]
        self.device = device
        if self.n_gallery == 0:
            raise SbirError("the gallery is empty: no readable photos to retrieve")

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        if self.matrix is not None:
            return self.matrix[torch.from_numpy(idx)]
        return self.q[torch.from_numpy(idx).to(self.device)] @ self.g.T


def evaluate(query: np.ndarray | torch.Tensor | None = None, gallery: np.ndarray | torch.Tensor | None = None,
             query_labels: Optional[Sequence[int]] = None, gallery_labels: Optional[Sequence[int]] = None,
             query_to_gallery: Optional[Sequence[int]] = None, protocol: Optional[Protocol] = None,
             memory: str | int = "1GiB", device: str | torch.device | None = None,
             desc: str = "evaluating", scores: Optional[np.ndarray] = None) -> RetrievalResult:
    """Evaluate retrieval of ``gallery`` by ``query`` embeddings (or a precomputed ``scores`` matrix).

    Give ``query_labels`` + ``gallery_labels`` (category level) or ``query_to_gallery`` (instance
    level: the gallery index of each query's true photo, -1 if it has none).
    """
    protocol = protocol or Protocol()
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src = _Scores(query, gallery, scores, dev)
    rows = block_rows(src.n_gallery, memory)
    if query_to_gallery is not None:
        return _evaluate_instance(src, np.asarray(query_to_gallery, dtype=np.int64), protocol, rows, desc)
    if query_labels is None or gallery_labels is None:
        raise SbirError("category-level evaluation needs query_labels and gallery_labels")
    ql, gl = np.asarray(query_labels, dtype=np.int64), np.asarray(gallery_labels, dtype=np.int64)
    if len(ql) != src.n_query or len(gl) != src.n_gallery:
        raise SbirError("label arrays do not match the number of embeddings")
    return _evaluate_category(src, ql, gl, protocol, rows, desc)


def _evaluate_category(src: _Scores, ql: np.ndarray, gl: np.ndarray, protocol: Protocol,
                       rows: int, desc: str) -> RetrievalResult:
    keys = ["AP"] + [f"mAP@{k}" for k in protocol.map_k] + [f"P@{k}" for k in protocol.prec_k]
    values = {k: np.full(len(ql), np.nan) for k in keys}
    has_rel = np.isin(ql, gl)
    blocks = list(_class_blocks(ql[has_rel], gl, rows))
    positions = np.flatnonzero(has_rel)
    pool = ThreadPoolExecutor(max_workers=2) if src.device.type == "cpu" and torch.get_num_threads() > 1 else None
    try:
        with torch.no_grad():
            for qpos, rel in progress(blocks, desc=desc, unit="block"):
                qidx = positions[qpos]
                scores = src.rows(qidx)
                out = _category_block(scores, torch.from_numpy(rel).to(scores.device), protocol, pool)
                for k in keys:
                    values[k][qidx] = out[k].cpu().numpy()
    finally:
        if pool is not None:
            pool.shutdown()
    evaluated = np.flatnonzero(has_rel)
    per_class = {int(c): float(np.mean(values["AP"][evaluated][ql[evaluated] == c])) for c in np.unique(ql[evaluated])}
    metrics: Dict[str, float] = {}
    for k in keys:
        name = "mAP@all" if k == "AP" else k
        v = values[k][evaluated]
        if protocol.average == "class":
            metrics[name] = float(np.mean([v[ql[evaluated] == c].mean() for c in np.unique(ql[evaluated])])) if len(v) else float("nan")
        else:
            metrics[name] = float(v.mean()) if len(v) else float("nan")
    per_query = {("AP@all" if k == "AP" else k): values[k][evaluated] for k in keys}
    return RetrievalResult("category", metrics, per_query, evaluated, len(ql), int((~has_rel).sum()),
                           per_class, protocol.to_dict())


def _evaluate_instance(src: _Scores, targets: np.ndarray, protocol: Protocol,
                       rows: int, desc: str) -> RetrievalResult:
    if len(targets) != src.n_query:
        raise SbirError("query_to_gallery does not match the number of query embeddings")
    if (targets >= src.n_gallery).any():
        raise SbirError("query_to_gallery points past the end of the gallery")
    valid = np.flatnonzero(targets >= 0)
    ranks = np.zeros(len(valid), dtype=np.int64)
    starts = range(0, len(valid), rows)
    with torch.no_grad():
        for s in progress(starts, desc=desc, total=len(starts), unit="block"):
            idx = valid[s: s + rows]
            scores = src.rows(idx)
            t = torch.from_numpy(targets[idx]).to(scores.device)
            ranks[s: s + len(idx)] = _instance_ranks(scores, t, protocol).cpu().numpy()
    metrics = {f"Acc@{k}": float(np.mean(ranks <= k)) if len(ranks) else float("nan") for k in protocol.acc_k}
    per_query = {"rank": ranks, **{f"Acc@{k}": (ranks <= k).astype(np.float64) for k in protocol.acc_k}}
    return RetrievalResult("instance", metrics, per_query, valid, len(targets), int(len(targets) - len(valid)),
                           {}, protocol.to_dict())
