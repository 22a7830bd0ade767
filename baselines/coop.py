"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu; "Learning to Prompt for Vision-Language Models", IJCV 2022).

CoOp learns ``n_ctx`` continuous context vectors (default 4, initialised from "a photo of a") that
replace the hand-written prompt of CLIP's text encoder; image and text encoders stay frozen. Here it
is trained, as in the paper, with cross-entropy of CLIP image-text logits over the *seen* classes,
using both sketches and photos as images.

Adapting it to retrieval. CoOp changes only the text side, so the frozen image embedding alone would
retrieve exactly like zero-shot CLIP. ``retrieval`` chooses how the learned prompts enter retrieval:

* ``fused`` (default): ``[sqrt(1 - w) f, sqrt(w) p]`` where ``f`` is the L2-normalised image embedding
  and ``p`` the L2-normalised softmax class-probability vector over the *gallery's* class vocabulary
  (prompted text features, CLIP temperature). Cosine similarity of two fused vectors is then
  ``(1 - w) cos(f, f') + w cos(p, p')``: visual similarity plus agreement of predicted classes.
  ``w = fusion_weight`` (0.5).
* ``probs``: the class-probability vector alone (retrieval by predicted-class agreement).
* ``image``: the frozen image embedding (equals zero-shot CLIP; a sanity baseline).

The vocabulary is the set of class names in the gallery being searched (unseen classes in ZS, seen +
unseen in GZS), which the method receives through ``prepare_eval``; no test label is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sbir_bench.errors import ConfigError
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.losses import clip_cross_entropy
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.text_prompts import ClassPrompts, ContextInit

RETRIEVAL_MODES = ("fused", "probs", "image")


@dataclass
class CoOpConfig:
    """Options of CoOp (defaults from the paper's unified-context setting).

    As in the reference code (``trainers/coop.py``), a ``ctx_init`` phrase sets the context length
    to its word count; without one, ``n_ctx`` random vectors are learned (default 16, CoOp's own).
    """

    n_ctx: Optional[int] = None  # None: the word count of ctx_init, or 16 random vectors without it
    ctx_init: Optional[str] = "a photo of a"
    retrieval: str = "fused"
    fusion_weight: float = 0.5


def coop_context(cfg: CoOpConfig) -> ContextInit:
    """The reference CoOp rule; an ``n_ctx`` that contradicts the phrase is refused (one line)."""
    if cfg.ctx_init:
        phrase = cfg.ctx_init.replace("_", " ")
        words = len(phrase.split(" "))
        if cfg.n_ctx is not None and cfg.n_ctx != words:
            raise ConfigError(f"coop: n_ctx={cfg.n_ctx} but ctx_init {phrase!r} has {words} words; the reference CoOp "
                              f"learns one vector per word of the phrase: drop n_ctx, or set ctx_init: null for "
                              f"{cfg.n_ctx} random vectors")
        return ContextInit(words, phrase)
    return ContextInit(cfg.n_ctx if cfg.n_ctx is not None else 16)


@METHODS.register("coop")
class CoOp(Method):
    description = "CoOp (IJCV'22): learned text context, CE over seen classes; retrieval fuses image + class probabilities"
    config_class = CoOpConfig
    uses_frozen_features = True

    @classmethod
    def check_config(cls, config: CoOpConfig, tokenizer) -> None:
        if config.retrieval not in RETRIEVAL_MODES:
            raise ConfigError(f"coop retrieval={config.retrieval!r}; choose one of: {', '.join(RETRIEVAL_MODES)}")
        if not 0.0 <= config.fusion_weight <= 1.0:
            raise ConfigError(f"coop fusion_weight={config.fusion_weight}: must be in [0, 1]")
        coop_context(config)

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        self.check_config(self.config, backbone.tokenizer)
        self.prompted = PromptedCLIP(self.clip, vision=False)  # text prompts only: any image tower
        init = coop_context(self.config)
        self.ctx = nn.Parameter(init.vectors(self.prompted, backbone.tokenizer))
        self.prompts = ClassPrompts(backbone.tokenizer, init.prefix)
        self._vocab_text: Optional[torch.Tensor] = None

    def class_text(self, names: Sequence[str]) -> torch.Tensor:
        """Prompted, normalised text features of ``names`` (differentiable in the context)."""
        return self.prompted.encode_text(self.prompts.token_ids(names, self.device), self.ctx).float()

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        text = self.class_text(self.seen_names)
        images = torch.cat([batch.sketch, batch.positive])
        feats = images if batch.features else self.frozen_image_features(images)
        ce = clip_cross_entropy(feats, text, torch.cat([batch.label, batch.label]), self.logit_scale)
        return {"loss": ce, "cls": ce.detach()}

    @torch.no_grad()
    def prepare_eval(self, class_names: Sequence[str]) -> None:
        self._vocab_text = self.class_text(class_names)

    @torch.no_grad()
    def embed_features(self, f: torch.Tensor, modality: str = "") -> torch.Tensor:
        if self.config.retrieval == "image":
            return f
        if self._vocab_text is None:
            raise RuntimeError("CoOp.prepare_eval(class_names) must be called before embedding")
        p = F.normalize((self.logit_scale * f @ self._vocab_text.t()).softmax(-1), dim=-1)
        if self.config.retrieval == "probs":
            return p
        w = self.config.fusion_weight
        return torch.cat([math.sqrt(1.0 - w) * f, math.sqrt(w) * p], dim=-1)
