"""Top-K-only metrics through faiss, for galleries too large for exact mAP@all (millions of photos).

The exact engine (:func:`sbir_bench.retrieval.evaluate`) sorts every score row, which is
O(Nq x Ng log Ng). When only P@K, mAP@K and Acc@K are wanted, the K best gallery items per query
are enough: faiss' exact inner-product index (``IndexFlatIP`` on L2-normalised vectors, i.e. cosine)
returns them with optimised BLAS and heap selection. Conventions are those of docs/metrics.md; tied
scores are ordered as faiss returns them, so results equal the exact engine's ``ties="stable"``
whenever scores are distinct (the test oracle).

Needs ``faiss-cpu`` (``pip install -e ".[faiss]"``); ``faiss-gpu`` works unchanged.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import SbirError
from ..progress import progress
from .metrics import RetrievalResult
from .protocol import Protocol


def _faiss():
    try:
        import faiss
    except ImportError:
        raise SbirError("the faiss backend needs faiss-cpu: pip install -e '.[faiss]'") from None
    return faiss


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ap_at_k(flags: np.ndarray, k: int, n_rel: np.ndarray, protocol: Protocol) -> np.ndarray:
    """AP@K per row from hit flags of the ranked top list (rows x >= k)."""
    f = flags[:, :k]
    hits = np.cumsum(f, axis=1)
    prec = np.where(f, hits / np.arange(1, k + 1), 0.0)
    if protocol.topk_interpolation == "voc":
        prec = np.where(f, np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1], 0.0)
    if protocol.topk_normalization == "min_k_r":
        norm = np.minimum(k, n_rel)
    elif protocol.topk_normalization == "hits":
        norm = np.maximum(hits[:, -1], 1)
    else:
        norm = n_rel
    return prec.sum(1) / norm


def evaluate_topk(query: np.ndarray, gallery: np.ndarray, query_labels: Optional[Sequence[int]] = None,
                  gallery_labels: Optional[Sequence[int]] = None, query_to_gallery: Optional[Sequence[int]] = None,
                  protocol: Optional[Protocol] = None, block: int = 4096, desc: str = "faiss top-K") -> RetrievalResult:
    """P@K / mAP@K (category level) or Acc@K (instance level) from the top max(K) neighbours."""
    faiss = _faiss()
    protocol = protocol or Protocol()
    q, g = _normalised(query), _normalised(gallery)
    if q.shape[1] != g.shape[1]:
        raise SbirError(f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}")
    instance = query_to_gallery is not None
    ks = protocol.acc_k if instance else (*protocol.map_k, *protocol.prec_k)
    k_max = min(max(ks), len(g))
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    if instance:
        truth = np.asarray(query_to_gallery, dtype=np.int64)
        valid = np.flatnonzero(truth >= 0)
    else:
        ql, gl = np.asarray(query_labels, dtype=np.int64), np.asarray(gallery_labels, dtype=np.int64)
        classes, counts = np.unique(gl, return_counts=True)
        n_rel_of = dict(zip(classes.tolist(), counts.tolist()))
        valid = np.flatnonzero(np.isin(ql, classes))
    values: Dict[str, np.ndarray] = {}
    for start in progress(range(0, len(valid), block), desc=desc, unit="block"):
        rows = valid[start: start + block]
        _, top = index.search(q[rows], k_max)
        if instance:
            flags = top == truth[rows, None]
            for k in protocol.acc_k:
                values.setdefault(f"Acc@{k}", []).append(flags[:, :k].any(1).astype(np.float64))
            continue
        flags = gl[top] == ql[rows, None]
        n_rel = np.array([n_rel_of[c] for c in ql[rows]], dtype=np.float64)
        for k in protocol.map_k:
            values.setdefault(f"mAP@{k}", []).append(_ap_at_k(flags, min(k, k_max), n_rel, protocol))
        for k in protocol.prec_k:
            values.setdefault(f"P@{k}", []).append(flags[:, :k].sum(1) / min(k, len(g)))
    per_query = {key: np.concatenate(v) if v else np.zeros(0) for key, v in values.items()}
    metrics = {key: float(v.mean()) if len(v) else float("nan") for key, v in per_query.items()}
    return RetrievalResult("instance" if instance else "category", metrics, per_query, valid, len(q),
                           int(len(q) - len(valid)), {}, {**protocol.to_dict(), "backend": "faiss-topk"})
