"""SpLIP's prompt blocks, as the paper's architecture figure draws them (docs/splip.md).

Notation of the figure; frozen CLIP with vision width Dv, text width Dt, text embedding size E, and
J prompted layers (all L layers by default):

* ``B_v`` (:class:`PhraseToVisualPrompts`): the modality phrase ("photo of a" / "sketch of a") ->
  ``n_vtg`` (4) visual tokens V^tg, present at every prompted visual layer.
* ``B_t`` (:class:`ImageToTextPrompts`): the image's patch embeddings E_0 -> ``n_text`` (4) text
  tokens T, which sit after the start token and enter every prompted text layer.
* ``B_vt`` (:class:`VisualTextualBlock`): the output of text layer j (its class-independent prefix:
  the T slots and the modality phrase) -> ``n_vms`` (2) visual tokens V^ms_j for visual layer j.

So visual layer j sees [class token, patches, V^tg, V^ms_j]: 4 + 2 prompt tokens.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn


class PhraseToVisualPrompts(nn.Module):
    """B_v: the frozen CLIP text embedding of a modality phrase (E) -> V^tg (n, Dv)."""

    def __init__(self, embed_dim: int, vision_width: int, n_tokens: int) -> None:
        super().__init__()
        self.n, self.width = n_tokens, vision_width
        self.proj = nn.Linear(embed_dim, n_tokens * vision_width)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, phrase_embedding: torch.Tensor) -> torch.Tensor:
        return self.proj(phrase_embedding).reshape(*phrase_embedding.shape[:-1], self.n, self.width)


class ImageToTextPrompts(nn.Module):
    """B_t: mean patch embedding of E_0 (Dv) -> T (n, Dt) = learned base tokens + an image-conditioned offset.

    The offset network is a bottleneck MLP (Dv -> Dv/16 -> n*Dt), the meta-network shape of CoCoOp;
    its last layer starts near zero (std 1e-3), so training starts close to the base tokens
    (initialised from a phrase) while gradients reach every layer from the first step.
    """

    def __init__(self, vision_width: int, text_width: int, base: torch.Tensor, hidden_ratio: int = 16) -> None:
        super().__init__()
        n = base.shape[0]
        self.n, self.width = n, text_width
        self.base = nn.Parameter(base.clone())
        hidden = max(8, vision_width // hidden_ratio)
        self.net = nn.Sequential(nn.Linear(vision_width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n * text_width))
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        pooled = patch_embeddings[:, 1:].mean(1)  # patch tokens, class token excluded
        return self.base + self.net(pooled.float()).reshape(-1, self.n, self.width)


class VisualTextualBlock(nn.Module):
    """B_vt: text layer j's prefix output (B, P, Dt) -> V^ms_j (B, n, Dv), for every prompted layer.

    One block serves every layer, as drawn: the prefix states are pooled into ``n`` groups (the
    prompt slots and phrase positions split evenly), mapped by one shared linear layer, and given a
    learned per-layer offset so that each visual layer receives its own tokens.
    """

    def __init__(self, text_width: int, vision_width: int, n_tokens: int, depth: int) -> None:
        super().__init__()
        self.n = n_tokens
        self.proj = nn.Linear(text_width, vision_width)
        self.layer_offset = nn.Parameter(torch.zeros(depth, n_tokens, vision_width))
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def pool(self, states: torch.Tensor) -> torch.Tensor:
        """(B, P, Dt) prefix states (start token dropped) -> (B, n, Dt), mean of n contiguous groups."""
        slots = states[:, 1:]
        groups = torch.tensor_split(torch.arange(slots.shape[1], device=slots.device), self.n)
        return torch.stack([slots[:, g].mean(1) for g in groups], dim=1)

    def forward(self, layer_states: List[torch.Tensor]) -> List[torch.Tensor]:
        return [self.proj(self.pool(s).float()) + self.layer_offset[j] for j, s in enumerate(layer_states)]
