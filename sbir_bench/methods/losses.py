"""Loss terms shared by methods (kept here so SpLIP and the baselines optimise the same quantities)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                   margin: float | torch.Tensor) -> torch.Tensor:
    """mean(max(0, d(a, p) - d(a, n) + margin)) with cosine distance d = 1 - cos on normalised inputs.

    ``margin`` may be a per-sample tensor (SpLIP's adaptive margin); CLIP-AT uses 0.2.
    """
    d_pos = 1.0 - (anchor * positive).sum(-1)
    d_neg = 1.0 - (anchor * negative).sum(-1)
    return F.relu(d_pos - d_neg + margin).mean()


def clip_cross_entropy(features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                       logit_scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of CLIP logits (scaled cosine of normalised image and class-text features)."""
    logits = logit_scale * features @ text_features.t()
    return F.cross_entropy(logits.float(), labels)
