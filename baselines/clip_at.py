"""CLIP-AT (Sain, Bhunia, Chowdhury, Koley, Xiang, Song; "CLIP for All Things Zero-Shot Sketch-Based
Image Retrieval, Fine-Grained or Not", CVPR 2023), as its official code (aneeshan95/Sketch_LVM) trains it.

Two sets of ``n_prompts`` learned visual tokens, one for sketches and one for photos, initialised
N(0, 1), enter the image tower's input layer only: after the patch tokens, with no positional
embedding, before ``ln_pre`` (``prompt_position: prepend`` restores the code before its commit of
2023-08-01, where they came first and the pooled token 0 was the first prompt). The embedding is
the class token's, through ``ln_post`` and ``proj``. Loss: a triplet with distance 1 - cosine and
margin 0.2 (sketch anchor, a photo of its class, a photo of another class; in the FG setting the
sketch's own photo and another photo of its class). Adam without weight decay: the CLIP
parameters at ``clip_lr`` (1e-6), the prompts at ``train.lr`` (1e-4).

What trains. The code means to train LayerNorms only, but its freezing helper freezes the
``weight``/``bias`` of non-LayerNorm modules, so parameters held under other names stay trainable:
the attention input projections (``in_proj_weight``/``in_proj_bias``), ``class_embedding``,
``positional_embedding`` and ``proj`` (~21.7 M values on ViT-B/32). ``trainable: official`` trains
exactly what receives a gradient there (the text tower is also left trainable but is never used);
``trainable: layernorm`` trains what the paper and the code's intent say.

Preprocessing (``preprocess: official``): pad to a square with black (``PIL.ImageOps.pad``,
bicubic), ImageNet mean/std, no augmentation; ``preprocess: backbone`` uses the weights' own
preprocessing and the toolkit's augmentation instead.

The paper's terms that the code lacks are labelled switches, off by default (our reading of the
paper, not checkable against code): ``lambda_cls``, cross-entropy of the sketch and photo
embeddings against frozen CLIP texts "a photo of a <class>."; ``lambda_patch``, the patch-shuffling
triplet (sketch and photo tiles shuffled by one permutation form the positive pair, the photo under
another permutation the negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from sbir_bench.config import opt
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.base import with_own_modules
from sbir_bench.methods.image_tiles import shuffle_tiles
from sbir_bench.methods.losses import clip_cross_entropy, cosine_triplet
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    padded_square_transform,
)

PROMPT_POSITIONS = ("append", "prepend")
TRAINABLE = ("official", "layernorm")
PREPROCESS = ("official", "backbone")


@dataclass
class CLIPATConfig:
    """Options of CLIP-AT; the defaults are the official code's (experiments/options.py)."""

    n_prompts: int = opt(3, "the learned prompt vectors per modality", min=1)
    prompt_position: str = opt("append", "append (code since 2023-08-01) or prepend (before)", choices=PROMPT_POSITIONS)
    trainable: str = opt("official", "official (what its freezing helper leaves trainable) or layernorm",
                         choices=TRAINABLE)
    clip_lr: float = opt(1e-6, "the CLIP parameters' learning rate; the prompts use train.lr (1e-4)", min=0.0)
    margin: float = opt(0.2, "of the cosine triplet loss", min=0.0)
    preprocess: str = opt("official", "official: pad to square, ImageNet statistics, no augmentation; backbone: ours",
                          choices=PREPROCESS)
    lambda_cls: float = opt(0.0, "paper, not code: CE against frozen 'a photo of a <class>.' texts", min=0.0)
    lambda_patch: float = opt(0.0, "paper, not code: patch-shuffling triplet", min=0.0)
    patch_grid: int = opt(2, "tiles per side for lambda_patch (the patch-shuffle grid is patch_grid x patch_grid)",
                          min=2)


def trainable_clip_parameters(visual: nn.Module, rule: str) -> List[Tuple[str, nn.Parameter]]:
    """The image tower's parameters that CLIP-AT trains, named as in ``visual``.

    ``official``: every LayerNorm parameter, and every parameter a module holds under a name other
    than ``weight``/``bias`` (the official helper only freezes those two names). ``layernorm``: the
    LayerNorm parameters alone.
    """
    chosen = []
    for module_name, module in visual.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or (rule == "official" and name not in ("weight", "bias")):
                chosen.append((f"{module_name}.{name}" if module_name else name, param))
    return chosen


