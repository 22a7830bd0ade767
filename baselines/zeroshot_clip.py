"""Zero-shot CLIP (Radford et al., ICML 2021): the frozen image encoder, no training.

Sketches and photos are embedded by the same frozen CLIP image tower and retrieved by cosine
similarity. It is the floor every prompt-learning method must clear.
"""

from __future__ import annotations

import torch

from sbir_bench.methods import METHODS, Method


@METHODS.register("zeroshot-clip")
class ZeroShotCLIP(Method):
    description = "frozen CLIP image encoder for sketches and photos, cosine retrieval, no training"
    table_order = 10
    trainable = False
    uses_frozen_features = True

    def embed_features(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        return features
