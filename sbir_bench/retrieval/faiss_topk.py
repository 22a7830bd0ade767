"""Top-K-only metrics through faiss, for galleries too large for exact mAP@all (millions of photos).

The exact engine (:func:`sbir_bench.retrieval.evaluate`) sorts every score row. When only P@K,
mAP@K and Acc@K are wanted, the K best gallery items per query are enough: faiss' exact
inner-product index (``IndexFlatIP`` on unit rows, i.e. cosine) returns them with optimised BLAS and
heap selection. The metrics are computed by the engine's own :mod:`.measures` code from the hits in
those lists, so both backends share one definition; tied scores are ordered as faiss returns them,
so results equal the exact engine's ``ties="stable"`` whenever scores are distinct (the test oracle).

Needs ``faiss-cpu`` (the ``faiss`` extra); ``faiss-gpu`` works unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError, SbirError
from ..extras import require
from ..log import progress
from .engine import RetrievalResult, aggregate
from .measures import RelevantRanks, cutoff_metrics
from .protocol import Protocol
from .scoring import check_finite_rows, unit_rows


def _faiss():
    return require("faiss", "the faiss backend")


def _hit_ranks(flags: np.ndarray, scores: np.ndarray, n_rel: np.ndarray, n_gallery: int, max_k: int) -> RelevantRanks:
    """:class:`RelevantRanks` of the hits in ranked top-K lists (real ranks, hit numbers in order).

    Misses get a rank past every cut-off (past the gallery *and* the largest K: with K > N, a rank of
    N + 1 would still fall inside the cut-off and count a miss as a hit), so only hits ever count;
    ``n_rel`` is each query's true number of relevant gallery items (most lie outside the list).
    """
    rank = np.where(flags, np.arange(1, flags.shape[1] + 1), max(n_gallery, max_k) + 1)
    order = np.argsort(rank, axis=1, kind="stable")  # hits first, in rank order
    take = lambda a: torch.from_numpy(np.ascontiguousarray(np.take_along_axis(a, order, axis=1)))  # noqa: E731
    rank_t, hit_no = take(rank), take(np.where(flags, np.cumsum(flags, axis=1), 0))
    return RelevantRanks(scores=None, score=take(np.where(flags, scores, -np.inf)), index=torch.zeros_like(rank_t),
                         n_ge=rank_t, n_gt=rank_t - 1, tp_ge=hit_no, rel_gt=hit_no - 1, n_gallery=n_gallery,
                         n_rel=torch.from_numpy(n_rel))


def evaluate_topk(query: np.ndarray, gallery: np.ndarray, query_labels: Optional[Sequence[int]] = None,
                  gallery_labels: Optional[Sequence[int]] = None, query_to_gallery: Optional[Sequence[int]] = None,
                  protocol: Optional[Protocol] = None, block: int = 4096, desc: str = "faiss top-K") -> RetrievalResult:
    """P@K / mAP@K (category level) or Acc@K (instance level) from the top max(K) neighbours."""
    faiss = _faiss()
    protocol = protocol or Protocol()
    if protocol.positive_only and protocol.topk_normalization != "hits":
        raise ConfigError("positive_only with a divisor other than hits needs every relevant score: use the exact backend")
    euclidean = protocol.similarity == "euclidean"  # the embeddings as saved, in an exact L2 index
    rows_of = (lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))) if euclidean \
        else (lambda x: unit_rows(x).numpy())
    q, g = rows_of(query), rows_of(gallery)
    if q.shape[1] != g.shape[1]:
        raise SbirError(f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}")
    check_finite_rows(query, "query embeddings")
    check_finite_rows(gallery, "gallery embeddings")
    instance = query_to_gallery is not None
    ks = protocol.acc_k if instance else (*protocol.map_k, *protocol.prec_k)
    k_max = min(max(ks), len(g))
    index = faiss.IndexFlatL2(g.shape[1]) if euclidean else faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    if instance:
        truth = np.asarray(query_to_gallery, dtype=np.int64)
        valid = np.flatnonzero(truth >= 0)
    else:
        ql, gl = np.asarray(query_labels, dtype=np.int64), np.asarray(gallery_labels, dtype=np.int64)
        classes, counts = np.unique(gl, return_counts=True)
        n_rel_of = dict(zip(classes.tolist(), counts.tolist()))
        valid = np.flatnonzero(np.isin(ql, classes))
    values: Dict[str, List[np.ndarray]] = {}
    for start in progress(range(0, len(valid), block), desc=desc, unit="block"):
        rows = valid[start: start + block]
        top_scores, top = index.search(q[rows], k_max)
        if euclidean:
            top_scores = -top_scores  # squared distances, nearest first: minus them is the score
        if instance:
            flags = top == truth[rows, None]
            for k in protocol.acc_k:
                values.setdefault(f"Acc@{k}", []).append(flags[:, :k].any(1).astype(np.float64))
            continue
        n_rel = np.array([n_rel_of[c] for c in ql[rows]], dtype=np.int64)
        rr = _hit_ranks(gl[top] == ql[rows, None], top_scores, n_rel, len(g), max(ks))
        out = cutoff_metrics(rr, protocol, protocol.map_k, protocol.prec_k, ranks=rr.n_ge)
        for k in protocol.map_k:
            values.setdefault(f"mAP@{k}", []).append(out[f"AP@{k}"].numpy())
        for k in protocol.prec_k:
            values.setdefault(f"P@{k}", []).append(out[f"P@{k}"].numpy())
    if not len(valid):
        raise DataError("no query can retrieve anything: no query's class (or photo) is in the gallery")
    has = np.zeros(len(q), dtype=bool)
    has[valid] = True
    full = {key: np.zeros(len(q)) for key in values}  # a query that cannot retrieve anything scores 0 ...
    for key, v in values.items():
        full[key][valid] = np.concatenate(v)
    # ... and enters a metric's mean or not by the one rule the exact engine follows (no_relevant)
    result = aggregate("instance" if instance else "category", full, has, None if instance else ql, protocol, None)
    return replace(result, protocol={**result.protocol, "backend": "faiss-topk", "ties": "faiss index order"})
