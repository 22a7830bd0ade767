"""Learnable text context shared by CoOp, MaPLe and SpLIP: ``[SOT] ctx_1..ctx_n <rest of the prompt> [EOT]``.

Class prompts are tokenised as ``"<prefix> <class text>."``; the learned context replaces token
positions 1..n. With a phrase initialisation the prefix is the phrase itself (so its words beyond
the n learned slots stay as fixed text, as in the reference CoOp and MaPLe code), otherwise it is
``"X X .. X"`` (n placeholders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.classnames import class_text
from .prompted import PromptedCLIP

INIT_STD = 0.02  # random context, as nn.init.normal_(std=0.02) in CoOp and MaPLe


@dataclass(frozen=True)
class ContextInit:
    """How a learned context starts: ``n`` vectors, from ``phrase`` (its first n tokens) or random."""

    n: int
    phrase: str = ""  # "" = random init

    @property
    def prefix(self) -> str:
        """The text before the class name in every class prompt."""
        return self.phrase or " ".join(["X"] * self.n)

    def vectors(self, prompted: PromptedCLIP, tokenizer: Callable) -> torch.Tensor:
        """(n, D) initial context: the phrase's token embeddings at positions 1..n, else N(0, 0.02)."""
        if not self.phrase:
            return torch.randn(self.n, prompted.text_width) * INIT_STD
        with torch.no_grad():
            return prompted.token_embeddings(tokenizer([self.phrase]))[0, 1: 1 + self.n].detach().clone().float()


def phrase_tokens(tokenizer: Callable, phrase: str) -> int:
    """How many BPE tokens ``phrase`` takes (start and end tokens excluded)."""
    return int((tokenizer([phrase])[0] > 0).sum()) - 2


def ids_device(device: torch.device | str) -> torch.device:
    """Where token ids live for a model on ``device``: there, except for a model on the meta device (a
    resource estimate, sizing.py), whose ids stay real on the CPU: prompt lengths are read from them."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "meta" else device


class ClassPrompts(nn.Module):
    """Token ids of ``"<prefix> <class text>."`` for a class vocabulary (positions 1..n take the context)."""

    def __init__(self, tokenizer: Callable, prefix: str) -> None:
        super().__init__()
        self.tokenizer, self.prefix = tokenizer, prefix
        self._cache: Dict[Tuple[Tuple[str, ...], str], torch.Tensor] = {}
        self._suffix_cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def texts(self, class_names: Sequence[str]) -> list:
        """The prompt of each class, as text (the learned context overwrites the first tokens)."""
        return [f"{self.prefix} {class_text(c)}." for c in class_names]

    def token_ids(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        """Token ids per class, tokenised once per vocabulary (training asks for the same one every step)."""
        key = (tuple(class_names), str(device))
        if key not in self._cache:
            self._cache[key] = self.tokenizer(self.texts(class_names)).to(ids_device(device))
        return self._cache[key]

    def prefix_ids(self, length: Optional[int] = None) -> torch.Tensor:
        """(1, L) token ids of ``"[SOT] <prefix>"`` (end token excluded), or their first ``length``: the
        part every class prompt shares. A compact copy, fit to be a buffer (DDP's start-up broadcast
        refuses a buffer that is a view of the 77-token row)."""
        ids = self.tokenizer([self.prefix])[0]
        return ids[: int(ids.argmax()) if length is None else length].clone().unsqueeze(0)

    def suffix_ids(self, class_names: Sequence[str], device: torch.device,
                   start: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(token ids from position ``start`` to the last end token (C, S), each class's end-token index
        within them (C,)): the part of every prompt after a shared prefix of ``start`` tokens, as
        :meth:`PromptedCLIP.encode_text_after` takes it."""
        key = (tuple(class_names), str(device), start)
        if key not in self._suffix_cache:  # sliced once per vocabulary: no device sync per step
            ids = self.token_ids(class_names, device)  # real ids even for a meta-device model
            eot = ids.argmax(-1) - start
            self._suffix_cache[key] = (ids[:, start: start + int(eot.max()) + 1], eot)
        return self._suffix_cache[key]
