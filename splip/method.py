"""SpLIP (Singha, Jha, Gupta, Singla, Banerjee; "Elevating All Zero-Shot Sketch-Based Image Retrieval
Through Multimodal Prompt Learning", ECCV 2024, arXiv 2407.04207), registered as the method ``splip``.

Over a frozen CLIP, SpLIP learns bi-directional multimodal prompts (see :mod:`splip.blocks`): each
modality's first-layer visual prompts come from text (B_v), the text context is conditioned on the
image (B_t), and the text encoder's prompt outputs at every layer become the next visual layer's
prompts (B_vt). It is trained with

    L = lambda_cls * L_cls + lambda_triplet * L_tri + lambda_jigsaw * L_js

* L_cls: cross-entropy of CLIP logits between sketch / photo embeddings and the prompted class-text
  embeddings of the seen classes;
* L_tri: cosine triplet loss (sketch, positive photo, negative photo) with the adaptive margin of
  :mod:`splip.objectives` (fixed margin as an ablation);
* L_js: conditional cross-modal jigsaw (predict the tile permutation of a shuffled sketch given the
  unshuffled photo).

Sketches and photos are embedded with their modality's prompts; retrieval is cosine similarity.
docs/splip.md maps every part to the paper and records each choice the paper leaves open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.losses import clip_cross_entropy, cosine_triplet
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.text_prompts import ClassPrompts, ContextInit

from .blocks import SpLIPPrompts
from .objectives import JigsawHead, adaptive_margin_matrix, jigsaw_permutations, shuffle_tiles, triplet_margins

SKETCH, PHOTO = 0, 1


@dataclass
class SpLIPConfig:
    """SpLIP's options; docs/splip.md justifies each default and names the paper section."""

    n_ctx: int = 4
    ctx_init: Optional[str] = "a photo of a"
    depth: int = 9
    sketch_phrase: str = "a sketch of a"
    photo_phrase: str = "a photo of a"
    use_bt: bool = True            # ablation "no B_t": text context not conditioned on the image
    use_bvt: bool = True           # ablation "no B_vt": deep visual prompts are free parameters
    adaptive_margin: bool = True   # ablation "fixed margin": margin = `margin` for every triplet
    margin: float = 0.2
    margin_scale: float = 1.0
    jigsaw: bool = True            # ablation "no jigsaw": no F_js, no L_js
    jigsaw_grid: int = 3
    jigsaw_permutations: int = 30
    jigsaw_fraction: float = 0.5
    lambda_cls: float = 1.0
    lambda_triplet: float = 1.0
    lambda_jigsaw: float = 1.0


@METHODS.register("splip")
class SpLIP(Method):
    description = "SpLIP (ECCV'24): bi-directional multimodal prompts, adaptive-margin triplet, cross-modal jigsaw"
    config_class = SpLIPConfig

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        cfg = self.config
        self.prompted = PromptedCLIP(self.clip)
        p = self.prompted
        depth = max(1, min(cfg.depth, p.vision_layers, p.text_layers))
        phrases = torch.stack([self._phrase_embeddings(cfg.sketch_phrase), self._phrase_embeddings(cfg.photo_phrase)])
        init = ContextInit(cfg.n_ctx, cfg.ctx_init or "")
        ctx = init.vectors(p, backbone.tokenizer)
        self.prompts = SpLIPPrompts(p, ctx, phrases, depth, cfg.use_bt, cfg.use_bvt)
        self.class_prompts = ClassPrompts(backbone.tokenizer, " ".join(["X"] * cfg.n_ctx))
        self.register_buffer("margin_matrix", adaptive_margin_matrix(self.frozen_class_text(self.seen_names),
                                                                     cfg.margin_scale), persistent=False)
        if cfg.jigsaw:
            self.register_buffer("permutations", jigsaw_permutations(cfg.jigsaw_grid, cfg.jigsaw_permutations),
                                 persistent=False)
            self.jigsaw_head: Optional[JigsawHead] = JigsawHead(backbone.embed_dim, len(self.permutations))
        else:
            self.jigsaw_head = None

    def _phrase_embeddings(self, phrase: str) -> torch.Tensor:
        """Frozen token embeddings of the first n_ctx tokens of ``phrase`` (input of B_v)."""
        ids = self.backbone.tokenizer([phrase])
        with torch.no_grad():
            return self.prompted.token_embeddings(ids)[0, 1: 1 + self.config.n_ctx].float().clone()

    # ------------------------------------------------------------------ encoders
    def encode(self, images: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        """Prompted, normalised image embeddings; ``modality`` is 0 (sketch), 1 (photo) or one per image.

        Mixed batches go through the encoder in one pass (each image with its modality's prompts),
        which is what keeps a training step cheap.
        """
        if isinstance(modality, int):
            modality = torch.full((images.shape[0],), modality, dtype=torch.long)
        embeddings = self.prompted.patch_embeddings(images)
        shallow, deep = self.prompts.visual_stack(modality, embeddings)
        return self.prompted.encode_image(images, shallow, deep, embeddings=embeddings).float()

    def class_text(self, names: Sequence[str]) -> torch.Tensor:
        stack = self.prompts.text_stack()
        return self.prompted.encode_text(self.class_prompts.token_ids(names, self.device), stack[0],
                                         [None, *stack[1:]]).float()

    @torch.no_grad()
    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, SKETCH)

    @torch.no_grad()
    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, PHOTO)

    # ------------------------------------------------------------------ objective
    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        cfg = self.config
        b = batch.sketch.shape[0]
        images = [batch.sketch, batch.positive, batch.negative]
        modality = [SKETCH] * b + [PHOTO] * (2 * b)
        if self.jigsaw_head is not None:
            target, shuffled = self._shuffled_sketches(batch.sketch)
            images.append(shuffled)
            modality += [SKETCH] * len(target)
        feats = self.encode(torch.cat(images), torch.tensor(modality))
        sk, pos, neg = feats[:b], feats[b: 2 * b], feats[2 * b: 3 * b]
        text = self.class_text(self.seen_names)
        l_cls = clip_cross_entropy(torch.cat([sk, pos, neg]), text,
                                   torch.cat([batch.label, batch.label, batch.negative_label]), self.logit_scale)
        if cfg.adaptive_margin:
            margin = triplet_margins(self.margin_matrix, batch.label, batch.negative_label, cfg.margin)
        else:
            margin = torch.full_like(batch.label, cfg.margin, dtype=torch.float32)
        l_tri = cosine_triplet(sk, pos, neg, margin)
        total = cfg.lambda_cls * l_cls + cfg.lambda_triplet * l_tri
        terms = {"cls": l_cls.detach(), "triplet": l_tri.detach(), "margin": margin.mean().detach()}
        if self.jigsaw_head is not None:  # L_js: permutation of each shuffled sketch, given its photo
            logits = self.jigsaw_head(feats[3 * b:], pos[: len(target)])
            l_js = F.cross_entropy(logits, target)
            total = total + cfg.lambda_jigsaw * l_js
            terms.update(jigsaw=l_js.detach(), jigsaw_acc=(logits.argmax(-1) == target).float().mean().detach())
        return {"loss": total, **terms}

    def _shuffled_sketches(self, sketches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(permutation index, tile-shuffled sketch) for the first ``jigsaw_fraction`` of the batch."""
        m = max(1, math.ceil(self.config.jigsaw_fraction * sketches.shape[0]))
        target = torch.randint(len(self.permutations), (m,), device=sketches.device)
        return target, shuffle_tiles(sketches[:m], self.permutations[target], self.config.jigsaw_grid)
