"""The exact retrieval engine: every metric, under one or several protocols, from one pass.

Definitions are in docs/metrics.md and :mod:`.measures`; in short:

* Similarity is cosine, or minus the squared Euclidean distance (``similarity``; :mod:`.scoring`).
* Category level (ZS, GZS): mAP@all, mAP@K and P@K from the ranks of each query's relevant items.
* Instance level (FG-ZS): Acc@K from the rank of each query's true photo, among all gallery photos or
  among the photos of the query's category (``fg_gallery``).
* Queries with no relevant gallery item are excluded and counted in ``n_excluded``, or scored 0, or
  (SAKE) left out of mAP but scored 0 in P@K (``no_relevant``).
* With ``query_seen`` (GZS), every metric is also reported for seen-class queries (``/seen``),
  unseen-class queries (``/unseen``) and their harmonic mean (``/H``), as generalized zero-shot
  classification reports accuracies.

Queries are grouped by class and processed in blocks (rows bounded by a memory budget): one matrix
product and one sort per block, shared by every protocol asked for, so ``--protocols all`` costs
little more than one protocol.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError, SbirError
from ..log import progress
from .measures import cutoff_metrics, instance_ranks, policy_ranks, relevant_ranks
from .protocol import Protocol, metric_sort_key
from .scoring import ScoreSource, block_rows

__all__ = ["RetrievalResult", "evaluate", "evaluate_many", "block_rows"]


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
    # metric -> its own query positions, where it counts queries mAP leaves out (no_relevant=exclude_map)
    query_index_of: Dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        """The record fragment: metrics, counts, per-class mAP and protocol."""
        return {"metrics": self.metrics, "level": self.level, "n_queries": self.n_queries,
                "n_evaluated": int(len(self.query_index)), "n_excluded": self.n_excluded,
                "per_class_map": {str(k): v for k, v in self.per_class.items()}, "protocol": self.protocol}


def evaluate(query=None, gallery=None, query_labels: Optional[Sequence[int]] = None,
             gallery_labels: Optional[Sequence[int]] = None, query_to_gallery: Optional[Sequence[int]] = None,
             protocol: Optional[Protocol] = None, memory: str | int = "1GiB", device: str | torch.device | None = None,
             desc: str = "evaluating", scores: Optional[np.ndarray] = None,
             query_seen: Optional[Sequence[bool]] = None) -> RetrievalResult:
    """Evaluate retrieval of ``gallery`` by ``query`` embeddings (or a precomputed ``scores`` matrix).

    Give ``query_labels`` + ``gallery_labels`` (category level) or ``query_to_gallery`` (instance
    level: the gallery index of each query's true photo, -1 if it has none; labels too for
    ``fg_gallery="category"``).

    >>> import numpy as np
    >>> r = evaluate(scores=np.array([[0.9, 0.8, 0.7]]), query_labels=[0], gallery_labels=[0, 1, 0],
    ...              protocol=Protocol(map_k=(2,), prec_k=(2,)))
    >>> round(r.metrics["mAP@all"], 4), r.metrics["P@2"]
    (0.8333, 0.5)
    """
    return evaluate_many(query, gallery, query_labels, gallery_labels, query_to_gallery, [protocol or Protocol()],
                         memory, device, desc, scores, query_seen)[0]


def label_codes(query_labels, gallery_labels) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Integer class codes of the query and gallery labels; labels of any other kind (class-name
    strings in an embeddings file) are coded through one joint vocabulary, so equal names match.

    >>> [c.tolist() for c in label_codes(["cat", "dog"], ["dog", "cow", "cat"])]  # cat 0, cow 1, dog 2
    [[0, 2], [2, 1, 0]]
    """
    if query_labels is None or gallery_labels is None:
        as_int = lambda x: None if x is None else np.asarray(x, dtype=np.int64)  # noqa: E731
        return as_int(query_labels), as_int(gallery_labels)
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    if np.issubdtype(q.dtype, np.integer) and np.issubdtype(g.dtype, np.integer):
        return q.astype(np.int64), g.astype(np.int64)
    _, codes = np.unique(np.concatenate([q.astype(str), g.astype(str)]), return_inverse=True)
    return codes[: len(q)].astype(np.int64), codes[len(q):].astype(np.int64)


