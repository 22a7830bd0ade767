"""SpLIP's prompt blocks: how visual and textual prompts are generated from each other.

Notation follows docs/splip.md. With a frozen CLIP of vision width Dv and text width Dt, ``n``
prompt tokens and prompt depth J:

* ``B_v`` (text-guided visual prompts): a linear map Dt -> Dv applied to the frozen CLIP token
  embeddings of a modality phrase ("a sketch of a" / "a photo of a"), giving each modality its own
  first-layer visual prompts V_0^m.
* ``B_t`` (vision-guided text prompts): a linear map Dv -> Dt of the mean patch embedding E_0 of an
  image, added to the learnable text context T_0, so the text encoder runs with prompts that know
  the image.
* ``B_vt`` (visual-textual block): for every layer j < J-1, a linear map Dt -> Dv turning the text
  encoder's prompt-slot outputs at layer j into the visual prompts of layer j+1 (V_{j+1}).

Ablations: without ``B_t`` the text context is not conditioned on the image; without ``B_vt`` the
deeper visual prompts are free learnable parameters (VPT-deep) instead of being derived from text.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from sbir_bench.models import PromptedCLIP


class TextGuidedVisualPrompts(nn.Module):
    """B_v: modality phrase token embeddings (n, Dt) -> first-layer visual prompts (n, Dv)."""

    def __init__(self, text_width: int, vision_width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(text_width, vision_width)

    def forward(self, phrase_embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(phrase_embeddings)


class VisionGuidedTextPrompts(nn.Module):
    """B_t: mean patch embedding (B, Dv) -> per-image offset of the text context (B, n, Dt)."""

    def __init__(self, vision_width: int, text_width: int, n_ctx: int) -> None:
        super().__init__()
        self.n_ctx = n_ctx
        self.proj = nn.Linear(vision_width, text_width)
        nn.init.zeros_(self.proj.weight)  # start exactly at the unconditioned context
        nn.init.zeros_(self.proj.bias)

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        pooled = patch_embeddings[:, 1:].mean(1)  # patch tokens, class token excluded
        return self.proj(pooled).unsqueeze(1).expand(-1, self.n_ctx, -1)


class VisualTextualBlock(nn.Module):
    """B_vt: text prompt-slot outputs of layer j (B, n, Dt) -> visual prompts of layer j+1 (B, n, Dv)."""

    def __init__(self, text_width: int, vision_width: int, depth: int) -> None:
        super().__init__()
        self.maps = nn.ModuleList([nn.Linear(text_width, vision_width) for _ in range(depth - 1)])

    def forward(self, text_states: List[torch.Tensor]) -> List[torch.Tensor]:
        return [f(s) for f, s in zip(self.maps, text_states)]


class SpLIPPrompts(nn.Module):
    """All of SpLIP's learnable prompt machinery over one frozen CLIP."""

    def __init__(self, prompted: PromptedCLIP, ctx: torch.Tensor, phrases: torch.Tensor, depth: int,
                 use_bt: bool = True, use_bvt: bool = True) -> None:
        super().__init__()
        self.prompted = prompted
        n, dt, dv = ctx.shape[0], prompted.text_width, prompted.vision_width
        self.depth = depth
        self.ctx = nn.Parameter(ctx)                                     # T_0
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n, dt) * 0.02) for _ in range(depth - 1)])
        self.register_buffer("phrases", phrases, persistent=False)       # (2, n, Dt): sketch, photo
        self.b_v = TextGuidedVisualPrompts(dt, dv)
        self.b_t = VisionGuidedTextPrompts(dv, dt, n) if use_bt else None
        if use_bvt:
            self.b_vt: Optional[VisualTextualBlock] = VisualTextualBlock(dt, dv, depth)
            self.deep_visual = None
        else:
            self.b_vt = None
            self.deep_visual = nn.ParameterList([nn.Parameter(torch.randn(n, dv) * 0.02) for _ in range(depth - 1)])

    def text_stack(self) -> List[torch.Tensor]:
        """Text prompts per layer for the class-text encoder: T_0 (shared context) then T_1..T_{J-1}."""
        return [self.ctx, *self.deep_text]

    def visual_stack(self, modality: torch.Tensor, embeddings: torch.Tensor) -> tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        """(first-layer prompts, deep prompts per layer) for images of per-sample ``modality`` (0 sketch, 1 photo)."""
        batch = embeddings.shape[0]
        shallow = self.b_v(self.phrases)[modality.to(self.phrases.device)]
        if self.b_vt is None:
            deep = list(self.deep_visual)
        else:
            ctx = self.ctx.unsqueeze(0).expand(batch, -1, -1)
            if self.b_t is not None:
                ctx = ctx + self.b_t(embeddings)
            states = self.prompted.text_prompt_states(ctx, [None, *self.deep_text])
            deep = self.b_vt(states[: self.depth - 1])
        return shallow, [None, *deep]
