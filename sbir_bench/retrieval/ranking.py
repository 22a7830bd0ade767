"""Ranks of relevant items and the metrics they define: the one home of AP@K, P@K and Acc@K.

Nothing here ranks a gallery per query. For a block of queries that share one relevant set, the
engine sorts each score row once; every relevant item's rank is then a binary search into its row
(:func:`relevant_ranks`). A tie policy turns those counts into ranks and precisions
(:func:`policy_ranks`), and :func:`cutoff_metrics` computes AP@K and P@K from them for every K at
once, mAP@all being AP@K with K = the gallery size. The faiss backend builds the same
:class:`RelevantRanks` from its top-K lists, so both backends share one definition of each metric.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import numpy as np
import torch

from .protocol import Protocol

STABLE_PAIR_CHUNK = 256  # tied (query, item) pairs compared against their row at once


@dataclass
class RelevantRanks:
    """Counts around each relevant item of a block of queries, relevant items in descending score order.

    All tensors are (b x R) except ``scores`` (b x N). ``n_ge`` / ``n_gt``: gallery items scored >= / >
    the item; ``tp_ge`` / ``rel_gt``: relevant items scored >= / > it; ``index``: its gallery index.
    """

    scores: Optional[torch.Tensor]
    score: torch.Tensor
    index: torch.Tensor
    n_ge: torch.Tensor
    n_gt: torch.Tensor
    tp_ge: torch.Tensor
    rel_gt: torch.Tensor
    n_gallery: int
    n_rel: Optional[torch.Tensor] = None  # (b,) relevant items per query; None: the number of columns

    @property
    def hit(self) -> torch.Tensor:
        """0-based number of each item among the relevant ones, in descending score (gallery) order."""
        return torch.arange(self.score.shape[1], device=self.score.device).expand_as(self.n_ge)


def sort_rows(scores: torch.Tensor, pool: Optional[ThreadPoolExecutor] = None) -> torch.Tensor:
    """Ascending sort of each row; numpy's SIMD sort on CPU (several times faster than torch's)."""
    if scores.device.type != "cpu":
        return torch.sort(scores, dim=1).values
    arr = scores.numpy()
    if pool is None or arr.shape[0] < 8:
        return torch.from_numpy(np.sort(arr, axis=1))
    out = np.empty_like(arr)

    def work(rows: slice) -> None:
        out[rows] = np.sort(arr[rows], axis=1)

    half = arr.shape[0] // 2
    list(pool.map(work, [slice(0, half), slice(half, arr.shape[0])]))
    return torch.from_numpy(out)


def relevant_ranks(scores: torch.Tensor, rel_idx: torch.Tensor, pool: Optional[ThreadPoolExecutor] = None,
                   keep_scores: bool = True) -> RelevantRanks:
    """:class:`RelevantRanks` of the gallery items ``rel_idx`` in every row of ``scores``."""
    n_gallery, n_rel = scores.shape[1], rel_idx.numel()
    sorted_all = sort_rows(scores, pool)
    rel_desc, perm = torch.sort(scores[:, rel_idx], dim=1, descending=True, stable=True)
    rel_desc = rel_desc.contiguous()
    rel_asc = torch.flip(rel_desc, [1]).contiguous()
    return RelevantRanks(
        scores=scores if keep_scores else None, score=rel_desc, index=rel_idx[perm],
        n_ge=n_gallery - torch.searchsorted(sorted_all, rel_desc, side="left"),
        n_gt=n_gallery - torch.searchsorted(sorted_all, rel_desc, side="right"),
        tp_ge=n_rel - torch.searchsorted(rel_asc, rel_desc, side="left"),
        rel_gt=n_rel - torch.searchsorted(rel_asc, rel_desc, side="right"), n_gallery=n_gallery)


def stable_ranks(rr: RelevantRanks) -> torch.Tensor:
    """Ranks in a stable descending sort (ties by gallery index), computed only where items tie."""
    ranks = rr.n_gt + 1
    rows, cols = torch.nonzero(rr.n_ge - rr.n_gt > 1, as_tuple=True)
    for start in range(0, len(rows), STABLE_PAIR_CHUNK):
        r, c = rows[start: start + STABLE_PAIR_CHUNK], cols[start: start + STABLE_PAIR_CHUNK]
        row_scores = rr.scores[r]
        before = torch.arange(rr.n_gallery, device=row_scores.device)[None, :] < rr.index[r, c][:, None]
        ranks[r, c] += ((row_scores == rr.score[r, c][:, None]) & before).sum(1)
    return ranks


def policy_ranks(rr: RelevantRanks, ties: str) -> torch.Tensor:
    """Rank of each relevant item under a tie policy (``grouped``: the end of its tied block)."""
    if ties in ("grouped",):
        return rr.n_ge
    if ties == "pessimistic":
        return rr.n_ge - (rr.tp_ge - 1 - rr.hit)
    if ties == "optimistic":
        return rr.n_gt + 1 + (rr.hit - rr.rel_gt)
    return stable_ranks(rr)  # stable, list


def envelope(precision: torch.Tensor) -> torch.Tensor:
    """VOC interpolation: precision at each hit becomes the best precision at or after it."""
    return torch.flip(torch.cummax(torch.flip(precision, [1]), dim=1).values, [1])


def cutoff_metrics(rr: RelevantRanks, protocol: Protocol, ap_ks: Iterable[int], p_ks: Iterable[int],
                   ranks: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Per-query ``AP@K`` and ``P@K`` (float64, one value per row) for every requested K.

    ``AP@all`` is AP@K with K = the gallery size and ``all_interpolation``. ``ranks`` may be
    passed when several protocols share one tie policy.
    """
    ranks = policy_ranks(rr, protocol.ties) if ranks is None else ranks
    valid = rr.score > 0 if protocol.positive_only else torch.ones_like(rr.n_ge, dtype=torch.bool)
    n_rel = valid.sum(1).double() if rr.n_rel is None or protocol.positive_only else rr.n_rel.double()
    out: Dict[str, torch.Tensor] = {}
    for k in p_ks:
        out[f"P@{k}"] = ((ranks <= k) & valid).sum(1).double() / min(k, rr.n_gallery)
    for k in [*ap_ks, None]:
        cut = rr.n_gallery if k is None else min(k, rr.n_gallery)
        inside = (ranks <= cut) & valid
        precision = _precision(rr, protocol.ties, ranks, inside, cut)
        voc = (protocol.all_interpolation if k is None else protocol.topk_interpolation) == "voc"
        if voc:
            precision = torch.where(inside, envelope(precision), torch.zeros_like(precision))
        out["AP@all" if k is None else f"AP@{k}"] = _normalised_sum(precision, inside, n_rel, cut, protocol)
    return out


