"""SpLIP (Singha, Jha, Gupta, Singla, Banerjee; "Elevating All Zero-Shot Sketch-Based Image Retrieval
Through Multimodal Prompt Learning", ECCV 2024, arXiv 2407.04207), registered as the method ``splip``.

The structure follows the paper's architecture figure (docs/splip.md says, for every part, whether
it comes from the figure, the abstract, or is our choice). Over a frozen CLIP, for an image of
modality m (sketch or photo):

1. E_0 = patch embeddings of the image; T = B_t(E_0), 4 text tokens.
2. The text prefix [SOT, T, "<m> of a"] runs through the text encoder, T re-entering at every
   prompted layer; B_vt turns each layer's prefix output into 2 visual tokens V^ms_j.
3. V^tg = B_v(frozen text embedding of "<m> of a"), 4 visual tokens.
4. The image encoder runs with [V^tg, V^ms_j] at every prompted layer j -> the image embedding.
5. Class embeddings are the texts "<m> of a <class>." with the same image's T (cached prefix, one
   suffix pass per class); L_class is CLIP's cross-entropy against them.

    L = lambda_cls L_class + lambda_triplet L_triplet + lambda_jigsaw L_cjs

with the adaptive-margin triplet loss and the conditional cross-modal jigsaw of :mod:`splip.objectives`.
Retrieval embeds sketches with the sketch phrase and photos with the photo phrase (cosine similarity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sbir_bench.config import opt
from sbir_bench.errors import ConfigError
from sbir_bench.log import get_logger
from sbir_bench.methods import METHODS, Method, TripletBatch
from sbir_bench.methods.image_tiles import shuffle_tiles
from sbir_bench.methods.losses import cosine_triplet
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.prompted import TextPrefix
from sbir_bench.models.text_prompts import ClassPrompts, ContextInit, phrase_tokens

from .blocks import ImageToTextPrompts, PhraseToVisualPrompts, VisualTextualBlock
from .objectives import (
    JigsawHead,
    adaptive_margin_matrix,
    conditional_jigsaw,
    jigsaw_permutations,
    triplet_margins,
)

log = get_logger(__name__)
SKETCH, PHOTO = 0, 1
CLASS_TEXT_MODES = ("image", "batch")


@dataclass
class SpLIPConfig:
    """SpLIP's options; docs/splip.md gives each one's origin (figure, abstract, our choice)."""

    n_text: int = opt(4, "T: text prompt tokens from B_t (figure: 4)", min=1)
    n_vtg: int = opt(4, "V^tg: visual tokens from B_v (figure: 4)", min=1)
    n_vms: int = opt(2, "V^ms: visual tokens per layer from B_vt (figure: 2)", min=1)
    depth: Optional[int] = opt(None, "prompted layers; None = every layer (figure: 1 .. L)", min=1)
    sketch_phrase: str = opt("sketch of a", "the sketch branch's phrase")
    photo_phrase: str = opt("photo of a", "the photo branch's phrase")
    text_init: Optional[str] = opt("a photo of a", "initial base tokens of T (None: random)")
    class_text: str = opt("image", "image: each image's T conditions its class texts (figure); batch: the batch mean T",
                          choices=CLASS_TEXT_MODES)
    use_bt: bool = opt(True, "ablation: T are free learned tokens, not conditioned on the image")
    use_bv: bool = opt(True, "ablation: no V^tg tokens")
    use_bvt: bool = opt(True, "ablation: no V^ms tokens")
    adaptive_margin: bool = opt(True, "ablation: every triplet uses `margin`")
    margin: float = opt(0.2, "the triplet margin (adaptive: its base)", min=0.0)
    margin_scale: float = opt(1.0, "the adaptive margin's scale", min=0.0)
    jigsaw: bool = opt(True, "ablation: no F_js, no L_cjs")
    jigsaw_negative: bool = opt(True, "ablation: the jigsaw uses only the positive pair")
    jigsaw_grid: int = opt(3, "tiles per side of the jigsaw", min=2)
    jigsaw_permutations: int = opt(30, "the permutations the jigsaw head classifies", min=2)
    jigsaw_fraction: float = opt(0.5, "the share of a batch's sketches that are tile-shuffled", positive=True, max=1.0)
    lambda_cls: float = opt(1.0, "loss weight", min=0.0)
    lambda_triplet: float = opt(1.0, "loss weight", min=0.0)
    lambda_jigsaw: float = opt(1.0, "loss weight", min=0.0)
    lambda_jigsaw_negative: float = opt(1.0, "loss weight", min=0.0)


@dataclass
class Encoded:
    """What encoding a group of same-modality images yields."""

    modality: int                 # SKETCH or PHOTO: which phrase the prompts were built with
    features: torch.Tensor        # (B, E) normalised image embeddings
    prefix: TextPrefix            # text prefix states of each image (for its class texts)
    text_tokens: torch.Tensor     # (B, n_text, Dt): T
    visual_prompts: List[torch.Tensor]  # per prompted layer (B, n_vtg + n_vms, Dv)


@METHODS.register("splip")
class SpLIP(Method):
    description = "SpLIP (ECCV'24): bi-directional multimodal prompts (B_v, B_t, B_vt), adaptive-margin triplet, conditional jigsaw"
    table_order = 80
    config_class = SpLIPConfig
    prompts_image_encoder = True

    @classmethod
    def check_config(cls, config: SpLIPConfig, tokenizer) -> None:
        if config.text_init and phrase_tokens(tokenizer, config.text_init) < config.n_text:
            raise ConfigError(f"splip text_init {config.text_init!r} has fewer than n_text={config.n_text} tokens; "
                              f"give a longer phrase, a smaller n_text, or text_init: null (random)")
        if not (config.use_bv or config.use_bvt):
            log.info("splip: use_bv and use_bvt both off: the image encoder runs without prompts")

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        cfg = self.config
        self.prompted = p = PromptedCLIP(self.clip)
        self.depth = min(cfg.depth or p.vision_layers, p.vision_layers)  # prompted visual layers
        if cfg.depth and cfg.depth > p.vision_layers:
            log.info(f"splip: depth={cfg.depth} > {p.vision_layers} visual layers: every layer is prompted")
        self.text_layer_of = [text_layer_for(j, p.vision_layers, p.text_layers) for j in range(self.depth)]
        self.text_depth = self.text_layer_of[-1] + 1  # T enters text layers 0 .. text_depth - 1
        phrases = (cfg.sketch_phrase, cfg.photo_phrase)
        self.register_buffer("phrase_embeddings", self.frozen_class_text(phrases, "{}"), persistent=False)
        base = ContextInit(cfg.n_text, cfg.text_init or "").vectors(p, backbone.tokenizer)
        self.b_t = ImageToTextPrompts(p.vision_width, p.text_width, base) if cfg.use_bt else None
        self.text_tokens = None if cfg.use_bt else nn.Parameter(base)
        self.b_v = PhraseToVisualPrompts(backbone.embed_dim, p.vision_width, cfg.n_vtg) if cfg.use_bv else None
        self.b_vt = VisualTextualBlock(p.text_width, p.vision_width, cfg.n_vms, self.depth) if cfg.use_bvt else None
        self._tokenize_prompts(phrases)
        self.register_buffer("margin_matrix", adaptive_margin_matrix(self.frozen_class_text(self.seen_names),
                                                                     cfg.margin_scale), persistent=False)
        self.jigsaw_head: Optional[JigsawHead] = None
        if cfg.jigsaw:
            self.register_buffer("permutations", jigsaw_permutations(cfg.jigsaw_grid, cfg.jigsaw_permutations),
                                 persistent=False)
            self.jigsaw_head = JigsawHead(backbone.embed_dim, len(self.permutations))

    # ------------------------------------------------------------------ text prompts
    def _tokenize_prompts(self, phrases: Tuple[str, str]) -> None:
        """Class prompts per modality, "X * n_text <phrase> <class>." (T replaces the X slots), and
        the ids of their shared prefix [SOT, X * n_text, phrase words]."""
        placeholders = " ".join(["X"] * self.config.n_text)
        self.class_prompts = nn.ModuleList(ClassPrompts(self.backbone.tokenizer, f"{placeholders} {ph}")
                                           for ph in phrases)
        for m, prompts in enumerate(self.class_prompts):
            self.register_buffer(f"prefix_ids_{m}", prompts.prefix_ids(), persistent=False)

    def prefix_ids(self, modality: int) -> torch.Tensor:
        return getattr(self, f"prefix_ids_{modality}")

    def suffix_ids(self, names: List[str], modality: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(suffix token ids (C, S), end-token index per class) of "<prefix> <class>." after the prefix."""
        return self.class_prompts[modality].suffix_ids(names, self.device, self.prefix_ids(modality).shape[1])

    def text_prompts(self, embeddings: torch.Tensor) -> torch.Tensor:
        """T for each image (B, n_text, Dt): B_t(E_0), or the shared learned tokens without B_t."""
        if self.b_t is not None:
            return self.b_t(embeddings)
        return self.text_tokens.unsqueeze(0).expand(embeddings.shape[0], -1, -1)

    def _prefix(self, tokens: torch.Tensor, modality: int) -> TextPrefix:
        ids = self.prefix_ids(modality).expand(tokens.shape[0], -1)
        return self.prompted.text_prefix(ids, tokens, [None] + [tokens] * (self.text_depth - 1))

    # ------------------------------------------------------------------ visual prompts and encoder
    def visual_prompts(self, prefix: TextPrefix, modality: int, batch: int) -> List[torch.Tensor]:
        """[V^tg, V^ms_j] for every prompted visual layer j (B, n_vtg + n_vms, Dv)."""
        parts: List[List[torch.Tensor]] = [[] for _ in range(self.depth)]
        if self.b_v is not None:
            vtg = self.b_v(self.phrase_embeddings[modality]).unsqueeze(0).expand(batch, -1, -1)
            for layer in parts:
                layer.append(vtg)
        if self.b_vt is not None:
            for layer, vms in zip(parts, self.b_vt([prefix.outputs[t] for t in self.text_layer_of])):
                layer.append(vms)
        return [torch.cat(layer, dim=1) for layer in parts] if parts[0] else []

    def encode(self, images: torch.Tensor, modality: int) -> Encoded:
        """Prompted embeddings of same-modality images (steps 1-4 of the module docstring)."""
        embeddings = self.prompted.patch_embeddings(images)
        tokens = self.text_prompts(embeddings)
        prefix = self._prefix(tokens, modality)
        prompts = self.visual_prompts(prefix, modality, images.shape[0])
        shallow, deep = (prompts[0], [None, *prompts[1:]]) if prompts else (None, None)
        feats = self.prompted.encode_image(images, shallow, deep, embeddings=embeddings).float()
        return Encoded(modality, feats, prefix, tokens, prompts)

    def class_embeddings(self, encoded: Encoded, names: List[str]) -> torch.Tensor:
        """(B, C, E) texts "<modality> of a <class>." conditioned on each image's T (or (1, C, E) on the
        batch mean T with ``class_text="batch"``)."""
        prefix = encoded.prefix
        if self.config.class_text == "batch":
            prefix = self._prefix(encoded.text_tokens.mean(0, keepdim=True), encoded.modality)
        suffix, eot = self.suffix_ids(names, encoded.modality)
        return self.prompted.encode_text_after(prefix, suffix, eot).float()

    @torch.no_grad()
    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, SKETCH).features

    @torch.no_grad()
    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images, PHOTO).features

    # ------------------------------------------------------------------ objective
    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        cfg, b = self.config, batch.sketch.shape[0]
        target, shuffled = self._shuffled_sketches(batch.sketch) if self.jigsaw_head is not None else (None, None)
        sk = self.encode(batch.sketch if shuffled is None else torch.cat([batch.sketch, shuffled]), SKETCH)
        ph = self.encode(torch.cat([batch.positive, batch.negative]), PHOTO)
        f_sk, f_pos, f_neg = sk.features[:b], ph.features[:b], ph.features[b:]
        l_cls = self._class_loss(sk, ph, b, batch)
        margin = triplet_margins(self.margin_matrix, batch.label, batch.negative_label, cfg.margin) \
            if cfg.adaptive_margin else torch.full_like(batch.label, cfg.margin, dtype=torch.float32)
        l_tri = cosine_triplet(f_sk, f_pos, f_neg, margin)
        total = cfg.lambda_cls * l_cls + cfg.lambda_triplet * l_tri
        terms = {"cls": l_cls.detach(), "triplet": l_tri.detach(), "margin": margin.mean().detach()}
        if shuffled is not None:
            rows = self._jigsaw_rows(b)
            js = conditional_jigsaw(self.jigsaw_head, sk.features[b:], f_pos[rows], f_neg[rows], target,
                                    cfg.lambda_jigsaw_negative if cfg.jigsaw_negative else 0.0)
            total = total + cfg.lambda_jigsaw * js.pop("jigsaw")
            terms.update(jigsaw=(js["jigsaw_pos"] + js.get("jigsaw_neg", 0.0)), **js)
        return {"loss": total, **terms}

    def _class_loss(self, sk: Encoded, ph: Encoded, b: int, batch: TripletBatch) -> torch.Tensor:
        """CLIP cross-entropy of sketch, positive and negative photo against their conditioned class texts."""
        names = self.seen_names
        sk_first = replace(sk, prefix=_rows(sk.prefix, b), text_tokens=sk.text_tokens[:b])
        logits = []
        for enc, feats in ((sk_first, sk.features[:b]), (ph, ph.features)):
            text = self.class_embeddings(enc, names)
            logits.append(self.logit_scale * torch.einsum("be,bce->bc", feats, text.expand(len(feats), -1, -1)))
        labels = torch.cat([batch.label, batch.label, batch.negative_label])
        return F.cross_entropy(torch.cat(logits).float(), labels)

    @classmethod
    def split_invariant(cls, config: SpLIPConfig, stage: str = "", micro_batch: int = 1) -> bool:
        """With the jigsaw, only micro-batches that shuffle the rows the whole batch shuffles: a multiple
        of 1 / jigsaw_fraction triplets (even at 0.5; an odd one rounds its share up). The permutations
        are drawn on the CPU, whose generator gives a split batch the whole batch's draws."""
        if not config.jigsaw:
            return True
        period = 1.0 / config.jigsaw_fraction
        return abs(period - round(period)) < 1e-9 and micro_batch % round(period) == 0

    def _jigsaw_rows(self, b: int) -> List[int]:
        """The rows whose sketch is also tile-shuffled: ceil(jigsaw_fraction * b) of them, spread evenly
        (row i when ceil((i + 1) f) > ceil(i f): every other row at 0.5), so that a batch split into
        micro-batches of a multiple of 1/f triplets shuffles the same sketches with the same draws."""
        f = self.config.jigsaw_fraction
        return [i for i in range(b) if math.ceil((i + 1) * f - 1e-9) > math.ceil(i * f - 1e-9)]

    def _shuffled_sketches(self, sketches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(permutation index, tile-shuffled sketch) for the ``jigsaw_fraction`` of the batch's rows."""
        rows = self._jigsaw_rows(sketches.shape[0])
        # drawn on the CPU: one generator draws in sequence, so micro-batches draw what the batch would
        target = torch.randint(len(self.permutations), (len(rows),)).to(sketches.device)
        return target, shuffle_tiles(sketches[rows], self.permutations[target], self.config.jigsaw_grid)


def text_layer_for(visual_layer: int, visual_layers: int, text_layers: int) -> int:
    """The text layer (0-based) whose prefix output B_vt turns into visual layer ``visual_layer``'s V^ms.

    Towers of unequal depth are aligned by relative depth: 1-based visual layer j reads text layer
    ceil(j * Lt / Lv). Equal towers pair layer with layer; ViT-L-14 (24 visual, 12 text layers) gives
    visual layers 2k-1 and 2k the output of text layer k, and the last visual layer the last text layer.

    >>> [text_layer_for(j, 24, 12) for j in range(4)], text_layer_for(23, 24, 12)
    ([0, 0, 1, 1], 11)
    >>> [text_layer_for(j, 4, 4) for j in range(4)]
    [0, 1, 2, 3]
    """
    return math.ceil((visual_layer + 1) * text_layers / visual_layers) - 1


def _rows(prefix: TextPrefix, n: int) -> TextPrefix:
    """The first ``n`` rows of a text prefix."""
    return TextPrefix([x[:n] for x in prefix.inputs], [x[:n] for x in prefix.outputs], prefix.n_prompt)
