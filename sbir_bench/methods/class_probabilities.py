"""Retrieval through predicted classes, for prompt learners whose training shapes class texts.

CoOp changes only the text side, and MaPLe's cross-entropy mostly moves its class texts: with the
image embedding alone, what they learned barely reaches retrieval. ``retrieval`` (a method option)
chooses how the learned class texts enter it, over the class vocabulary of the gallery being
searched (given through ``Method.prepare_eval``; no test label is used):

* ``fused``: ``[sqrt(1 - w) f, sqrt(w) p]`` with ``f`` the L2-normalised image embedding and ``p`` the
  L2-normalised softmax class-probability vector (CLIP temperature); the cosine of two fused
  vectors is ``(1 - w) cos(f, f') + w cos(p, p')``: visual similarity plus agreement of predicted
  classes, ``w = fusion_weight``;
* ``probs``: the class-probability vector alone;
* ``image``: the image embedding alone.

>>> import torch
>>> f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
>>> retrieval_embedding(f, torch.eye(2), torch.tensor(1.0), "fused", 0.5).shape
torch.Size([1, 4])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RETRIEVAL_MODES = ("fused", "probs", "image")


def retrieval_embedding(features: torch.Tensor, vocab_text: torch.Tensor | None, logit_scale: torch.Tensor,
                        mode: str, fusion_weight: float) -> torch.Tensor:
    """The retrieval vector of normalised image ``features`` under ``mode`` (see the module docstring).

    ``vocab_text`` is (C, E), one text per class, or (B, C, E), texts conditioned on each image (CoCoOp).
    """
    if mode == "image":
        return features
    if vocab_text is None:
        raise RuntimeError("prepare_eval(class_names) must be called before embedding with class probabilities")
    logits = features @ vocab_text.t() if vocab_text.dim() == 2 else torch.einsum("be,bce->bc", features, vocab_text)
    p = F.normalize((logit_scale * logits).softmax(-1), dim=-1)
    if mode == "probs":
        return p
    return torch.cat([math.sqrt(1.0 - fusion_weight) * features, math.sqrt(fusion_weight) * p], dim=-1)
