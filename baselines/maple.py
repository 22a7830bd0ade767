"""MaPLe: Multi-modal Prompt Learning (Khattak, Rasheed, Maaz, Khan, Khan; CVPR 2023).

MaPLe learns *deep* text prompts (length ``n_ctx`` = 2, in the first ``depth`` = 9 transformer layers)
and derives the vision prompts of every such layer from the text prompts of the same layer through a
linear coupling function F_i: text width -> vision width, so the two branches are learned jointly.
Layer 0's text prompts are the context vectors (initialised from "a photo", the first two words of
"a photo of a"; the remaining words "of a" stay as fixed tokens before the class name); deeper text
prompts start from N(0, 0.02). Vision prompts are appended after the patch tokens and replaced at
each prompted layer, text prompts sit right after the start token, as in the reference code.

Adaptation to SBIR: trained, as in the paper, with cross-entropy of CLIP image-text logits over the
seen classes, with sketches and photos both used as images; retrieval uses the prompted image
embeddings (one set of prompts for both modalities, cosine similarity); ``retrieval: fused`` or
``probs`` adds the class-probability vector over the gallery's classes, as CoOp's retrieval does
(:mod:`sbir_bench.methods.class_probabilities`). As in the reference code,
prompt layer i of the text tower is coupled to layer i of the vision tower (same index, also when the
towers differ in depth, e.g. ViT-L-14's 24 visual and 12 text layers); ``depth`` is clamped, with a
log line, to the shallower tower (the bundled 4-layer ``sbir-tiny`` uses 4).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sbir_bench.config import opt
from sbir_bench.errors import ConfigError
from sbir_bench.log import get_logger
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.class_probabilities import RETRIEVAL_MODES, retrieval_embedding
from sbir_bench.methods.losses import clip_cross_entropy
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.text_prompts import (
    INIT_STD,
    ClassPrompts,
    ContextInit,
    phrase_tokens,
)

log = get_logger(__name__)


@dataclass
class MaPLeConfig:
    """Options of MaPLe (paper defaults for ViT-B/16: depth 9, 2 tokens, init "a photo of a")."""

    n_ctx: int = opt(2, "learned context tokens per prompted layer", min=1)
    depth: int = opt(9, "prompted layers (capped at the towers' depth)", min=1)
    ctx_init: Optional[str] = opt("a photo of a", "the phrase the first layer's context starts from (None: random)")
    retrieval: str = opt('image', "image: the image embedding; fused / probs: with class probabilities over the "
                                  "gallery's classes (methods/class_probabilities.py)", choices=RETRIEVAL_MODES)
    fusion_weight: float = opt(0.5, "fused: the class probabilities' weight", min=0.0, max=1.0)


MAX_PHRASE_CTX = 4  # the reference uses ctx_init only when n_ctx <= 4


def maple_context(cfg: MaPLeConfig, tokenizer) -> ContextInit:
    """The reference MaPLe rule (``trainers/maple.py``): the phrase's first ``n_ctx`` tokens when
    ``n_ctx <= 4``, else ``n_ctx`` random vectors. A phrase shorter than ``n_ctx`` tokens is refused:
    the reference would then overwrite the class name's first tokens with learned vectors."""
    if not cfg.ctx_init or cfg.n_ctx > MAX_PHRASE_CTX:
        if cfg.ctx_init:
            log.info(f"maple: n_ctx={cfg.n_ctx} > {MAX_PHRASE_CTX}: ctx_init is ignored and the context is random, "
                     f"as in the reference code")
        return ContextInit(cfg.n_ctx)
    phrase = cfg.ctx_init.replace("_", " ")
    if phrase_tokens(tokenizer, phrase) < cfg.n_ctx:
        raise ConfigError(f"maple: ctx_init {phrase!r} has fewer than n_ctx={cfg.n_ctx} tokens; the reference code "
                          f"would overwrite the class name with context vectors: use a longer phrase or a smaller n_ctx")
    return ContextInit(cfg.n_ctx, phrase)


def coupling_layers(text_width: int, vision_width: int, depth: int) -> nn.ModuleList:
    """F_0 .. F_{depth-1}: text -> vision prompt maps. As in the reference code, the deep maps start as
    copies of one randomly initialised layer (``_get_clones``); F_0 has its own initialisation."""
    first = nn.Linear(text_width, vision_width)
    deep = nn.Linear(text_width, vision_width)
    return nn.ModuleList([first, *[copy.deepcopy(deep) for _ in range(depth - 1)]])


@METHODS.register("maple")
class MaPLe(Method):
    description = "MaPLe (CVPR'23): deep text prompts coupled to vision prompts by linear maps, CE over seen classes"
    table_order = 50
    config_class = MaPLeConfig
    prompts_image_encoder = True

    @classmethod
    def check_config(cls, config: MaPLeConfig, tokenizer) -> None:
        maple_context(config, tokenizer)

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        self.prompted = PromptedCLIP(self.clip)
        p, cfg = self.prompted, self.config
        self.depth = min(cfg.depth, p.vision_layers, p.text_layers)  # layer i of both towers is coupled
        if cfg.depth > self.depth:
            log.info(f"maple: depth={cfg.depth} > the backbone's {min(p.vision_layers, p.text_layers)} layers "
                     f"(visual {p.vision_layers}, text {p.text_layers}): depth {self.depth} is used")
        init = maple_context(cfg, backbone.tokenizer)
        self.ctx = nn.Parameter(init.vectors(p, backbone.tokenizer))
        self.deep_text = nn.ParameterList(
            [nn.Parameter(torch.randn(cfg.n_ctx, p.text_width) * INIT_STD) for _ in range(self.depth - 1)])
        self.coupling = coupling_layers(p.text_width, p.vision_width, self.depth)
        self.prompts = ClassPrompts(backbone.tokenizer, init.prefix)
        self._vocab_text: Optional[torch.Tensor] = None

    def prompt_stacks(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(text prompts per layer, vision prompts per layer), layer 0 first."""
        text = [self.ctx, *self.deep_text]
        vision = [f(t) for f, t in zip(self.coupling, text)]
        return text, vision

    def _encode_images(self, images: torch.Tensor, vision: List[torch.Tensor]) -> torch.Tensor:
        return self.prompted.encode_image(images, vision[0], [None, *vision[1:]]).float()

    def class_text(self, names: Sequence[str], text: List[torch.Tensor]) -> torch.Tensor:
        ids = self.prompts.token_ids(names, self.device)
        return self.prompted.encode_text(ids, text[0], [None, *text[1:]]).float()

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        text, vision = self.prompt_stacks()
        feats = self._encode_images(torch.cat([batch.sketch, batch.positive]), vision)
        ce = clip_cross_entropy(feats, self.class_text(self.seen_names, text), torch.cat([batch.label, batch.label]),
                                self.logit_scale)
        return {"loss": ce, "cls": ce.detach()}

    @torch.no_grad()
    def prepare_eval(self, class_names: Sequence[str]) -> None:
        if self.config.retrieval != "image":
            self._vocab_text = self.class_text(class_names, self.prompt_stacks()[0])

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        feats = self._encode_images(images, self.prompt_stacks()[1])
        return retrieval_embedding(feats, self._vocab_text, self.logit_scale, self.config.retrieval,
                                   self.config.fusion_weight)

    embed_sketches = _embed
    embed_photos = _embed
