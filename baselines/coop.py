"""CoOp: Context Optimization (Zhou, Yang, Loy, Liu; "Learning to Prompt for Vision-Language Models", IJCV 2022).

CoOp learns ``n_ctx`` continuous context vectors (default 4, initialised from "a photo of a") that
replace the hand-written prompt of CLIP's text encoder; image and text encoders stay frozen. Here it
is trained, as in the paper, with cross-entropy of CLIP image-text logits over the *seen* classes,
using both sketches and photos as images.

Adapting it to retrieval. CoOp changes only the text side, so the frozen image embedding alone would
retrieve exactly like zero-shot CLIP. ``retrieval`` chooses how the learned prompts enter retrieval
(:mod:`sbir_bench.methods.class_probabilities`): ``fused`` (default, ``fusion_weight`` 0.5) joins the
image embedding with the class-probability vector over the gallery's class vocabulary, ``probs``
uses the probabilities alone, ``image`` the frozen image embedding (equals zero-shot CLIP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from sbir_bench.config import opt
from sbir_bench.errors import ConfigError
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.class_probabilities import RETRIEVAL_MODES, retrieval_embedding
from sbir_bench.methods.losses import clip_cross_entropy
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.text_prompts import ClassPrompts, ContextInit


@dataclass
class CoOpConfig:
    """Options of CoOp (defaults from the paper's unified-context setting).

    As in the reference code (``trainers/coop.py``), a ``ctx_init`` phrase sets the context length
    to its word count; without one, ``n_ctx`` random vectors are learned (default 16, CoOp's own).
    """

    n_ctx: Optional[int] = opt(None, "learned context vectors; None: the word count of ctx_init, or 16 random vectors "
                                     "without it", min=1)
    ctx_init: Optional[str] = opt("a photo of a", "the phrase the context starts from (None: random vectors)")
    retrieval: str = opt('fused', "image: the image embedding; fused / probs: with class probabilities over the "
                                  "gallery's classes (methods/class_probabilities.py)", choices=RETRIEVAL_MODES)
    fusion_weight: float = opt(0.5, "fused: the class probabilities' weight", min=0.0, max=1.0)


def coop_context(cfg, method: str = "coop") -> ContextInit:
    """The reference CoOp rule (also CoCoOp's): a phrase sets the context length to its word count,
    random vectors need ``n_ctx``; an ``n_ctx`` that contradicts the phrase is refused (one line)."""
    if cfg.ctx_init:
        phrase = cfg.ctx_init.replace("_", " ")
        words = len(phrase.split(" "))
        if cfg.n_ctx is not None and cfg.n_ctx != words:
            raise ConfigError(f"{method}: n_ctx={cfg.n_ctx} but ctx_init {phrase!r} has {words} words; the reference "
                              f"code learns one vector per word of the phrase: drop n_ctx, or set ctx_init: null "
                              f"for {cfg.n_ctx} random vectors")
        return ContextInit(words, phrase)
    return ContextInit(cfg.n_ctx if cfg.n_ctx is not None else 16)


def learned_text_context(method: Method, name: str) -> ContextInit:
    """CoOp's text side on ``method`` (CoOp and CoCoOp share it): text-only prompting of its CLIP
    (``prompted``), the learned context vectors (``ctx``) and the class prompts (``prompts``)."""
    method.prompted = PromptedCLIP(method.clip, vision=False)  # text prompts only: any image tower
    init = coop_context(method.config, name)
    method.ctx = nn.Parameter(init.vectors(method.prompted, method.backbone.tokenizer))
    method.prompts = ClassPrompts(method.backbone.tokenizer, init.prefix)
    return init


@METHODS.register("coop")
class CoOp(Method):
    description = "CoOp (IJCV'22): learned text context, CE over seen classes; retrieval fuses image + class probabilities"
    table_order = 30
    config_class = CoOpConfig
    uses_frozen_features = True

    @classmethod
    def check_config(cls, config: CoOpConfig, tokenizer) -> None:
        coop_context(config)

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        learned_text_context(self, "coop")
        self._vocab_text: Optional[torch.Tensor] = None

    def class_text(self, names: Sequence[str]) -> torch.Tensor:
        """Prompted, normalised text features of ``names`` (differentiable in the context)."""
        return self.prompted.encode_text(self.prompts.token_ids(names, self.device), self.ctx).float()

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        text = self.class_text(self.seen_names)
        images = torch.cat([batch.sketch, batch.positive])
        feats = self.batch_features(images, batch)
        ce = clip_cross_entropy(feats, text, torch.cat([batch.label, batch.label]), self.logit_scale)
        return {"loss": ce, "cls": ce.detach()}

    @torch.no_grad()
    def prepare_eval(self, class_names: Sequence[str]) -> None:
        self._vocab_text = self.class_text(class_names)

    @torch.no_grad()
    def embed_features(self, f: torch.Tensor, modality: str = "") -> torch.Tensor:
        return retrieval_embedding(f, self._vocab_text, self.logit_scale, self.config.retrieval,
                                   self.config.fusion_weight)
