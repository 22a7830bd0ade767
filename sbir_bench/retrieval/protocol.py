"""The evaluation protocol: every convention that changes a reported number, in one record.

Published SBIR numbers come from engines that disagree (see docs/metrics.md). sbir-bench makes
each choice explicit and stores :meth:`Protocol.to_dict` in every result record.

Defaults reproduce the engines behind the numbers SpLIP's tables compare against (docs/metrics.md):

* mAP@all: uninterpolated AP per query, averaged over queries - torchmetrics'
  ``retrieval_average_precision`` as called by CLIP-AT's code (github.com/aneeshan95/Sketch_LVM,
  ``src/model_LN_prompt.py``), with tied scores grouped so that it equals scikit-learn's
  ``average_precision_score`` exactly.
* mAP@K and P@K: SAKE's evaluation (github.com/qliu24/SAKE,
  ``src/test_cse_resnet_tuberlin_zeroshot.py``: ``eval_AP_inner(top=K)`` + ``VOCap``, and
  ``eval_precision``), copied by TVT, ZSE-SBIR and most ZS-SBIR code since: VOC-interpolated AP over
  the top K normalised by min(K, #relevant); P@K = hits in the top K / K.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

from ..errors import ConfigError

INTERPOLATIONS = ("voc", "none")
NORMALIZATIONS = ("min_k_r", "hits", "r")
TIE_POLICIES = ("grouped", "stable", "optimistic", "pessimistic")
AVERAGES = ("query", "class")


@dataclass(frozen=True)
class Protocol:
    """How scores turn into metrics (see the module docstring and docs/metrics.md)."""

    map_k: Tuple[int, ...] = (200,)
    prec_k: Tuple[int, ...] = (100, 200)
    acc_k: Tuple[int, ...] = (1, 5, 10)
    topk_interpolation: str = "voc"
    all_interpolation: str = "none"
    topk_normalization: str = "min_k_r"
    ties: str = "grouped"
    average: str = "query"
    similarity: str = "cosine"

    def __post_init__(self) -> None:
        for value, allowed, name in ((self.topk_interpolation, INTERPOLATIONS, "topk_interpolation"),
                                     (self.all_interpolation, INTERPOLATIONS, "all_interpolation"),
                                     (self.topk_normalization, NORMALIZATIONS, "topk_normalization"),
                                     (self.ties, TIE_POLICIES, "ties"), (self.average, AVERAGES, "average")):
            if value not in allowed:
                raise ConfigError(f"protocol {name}={value!r}; choose one of: {', '.join(allowed)}")
        if any(k < 1 for k in (*self.map_k, *self.prec_k, *self.acc_k)):
            raise ConfigError("protocol cut-offs K must be >= 1")

    @classmethod
    def from_eval_config(cls, cfg: Any) -> "Protocol":
        """Build from an :class:`~sbir_bench.config.EvalConfig`."""
        return cls(map_k=tuple(cfg.map_k), prec_k=tuple(cfg.prec_k), acc_k=tuple(cfg.acc_k),
                   topk_interpolation=cfg.topk_interpolation, all_interpolation=cfg.all_interpolation,
                   topk_normalization=cfg.topk_normalization,
                   ties=cfg.ties, average=cfg.average)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update({k: list(v) for k, v in d.items() if isinstance(v, tuple)})
        d["map_all"] = ("uninterpolated, tied scores grouped (= sklearn average_precision_score)"
                        if self.all_interpolation == "none" else f"VOC-interpolated, ties {self.ties} (SAKE)")
        return d
