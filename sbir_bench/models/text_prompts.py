"""Learnable text context shared by CoOp, MaPLe and SpLIP: ``[SOT] ctx_1..ctx_n <rest of the prompt> [EOT]``;
and ProS's and DePro's context in the middle of a sentence (:class:`DomainSentencePrompts`).

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
from ..errors import ConfigError
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


DOMAIN_SENTENCE = "a photo of {} from{} domain."  # ProS's and DePro's prompt: the context replaces the X's


class DomainSentencePrompts:
    """``"a photo of <class> from X..X domain."`` per class, the ``n`` X's replaced by learned context
    vectors in the middle of the sentence: the text prompt of ProS and of DePro (which forks ProS's
    code), one home for both. Token ids, context positions and end-of-text indices are computed once on
    the CPU (a meta-device estimate reads them)."""

    def __init__(self, tokenizer: Callable, class_names: Sequence[str], n: int, method: str) -> None:
        words = [class_text(name) for name in class_names]
        ids = tokenizer([DOMAIN_SENTENCE.format(w, " X" * n) for w in words]).cpu()
        start = tokenizer([f"a photo of {w} from" for w in words]).cpu().argmax(dim=-1)
        eot = ids.argmax(dim=-1)
        if bool((eot != start + n + 2).any()):  # "X"*n, "domain", "." after the prefix: else it was cut
            bad = words[int(torch.nonzero(eot != start + n + 2)[0])]
            raise ConfigError(f"{method}: the prompt of class {bad!r} does not fit the text encoder's "
                              f"{ids.shape[1]} tokens with {n} context vectors; lower method_config.n_ctx")
        offset = torch.arange(ids.shape[1], device="cpu") - start[:, None]
        self.ids, self.eot, self.prefix_index = ids, eot, start
        self.ctx_index = torch.where((offset >= 0) & (offset < n), offset, torch.full_like(offset, -1))

    def encode(self, prompted: PromptedCLIP, ctx: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """Text features (not normalised) of every class prompt with context ``ctx`` (n, Dt), through
        ``projection`` (the method's own copy of CLIP's text projection)."""
        weight = prompted.clip.token_embedding.weight
        x = prompted.token_embeddings(self.ids.to(weight.device))
        index = self.ctx_index.to(weight.device)
        x = torch.where((index >= 0)[..., None], ctx.to(x.dtype)[index.clamp(min=0)], x)
        return prompted.encode_text_embeddings(x, self.eot, projection, normalize=False)