def evaluate_many(query=None, gallery=None, query_labels=None, gallery_labels=None, query_to_gallery=None,
                  protocols: Sequence[Protocol] = (Protocol(),), memory: str | int = "1GiB",
                  device: str | torch.device | None = None, desc: str = "evaluating",
                  scores: Optional[np.ndarray] = None, query_seen=None) -> List[RetrievalResult]:
    """:func:`evaluate` under several protocols at once (one score pass); results in the same order."""
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src = ScoreSource(query, gallery, scores, dev, {p.similarity for p in protocols})
    rows = block_rows(src.n_gallery, memory, src.device)
    ql, gl = label_codes(query_labels, gallery_labels)
    if ql is not None and len(ql) != src.n_query or gl is not None and len(gl) != src.n_gallery:
        raise SbirError("label arrays do not match the number of embeddings")
    seen = None if query_seen is None else np.asarray(query_seen, dtype=bool)
    if src.n_query == 0:
        raise DataError("there is no query to evaluate (0 query embeddings)")
    if query_to_gallery is not None:
        raw = _instance_values(src, np.asarray(query_to_gallery, dtype=np.int64), ql, gl, protocols, rows, desc)
        level = "instance"
    else:
        if ql is None or gl is None:
            raise SbirError("category-level evaluation needs query_labels and gallery_labels")
        raw = _category_values(src, ql, gl, protocols, rows, desc)
        level = "category"
    return [aggregate(level, values, has, ql, p, seen) for p, (values, has) in zip(protocols, raw)]