@METHODS.register("clip-at")
class CLIPAT(Method):
    description = "CLIP-AT (CVPR'23): sketch and photo visual prompts + CLIP's LayerNorms, cosine triplet"
    table_order = 60
    config_class = CLIPATConfig
    prompts_image_encoder = True

    @classmethod
    def check_config(cls, config: CLIPATConfig, tokenizer) -> None:
        """Its fields' bounds and choices are declared on CLIPATConfig (checked as every config is)."""

    @classmethod
    def image_transforms(cls, config: CLIPATConfig, pp, crop_scale_min: float) -> Tuple[Callable, Callable]:
        if config.preprocess == "backbone":
            return super().image_transforms(config, pp, crop_scale_min)
        size = pp.size if isinstance(pp.size, int) else pp.size[0]
        official = padded_square_transform(size, IMAGENET_MEAN, IMAGENET_STD)
        return official, official  # the official code does not augment

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        self.clip = with_own_modules(backbone.model, ("visual",))  # trains its copy, never the caller's backbone
        self.prompted = PromptedCLIP(self.clip)
        width = self.prompted.vision_width
        self.sketch_prompt = nn.Parameter(torch.randn(self.config.n_prompts, width))
        self.photo_prompt = nn.Parameter(torch.randn(self.config.n_prompts, width))
        self.clip_parameters = trainable_clip_parameters(self.clip.visual, self.config.trainable)
        for _, param in self.clip_parameters:
            param.requires_grad_(True)
        self._class_text: Optional[torch.Tensor] = None

    def param_groups(self, lr: float) -> List[dict]:
        """The prompts at the run's ``lr`` (first: the logged rate), CLIP's parameters at ``clip_lr``
        (the official two rates)."""
        return [{"params": [self.sketch_prompt, self.photo_prompt], "lr": lr},
                {"params": [p for _, p in self.clip_parameters], "lr": self.config.clip_lr}]

    def encode(self, images: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Normalised embedding of ``images`` with one modality's prompts."""
        position = "tail" if self.config.prompt_position == "append" else "head"
        return self.prompted.encode_image(images, prompt, position=position).float()

    @torch.no_grad()
    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, self.sketch_prompt)

    @torch.no_grad()
    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, self.photo_prompt)

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        cfg, b = self.config, batch.sketch.shape[0]
        sketch = self.encode(batch.sketch, self.sketch_prompt)
        photos = self.encode(torch.cat([batch.positive, batch.negative]), self.photo_prompt)
        triplet = cosine_triplet(sketch, photos[:b], photos[b:], cfg.margin)
        total, terms = triplet, {"triplet": triplet.detach()}
        if cfg.lambda_cls:
            cls = self._class_loss(torch.cat([sketch, photos]), torch.cat([batch.label, batch.label,
                                                                           batch.negative_label]))
            total, terms["cls"] = total + cfg.lambda_cls * cls, cls.detach()
        if cfg.lambda_patch:
            patch = self._patch_loss(batch)
            total, terms["patch"] = total + cfg.lambda_patch * patch, patch.detach()
        return {"loss": total, **terms}

    def _class_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._class_text is None:
            self._class_text = self.frozen_class_text(self.seen_names)
        return clip_cross_entropy(features, self._class_text, labels, self.logit_scale)

    def _patch_loss(self, batch: TripletBatch) -> torch.Tensor:
        """Triplet of tile-shuffled images: sketch and photo under one permutation, photo under another."""
        b, tiles = batch.sketch.shape[0], self.config.patch_grid ** 2
        same = torch.stack([torch.randperm(tiles) for _ in range(b)]).to(batch.sketch.device)
        other = (same + torch.randint(1, tiles, (b, 1), device=same.device)) % tiles  # a different order
        grid = self.config.patch_grid
        sketch = self.encode(shuffle_tiles(batch.sketch, same, grid), self.sketch_prompt)
        photos = self.encode(torch.cat([shuffle_tiles(batch.positive, same, grid),
                                        shuffle_tiles(batch.positive, other, grid)]), self.photo_prompt)
        return cosine_triplet(sketch, photos[:b], photos[b:], self.config.margin)
