"""CoCoOp: Conditional Context Optimization (Zhou, Yang, Loy, Liu; "Conditional Prompt Learning for
Vision-Language Models", CVPR 2022), as the official ``trainers/cocoop.py`` (KaiyangZhou/CoOp) computes it.

CoOp's learned context ``ctx`` (4 vectors from "a photo of a") is shifted, per image, by a
meta-network ``pi(x)``: Linear(vis_dim, vis_dim/16) - ReLU - Linear(vis_dim/16, ctx_dim) of the
image's normalised frozen CLIP feature. Every class prompt of that image reads ``[SOT] ctx + pi(x)
<class>. [EOT]``; the logits are CLIP's scaled cosines between the image and its own class texts,
trained with cross-entropy over the seen classes (sketches and photos both as images). The image
and text encoders stay frozen; ``ctx`` and the meta-network train.

Cost. Each image has its own class texts: B images x C classes text encodings per step (as SpLIP's
image-conditioned texts), which is why the paper trains with batch size 1. The toolkit encodes the
shared prefix ``[SOT, ctx + pi(x)]`` once per image and only the class words per (image, class)
(:meth:`PromptedCLIP.encode_text_after`, equal to the full encoder), so larger batches fit; the
paper's batch of 1 is ``train.batch_size: 1``. Evaluation costs the same per gallery class.

Retrieval, as CoOp's (:mod:`sbir_bench.methods.class_probabilities`): ``fused`` (default) joins the
frozen image embedding with the class-probability vector from the image's own conditioned texts,
``probs`` uses the probabilities, ``image`` the frozen embedding (equals zero-shot CLIP).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sbir_bench.config import opt
from sbir_bench.errors import ConfigError
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.class_probabilities import RETRIEVAL_MODES, retrieval_embedding

from .coop import coop_context, learned_text_context


@dataclass
class CoCoOpConfig:
    """Options of CoCoOp (defaults: the paper's ``vit_b16_c4_ep10_batch1_ctxv1`` configuration)."""

    n_ctx: Optional[int] = opt(None, "learned context vectors; None: the word count of ctx_init (CoOp's rule), 16 "
                                     "random vectors without one", min=1)
    ctx_init: Optional[str] = opt("a photo of a", "the phrase the context starts from (None: random vectors)")
    meta_reduction: int = opt(16, "the meta-network's hidden width is vis_dim // meta_reduction", min=1)
    retrieval: str = opt('fused', "image: the image embedding; fused / probs: with class probabilities over the "
                                  "gallery's classes (methods/class_probabilities.py)", choices=RETRIEVAL_MODES)
    fusion_weight: float = opt(0.5, "fused: the class probabilities' weight", min=0.0, max=1.0)


@METHODS.register("cocoop")
class CoCoOp(Method):
    description = "CoCoOp (CVPR'22): CoOp context shifted per image by a meta-network, CE over seen classes"
    table_order = 40
    config_class = CoCoOpConfig
    uses_frozen_features = True

    @classmethod
    def check_config(cls, config: CoCoOpConfig, tokenizer) -> None:
        coop_context(config, "cocoop")

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        init = learned_text_context(self, "cocoop")
        vis_dim, hidden = backbone.embed_dim, backbone.embed_dim // self.config.meta_reduction
        if hidden < 1:  # a meta-network of no hidden unit: the prompts would not depend on the image
            raise ConfigError(f"cocoop: meta_reduction={self.config.meta_reduction} leaves the meta-network no hidden "
                              f"unit on {backbone.name}'s {vis_dim}-wide embedding ({vis_dim} // "
                              f"{self.config.meta_reduction} = 0); use at most {vis_dim}")
        self.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(vis_dim, hidden)), ("relu", nn.ReLU()),
                                                   ("linear2", nn.Linear(hidden, self.prompted.text_width))]))
        self.register_buffer("prefix_ids", self.prompts.prefix_ids(1 + init.n), persistent=False)
        self._vocab: List[str] = []

    def class_text(self, features: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """(B, C, E) normalised texts of ``names`` conditioned on each image's normalised feature."""
        ctx = self.ctx.unsqueeze(0) + self.meta_net(features.to(self.ctx.dtype)).unsqueeze(1)  # (B, n, D)
        prefix = self.prompted.text_prefix(self.prefix_ids.expand(len(features), -1), ctx)
        suffix, eot = self.prompts.suffix_ids(names, self.device, self.prefix_ids.shape[1])
        return self.prompted.encode_text_after(prefix, suffix, eot).float()

    def logits(self, features: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """CLIP logits (B, C) of normalised image ``features`` against their own class texts."""
        return self.logit_scale * torch.einsum("be,bce->bc", features, self.class_text(features, names))

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        images = torch.cat([batch.sketch, batch.positive])
        feats = self.batch_features(images, batch)
        ce = F.cross_entropy(self.logits(feats, self.seen_names).float(), torch.cat([batch.label, batch.label]))
        return {"loss": ce, "cls": ce.detach()}

    @torch.no_grad()
    def prepare_eval(self, class_names: Sequence[str]) -> None:
        self._vocab = list(class_names)

    @torch.no_grad()
    def embed_features(self, f: torch.Tensor, modality: str = "") -> torch.Tensor:
        texts = self.class_text(f, self._vocab) if self._vocab and self.config.retrieval != "image" else None
        return retrieval_embedding(f, texts, self.logit_scale, self.config.retrieval, self.config.fusion_weight)
