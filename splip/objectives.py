"""SpLIP's training signals beyond classification: the adaptive triplet margin and the jigsaw task.

* Adaptive margin: for an anchor sketch of class c and a negative photo of class c', the triplet
  margin grows with how different the classes are in CLIP's text space,
  ``mu(c, c') = scale * (1 - cos(t_c, t_c'))`` with t the frozen CLIP embedding of "a photo of a
  {class}." Semantically close classes (cat / dog) get a small margin, unrelated ones a large one.
  A same-class negative (fine-grained training) has no semantic distance; it gets the fixed margin.
* Conditional cross-modal jigsaw (the figure's panel d): a sketch is cut into a g x g grid of
  tiles, shuffled by one of K fixed permutations and encoded; a small head F_js predicts which
  permutation was applied from the shuffled sketch's embedding and an unshuffled photo's. With the
  positive photo (same instance or class) the order should be predictable: cross-entropy. With the
  negative photo it is pushed to be unpredictable by the bounded term p(true permutation | negative)
  in [0, 1] (:func:`conditional_jigsaw`).
"""

from __future__ import annotations

import itertools
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def adaptive_margin_matrix(class_text: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(C, C) margins ``scale * (1 - cos)`` between the (normalised) class text embeddings."""
    text = F.normalize(class_text.float(), dim=-1)
    return scale * (1.0 - text @ text.t())


def triplet_margins(matrix: torch.Tensor, labels: torch.Tensor, negative_labels: torch.Tensor,
                    same_class_margin: float) -> torch.Tensor:
    """Per-sample margins: the adaptive one between different classes, ``same_class_margin`` otherwise."""
    margins = matrix[labels, negative_labels]
    return torch.where(labels == negative_labels, torch.full_like(margins, same_class_margin), margins)


def jigsaw_permutations(grid: int, count: int, seed: int = 0) -> torch.Tensor:
    """K permutations of grid*grid tiles, far apart in Hamming distance (greedy, seeded), identity excluded.

    Distinct, well-separated permutations make the task solvable from layout cues and not from
    near-duplicate classes (Noroozi & Favaro, ECCV 2016, use the same maximal-Hamming selection).
    """
    n = grid * grid
    rng = np.random.default_rng(seed)
    if n <= 8:
        pool = np.array([p for p in itertools.permutations(range(n)) if p != tuple(range(n))])
    else:
        pool = np.array([rng.permutation(n) for _ in range(max(2000, 20 * count))])
        pool = np.unique(pool[(pool != np.arange(n)).any(1)], axis=0)
    count = min(count, len(pool))
    chosen: List[int] = [int(rng.integers(len(pool)))]
    distance = (pool != pool[chosen[0]]).sum(1)
    while len(chosen) < count:
        nxt = int(distance.argmax())
        chosen.append(nxt)
        distance = np.minimum(distance, (pool != pool[nxt]).sum(1))
    return torch.as_tensor(pool[chosen], dtype=torch.long)


class JigsawHead(nn.Module):
    """F_js: [shuffled-sketch embedding, photo embedding, their product] -> permutation logits."""

    def __init__(self, dim: int, n_permutations: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, n_permutations))

    def forward(self, shuffled_sketch: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([shuffled_sketch, photo, shuffled_sketch * photo], dim=-1))


def conditional_jigsaw(head: "JigsawHead", shuffled: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                       target: torch.Tensor, negative_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """L_cjs = CE(F_js(s', p+), pi) + w * mean softmax(F_js(s', p-))[pi]; the second term is bounded in [0, 1]
    (it cannot run away the way a maximised cross-entropy would). Returns the terms and accuracies."""
    r_pos = head(shuffled, positive)
    loss = F.cross_entropy(r_pos, target)
    out = {"jigsaw_pos": loss.detach(), "jigsaw_acc": (r_pos.argmax(-1) == target).float().mean().detach()}
    if negative_weight:
        r_neg = head(shuffled, negative)
        p_true = r_neg.softmax(-1).gather(1, target[:, None]).mean()
        loss = loss + negative_weight * p_true
        out["jigsaw_neg"] = p_true.detach()
    out["jigsaw"] = loss
    return out
