"""Learnable text context shared by CoOp, MaPLe and SpLIP: ``[SOT] ctx_1..ctx_n <suffix with class> [EOT]``."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .prompted import PromptedCLIP


def init_context(prompted: PromptedCLIP, tokenizer: Callable, n_ctx: int, init: Optional[str]) -> torch.Tensor:
    """(n_ctx, D) context vectors: the token embeddings of ``init``'s first n_ctx words, else N(0, 0.02).

    CoOp and MaPLe initialise from "a photo of a" (CoOp: all 4 words; MaPLe, n_ctx=2: "a photo").
    """
    if init:
        ids = tokenizer([init])
        n_words = int((ids[0] > 0).sum()) - 2  # minus SOT and EOT
        if n_words >= n_ctx:
            with torch.no_grad():
                return prompted.token_embeddings(ids)[0, 1: 1 + n_ctx].detach().clone().float()
    return torch.randn(n_ctx, prompted.text_width) * 0.02


class ClassPrompts(nn.Module):
    """Token ids of ``"X .. X <suffix(class)>"`` for a class vocabulary; the X slots take learned context."""

    def __init__(self, tokenizer: Callable, n_ctx: int, suffix_template: str = "{}.") -> None:
        super().__init__()
        self.tokenizer, self.n_ctx, self.suffix_template = tokenizer, n_ctx, suffix_template
        self._cache: Dict[Tuple[Tuple[str, ...], str], torch.Tensor] = {}

    def token_ids(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        """Token ids per class, tokenised once per vocabulary (training asks for the same one every step)."""
        key = (tuple(class_names), str(device))
        if key not in self._cache:
            prefix = " ".join(["X"] * self.n_ctx)
            texts = [f"{prefix} {self.suffix_template.format(c.replace('_', ' '))}" for c in class_names]
            self._cache[key] = self.tokenizer(texts).to(device)
        return self._cache[key]