# ---------------------------------------------------------------------------------- category level
def _class_blocks(query_labels: np.ndarray, gallery_labels: np.ndarray, rows: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """(query positions, relevant gallery positions) per block, queries grouped by class."""
    for c in np.unique(query_labels):
        q = np.flatnonzero(query_labels == c)
        rel = np.flatnonzero(gallery_labels == c)
        for start in range(0, len(q), rows):
            yield q[start: start + rows], rel


def _category_values(src: ScoreSource, ql: np.ndarray, gl: np.ndarray, protocols: Sequence[Protocol], rows: int,
                     desc: str) -> List[Tuple[Dict[str, np.ndarray], np.ndarray]]:
    """Per-protocol (per-query values over all queries, mask of queries that have a relevant item)."""
    has_rel = np.isin(ql, gl)
    if not has_rel.any():
        raise DataError("no query has a relevant gallery item (no gallery photo shares a query's class)")
    keys = [[f"AP@{k}" for k in p.map_k] + [f"P@{k}" for k in p.prec_k] + ["AP@all"] for p in protocols]
    values = [{k: np.zeros(len(ql)) for k in ks} for ks in keys]
    blocks = [b for b in _class_blocks(ql, gl, rows) if len(b[1])]
    similarities = sorted({p.similarity for p in protocols})
    pool = ThreadPoolExecutor(max_workers=2) if src.device.type == "cpu" and torch.get_num_threads() > 1 else None
    try:
        with torch.no_grad():
            for qidx, rel in progress(blocks, desc=desc, unit="block"):
                relevant = torch.from_numpy(rel).to(src.device)
                rrs = {s: relevant_ranks(src.rows(qidx, s), relevant, pool) for s in similarities}
                ranks: Dict[Tuple[str, str], torch.Tensor] = {}
                for p, out in zip(protocols, values):
                    rr, key = rrs[p.similarity], (p.similarity, p.ties)
                    if key not in ranks:  # protocols sharing a similarity and tie policy share its ranks
                        ranks[key] = policy_ranks(rr, p.ties)
                    for name, v in cutoff_metrics(rr, p, p.map_k, p.prec_k, ranks[key]).items():
                        out[name][qidx] = v.cpu().numpy()
    finally:
        if pool is not None:
            pool.shutdown()
    return [(v, has_rel) for v in values]


# ---------------------------------------------------------------------------------- instance level
def _instance_values(src: ScoreSource, targets: np.ndarray, ql: Optional[np.ndarray], gl: Optional[np.ndarray],
                     protocols: Sequence[Protocol], rows: int, desc: str) -> List[Tuple[Dict[str, np.ndarray], np.ndarray]]:
    if len(targets) != src.n_query:
        raise SbirError("query_to_gallery does not match the number of query embeddings")
    if (targets >= src.n_gallery).any():
        raise SbirError("query_to_gallery points past the end of the gallery")
    if any(p.fg_gallery == "category" for p in protocols) and (ql is None or gl is None):
        raise DataError("fg_gallery=category needs query_labels and gallery_labels with query_to_gallery")
    valid = np.flatnonzero(targets >= 0)
    if not len(valid):
        raise DataError("no query has its photo in the gallery (query_to_gallery is -1 everywhere)")
    ranks = [np.zeros(len(targets), dtype=np.int64) for _ in protocols]
    starts = range(0, len(valid), rows)
    with torch.no_grad():
        for s in progress(starts, desc=desc, total=len(starts), unit="block"):
            idx = valid[s: s + rows]
            scored = {sim: src.rows(idx, sim) for sim in {p.similarity for p in protocols}}
            t = torch.from_numpy(targets[idx]).to(src.device)
            for p, out in zip(protocols, ranks):
                scores = scored[p.similarity]
                out[idx] = instance_ranks(_within_category(scores, idx, ql, gl) if p.fg_gallery == "category"
                                          else scores, t, p.ties).cpu().numpy()
    return [({"rank": r, **{f"Acc@{k}": ((r <= k) & (r > 0)).astype(np.float64) for k in p.acc_k}}, targets >= 0)
            for p, r in zip(protocols, ranks)]


def _within_category(scores: torch.Tensor, idx: np.ndarray, ql: np.ndarray, gl: np.ndarray) -> torch.Tensor:
    """Scores with every photo of another category pushed below all others (-inf)."""
    other = torch.from_numpy(ql[idx][:, None] != gl[None, :]).to(scores.device)
    return scores.masked_fill(other, float("-inf"))


# ---------------------------------------------------------------------------------- aggregation
def _mean(values: np.ndarray, labels: Optional[np.ndarray], average: str) -> float:
    if not len(values):
        return float("nan")
    if average == "class" and labels is not None:
        return float(np.mean([values[labels == c].mean() for c in np.unique(labels)]))
    return float(values.mean())


def aggregate(level: str, values: Dict[str, np.ndarray], has: np.ndarray, ql: Optional[np.ndarray],
               protocol: Protocol, seen: Optional[np.ndarray]) -> RetrievalResult:
    """Per-query values (AP@K, P@K, Acc@K, rank; one per query, ``has``: the query has a relevant item)
    into a result: means over each metric's evaluated queries (plus seen / unseen / H groups), per-class mAP,
    per-query values. A query without a relevant item enters a metric's mean (at 0) or not as
    :meth:`Protocol.counts_unmatched` says; ``query_index`` lists the queries of mAP (of Acc at
    instance level), ``query_index_of`` those of any metric that counts more."""
    everyone = np.arange(len(has))
    matched = np.flatnonzero(has)
    evaluated = everyone if protocol.counts_unmatched("mAP@all") else matched
    rename = {"AP@all": "mAP@all", **{f"AP@{k}": f"mAP@{k}" for k in protocol.map_k}}
    metrics: Dict[str, float] = {}
    per_query: Dict[str, np.ndarray] = {}
    query_index_of: Dict[str, np.ndarray] = {}
    for key, v in values.items():
        name = rename.get(key, key)
        rows = everyone if protocol.counts_unmatched(name) else matched
        per_query[key if key in ("AP@all", "rank") else name] = v[rows]
        if len(rows) != len(evaluated):
            query_index_of[name] = rows
        if key == "rank":
            continue
        labels = None if ql is None else ql[rows]
        metrics[name] = _mean(v[rows], labels, protocol.average)
        if seen is not None and seen[rows].any() and not seen[rows].all():
            metrics.update(_group_metrics(name, v[rows], labels, seen[rows], protocol.average))
    per_class = {}
    if level == "category" and "AP@all" in per_query:
        ap, labels = per_query["AP@all"], ql[evaluated]
        per_class = {int(c): float(ap[labels == c].mean()) for c in np.unique(labels)}
    ordered = {k: metrics[k] for k in sorted(metrics, key=metric_sort_key)}
    return RetrievalResult(level, ordered, per_query, evaluated, len(has), int(len(has) - len(evaluated)),
                           per_class, protocol.to_dict(), query_index_of)


def _group_metrics(name: str, v: np.ndarray, labels: Optional[np.ndarray], seen: np.ndarray,
                   average: str) -> Dict[str, float]:
    """``name/seen``, ``name/unseen`` and their harmonic mean ``name/H`` (0 when either is 0)."""
    s = _mean(v[seen], None if labels is None else labels[seen], average)
    u = _mean(v[~seen], None if labels is None else labels[~seen], average)
    h = 2 * s * u / (s + u) if s + u > 0 else 0.0
    return {f"{name}/seen": s, f"{name}/unseen": u, f"{name}/H": h}
