"""Loss terms shared by methods (kept here so SpLIP and the baselines optimise the same quantities; DePro's DaTri)."""

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


def domain_aware_triplet(features: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor,
                         margin: float = 0.5) -> torch.Tensor:
    """DePro's DaTri over a batch of normalised ``features``: for each anchor, the hardest positive is its
    lowest-scoring same-class sample *from another domain*, the hardest negative its highest-scoring
    other-class sample from any domain (score: the dot product); the loss is the mean over all anchors of
    ``max(0, neg - pos + margin)``. An anchor without a cross-domain positive, or without a negative,
    adds 0 but still counts in the mean (as ``domain_aware_triplet_loss_v2`` does with its 1e15 fill).

    >>> f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> round(float(domain_aware_triplet(f, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))), 4)
    0.2333
    """
    score = features @ features.t()
    same_class = labels[:, None] == labels[None, :]
    positive = same_class & (domains[:, None] != domains[None, :])
    inf = torch.tensor(float("inf"), dtype=score.dtype, device=score.device)
    hardest_pos = torch.where(positive, score, inf).amin(dim=1)
    hardest_neg = torch.where(~same_class, score, -inf).amax(dim=1)
    return F.relu(hardest_neg - hardest_pos + margin).mean()  # an infinite side (none there) gives 0