def _precision(rr: RelevantRanks, ties: str, ranks: torch.Tensor, inside: torch.Tensor, cut: int) -> torch.Tensor:
    """Precision at each relevant item inside the cut (0 elsewhere)."""
    if ties == "grouped":
        p = rr.tp_ge.double() / rr.n_ge.double()
    elif ties == "list":  # scikit-learn on the stable top-K list: ties share the list's operating point
        listed = inside.sum(1, keepdim=True)
        p = torch.minimum(rr.tp_ge, listed).double() / torch.clamp(rr.n_ge, max=cut).double()
    else:
        p = (rr.hit + 1).double() / ranks.double()
    return torch.where(inside, p, torch.zeros_like(p))


def _normalised_sum(precision: torch.Tensor, inside: torch.Tensor, n_rel: torch.Tensor, cut: int,
                    protocol: Protocol) -> torch.Tensor:
    """Sum of precisions divided by the protocol's normaliser; 0 where there is nothing to divide by."""
    total = precision.sum(1)
    if protocol.topk_normalization == "min_k_r":
        norm = torch.clamp(n_rel, max=float(cut))
    elif protocol.topk_normalization == "hits":
        norm = inside.sum(1).double()
    else:
        norm = n_rel
    return torch.where(norm > 0, total / torch.clamp(norm, min=1.0), torch.zeros_like(total))


def instance_ranks(scores: torch.Tensor, targets: torch.Tensor, ties: str) -> torch.Tensor:
    """Rank (1-based) of each query's true gallery item under a tie policy."""
    true = scores.gather(1, targets[:, None])
    above = (scores > true).sum(1, dtype=torch.int64)
    if ties in ("grouped", "pessimistic"):  # one true item: its block's end is its pessimistic rank
        return above + (scores == true).sum(1, dtype=torch.int64)
    if ties == "optimistic":
        return above + 1
    before = torch.arange(scores.shape[1], device=scores.device)[None, :] < targets[:, None]
    return above + ((scores == true) & before).sum(1, dtype=torch.int64) + 1
