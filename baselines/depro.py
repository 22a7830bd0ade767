"""DePro (Chen, Fang, Xue; SIGIR 2025), as its official code (pSGAme/DePro at 8608a4f) trains it.

A fork of ProS's code with one training stage. Per image, CLIP's frozen image tower runs on two
sequences (the official code runs a third, the unprompted one, that nothing uses; not run here):

* ``x1 = [class token, 4 CPs, patches]``: the class prompts (CPs) come from a new transformer of CLIP's
  width (the generator) reading ``[4 learned seeds, CLIP's patch tokens]`` after CLIP's own ``ln_pre``;
  its ``ln_post`` output at the seeds, times a learned matrix, are the CPs (``generator_layers: 0``: the
  seeds themselves, the official ``baseline.sh``);
* ``x2 = [class token, 4 UDPs, 4 CPs, patches]`` with 4 static learned visual prompts (UDPs).

The feature is ``ln_post`` of token 1, or of the class token (0) with ``ln_trick``, times the trained
copy of CLIP's ``visual.proj``. Losses (weights 1): cross-entropy of normalised ``x2`` against the
normalised texts "a photo of <class> from X domain." (one learned context vector, as ProS's prompt) at
temperature 0.07; ``decouple`` adds the cross-entropy of ``x1`` against frozen "a photo of a <class>."
texts; ``triplet`` adds DaTri (margin 0.5) on ``x2`` (and on ``x1`` with ``decouple``). ``ln_trick`` also
trains every LayerNorm of both CLIP towers (a copy: the caller's backbone is never changed).
Retrieval embeds every image as ``[x2/|x2|, x1/|x1|]`` (1024-d on ViT-B/32), what the official code
reports and selects on; ``embedding`` picks one branch instead.

Not built: the generator's class token, input layers and output projection, and the per-domain and
per-class prompt rows, which the official code allocates and counts as trainable but never uses by
default (no gradient reaches them: 18,370,048 trainable on Sketchy there, 15,495,424 here, the values
that receive a gradient). docs/methods.md lists every difference and the config that restores the
official choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, Transformer
from torch import nn

from sbir_bench.baselines.pros import INVERT, PREPROCESS, ProSFamily, text_projection_matrix
from sbir_bench.config import opt
from sbir_bench.data.balanced import ImageBatch
from sbir_bench.methods import METHODS, TripletBatch
from sbir_bench.methods.base import with_own_modules
from sbir_bench.methods.losses import domain_aware_triplet
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.text_prompts import DomainSentencePrompts

EMBEDDINGS = ("concat", "learned", "fixed")
TEXT_TOWER = ("transformer", "ln_final")  # the text tower's modules that hold LayerNorms (ln_trick trains them)


@dataclass
class DeProConfig:
    """Options of DePro; the defaults are its full method (``ckx_depro_ln_tri.sh``: ``--triplet --decouple
    --generator_layer 2 --ln_trick`` over main.py's defaults)."""

    n_ctx: int = opt(1, "learned text context vectors (--textNumTokens)", min=1)
    n_prompts: int = opt(4, "visual UDPs, and CP seeds (--vptNumTokens)", min=1)
    generator_layers: int = opt(2, "the CP generator's layers (--generator_layer); 0: the seeds are the CPs", min=0)
    decouple: bool = opt(True, "add CE of x1 against frozen 'a photo of a <class>.' texts (and DaTri on x1)")
    triplet: bool = opt(True, "add DaTri (domain-aware hardest triplet) to the loss (--triplet; its flag also picks its DPK sampler: train.sampler=dpk, balanced without it)")
    ln_trick: bool = opt(True, "train every LayerNorm of both CLIP towers and pool the class token (--ln_trick)")
    margin: float = opt(0.5, "DaTri's margin", min=0.0)
    temperature: float = opt(0.07, "of both cross-entropies", positive=True)
    embedding: str = opt("concat", "retrieval embedding: concat ([x2/|x2|, x1/|x1|], the official one), learned (x2) "
                                   "or fixed (x1), each normalised", choices=EMBEDDINGS)
    preprocess: str = opt("official", "official: ProS's augmentation with ImageNet statistics; backbone: ours",
                          choices=PREPROCESS)
    invert_sketches: str = opt("official", "official: its loader's rule (domains named sketch or quickdraw: Sketchy's, "
                                           "QuickDraw's sketches, DomainNet's sketch and quickdraw images); all; none",
                               choices=INVERT)


class CPGenerator(nn.Module):
    """DePro's class-prompt generator: transformer blocks of CLIP's image-tower width over
    ``[seeds, patches]`` (CLIP's ``ln_pre`` applied first, by the caller), its own ``ln_post`` on the seeds'
    outputs, and a square projection."""

    def __init__(self, width: int, layers: int, act_layer: type) -> None:
        super().__init__()
        self.transformer = Transformer(width, layers, max(1, width // 64), act_layer=act_layer)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(width ** -0.5 * torch.randn(width, width))

    def forward(self, x: torch.Tensor, n_out: int) -> torch.Tensor:
        x = PromptedCLIP.run_transformer(self.transformer, x)
        return self.ln_post(x[:, :n_out]) @ self.proj.to(x.dtype)


@METHODS.register("depro")
class DePro(ProSFamily):
    description = "DePro (SIGIR'25): static UDPs + image-conditioned CPs, CE vs learned and frozen texts, DaTri"
    table_order = 75
    config_class = DeProConfig

    @classmethod
    def check_config(cls, config: DeProConfig, tokenizer) -> None:
        """Its fields' bounds and choices are declared on DeProConfig; a class prompt that does not fit
        the text encoder is refused when the prompts are built."""

    @classmethod
    def split_invariant(cls, config: DeProConfig, stage: str = "", micro_batch: int = 1) -> bool:
        """DaTri takes each anchor's hardest positive and negative within the whole batch: a micro-batch
        sees fewer candidates, another loss. Without ``triplet`` the loss is a mean over samples."""
        return not config.triplet

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        cfg = self.config
        frozen_text = self.frozen_class_text(self.seen_names)  # "a photo of a <class>." by CLIP as handed
        if cfg.ln_trick:  # trains CLIP's LayerNorms: on a copy of the towers that hold them
            self.clip = with_own_modules(backbone.model, ("visual", *TEXT_TOWER))
            for module in self.clip.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        self.register_buffer("fixed_text", frozen_text, persistent=False)
        self.prompted = PromptedCLIP(self.clip)
        visual = self.clip.visual
        width = self.prompted.vision_width
        self.text_projection = nn.Parameter(text_projection_matrix(self.clip).detach().clone())
        self.copy_image_head()
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, self.prompted.text_width) * 0.02)
        self.udp = nn.Parameter(width ** -0.5 * torch.randn(cfg.n_prompts, width))
        bound = self.prompt_bound()  # its xavier rule (--second_init)
        self.cp_seeds = nn.Parameter(torch.empty(cfg.n_prompts, width).uniform_(-bound, bound))
        act = type(visual.transformer.resblocks[0].mlp.gelu)
        self.generator = CPGenerator(width, cfg.generator_layers, act) if cfg.generator_layers else None
        self.text_prompts = DomainSentencePrompts(self.backbone.tokenizer, self.seen_names, cfg.n_ctx, "depro")

    # ------------------------------------------------------------------ text
    def class_text_features(self) -> torch.Tensor:
        """Text features (not normalised) of the seen classes' prompts with the learned context."""
        return self.text_prompts.encode(self.prompted, self.ctx, self.text_projection)

    # ------------------------------------------------------------------ images
    def class_prompts(self, patches: torch.Tensor) -> torch.Tensor:
        """The CPs (B, n, W): the generator over ``ln_pre([seeds, patches])``, or the seeds (no generator)."""
        b, n = patches.shape[0], self.config.n_prompts
        seeds = self.cp_seeds.to(patches.dtype).expand(b, -1, -1)
        if self.generator is None:
            return seeds
        return self.generator(self.clip.visual.ln_pre(torch.cat([seeds, patches], dim=1)), n)

    def sequences(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """CLIP's inputs ``x1 = [class token, CPs, patches]`` and ``x2 = [class token, UDPs, CPs, patches]``."""
        patches = self.patches(images)
        cps = self.class_prompts(patches)
        udps = self.udp.expand(cps.shape[0], -1, -1)
        return self.prompted_sequence(patches, cps), self.prompted_sequence(patches, udps, cps)

    def clip_feature(self, sequence: torch.Tensor) -> torch.Tensor:
        """The image tower on ``sequence``, pooled at the class token with ``ln_trick``, else at token 1."""
        return self.pooled_feature(sequence, 0 if self.config.ln_trick else 1)

    def features(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The normalised (x1, x2) features."""
        x1, x2 = self.sequences(images)
        return (F.normalize(self.clip_feature(x1).float(), dim=-1), F.normalize(self.clip_feature(x2).float(), dim=-1))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding (``embedding``): ``[x2, x1]`` normalised each, or one of them."""
        fixed, learned = self.features(images)
        return {"concat": lambda: torch.cat([learned, fixed], dim=-1), "learned": lambda: learned,
                "fixed": lambda: fixed}[self.config.embedding]()

    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: TripletBatch | ImageBatch) -> Dict[str, torch.Tensor]:
        """The official objective over the batch's images (:meth:`labelled_images`). DaTri only asks whether
        two images share a domain: an official sampler's batch carries the dictionary's index; a triplet batch
        gets domain 0 for the photos and 1 + the anchor's domain index for the query side (DomainNet's four)."""
        if isinstance(batch, ImageBatch):
            return self.objective(batch.images, batch.label, batch.domain)
        b = batch.sketch.shape[0]
        device = batch.label.device
        anchor_domain = batch.domain if batch.domain is not None else torch.zeros(b, dtype=torch.long, device=device)
        domains = torch.cat([1 + anchor_domain.to(device), torch.zeros(b, dtype=torch.long, device=device)])
        return self.objective(torch.cat([batch.sketch, batch.positive]), torch.cat([batch.label, batch.label]), domains)

    def objective(self, images: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Its loss on labelled images: CE of x2 against the learned texts, DaTri on x2, and with
        ``decouple`` CE of x1 against the frozen texts and DaTri on x1; DaTri enters with ``triplet``."""
        cfg = self.config
        fixed, learned = self.features(images)
        text = F.normalize(self.class_text_features().float(), dim=-1)
        cls = F.cross_entropy(learned @ text.t() / cfg.temperature, labels)
        triplet = domain_aware_triplet(learned, labels, domains, cfg.margin)
        terms = {"cls": cls.detach()}
        if cfg.decouple:
            cls_fixed = F.cross_entropy(fixed @ self.fixed_text.float().t() / cfg.temperature, labels)
            terms["cls_fixed"] = cls_fixed.detach()
            cls = cls + cls_fixed
            triplet = triplet + domain_aware_triplet(fixed, labels, domains, cfg.margin)
        terms["triplet"] = triplet.detach()
        return {"loss": cls + triplet if cfg.triplet else cls, **terms}
