"""Linear probe on frozen CLIP image features (Radford et al., ICML 2021, Sec. 3.2 "linear probe").

CLIP's linear probe fits a classifier on frozen image features. For sketch-photo retrieval the probe
must produce an *embedding*, so here a linear projection W maps the frozen image feature of a sketch
or a photo to the retrieval space. As in MAE's linear probing protocol (He et al., CVPR 2022), the
frozen features are first standardised by a BatchNorm without affine parameters (its statistics those
of the whole batch under DDP: :class:`~sbir_bench.training.distributed.GlobalBatchNorm1d`): CLIP features share
a large common component, and without it a linear map needs huge weights (and many steps) to turn
the small class-dependent part into distinct embeddings. W starts as the identity. Trained with

* a classification term: cross-entropy of a linear classifier over the seen classes on the projected
  sketch and photo features (what makes it a probe), and
* a triplet term: cosine triplet loss (margin ``margin``) on (sketch, positive photo, negative photo),
  the metric-learning objective of SBIR.

One projection is shared by both modalities; retrieval is cosine similarity in the projected space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from sbir_bench.config import opt
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.losses import cosine_triplet
from sbir_bench.training.distributed import GlobalBatchNorm1d


@dataclass
class LinearProbeConfig:
    """Options of the linear probe."""

    margin: float = opt(0.2, "of the cosine triplet loss", min=0.0)
    cls_weight: float = opt(1.0, "loss weight", min=0.0)
    triplet_weight: float = opt(1.0, "loss weight", min=0.0)
    temperature: float = opt(0.07, "of the classification cross-entropy", positive=True)
    augment: bool = opt(False, "False: train on frozen features of the unaugmented images (cached, as CLIP's "
                               "linear-probe protocol); True: through the backbone on augmented images (no cache)")


@METHODS.register("linear-probe")
class LinearProbe(Method):
    description = "linear projection of frozen CLIP image features, classification + triplet loss"
    table_order = 20
    config_class = LinearProbeConfig
    uses_frozen_features = True

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        dim = backbone.embed_dim
        self.standardise = GlobalBatchNorm1d(dim, affine=False, eps=1e-6)
        self.projection = nn.Linear(dim, dim)
        nn.init.eye_(self.projection.weight)
        nn.init.zeros_(self.projection.bias)
        self.classifier = nn.Linear(dim, len(self.seen), bias=False)
        with torch.no_grad():  # start from CLIP's zero-shot classifier of the seen classes
            self.classifier.weight.copy_(self.frozen_class_text(self.seen_names))

    @classmethod
    def split_invariant(cls, config, stage: str = "", micro_batch: int = 1) -> bool:
        """No: the BatchNorm standardises with the statistics of the batch it is handed, so each
        micro-batch is standardised by its own."""
        return False

    def trains_on_frozen_features(self) -> bool:
        return not self.config.augment

    def embed_features(self, features: torch.Tensor, modality: str = "") -> torch.Tensor:
        return F.normalize(self.projection(self.standardise(features)), dim=-1)

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        sk, pos, neg = (self.embed_features(self.batch_features(x, batch))
                        for x in (batch.sketch, batch.positive, batch.negative))
        weights = F.normalize(self.classifier.weight, dim=-1)
        logits = torch.cat([sk, pos, neg]) @ weights.t() / self.config.temperature
        labels = torch.cat([batch.label, batch.label, batch.negative_label])
        cls = F.cross_entropy(logits, labels)
        tri = cosine_triplet(sk, pos, neg, self.config.margin)
        total = self.config.cls_weight * cls + self.config.triplet_weight * tri
        return {"loss": total, "cls": cls.detach(), "triplet": tri.detach()}
