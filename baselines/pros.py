"""ProS (Fang, Song, Gao, Zeng, Cheng, Li, Shen; "ProS: Prompting-to-simulate Generalized knowledge for
Universal Cross-Domain Retrieval", CVPR 2024), as its official code (fangkaipeng/ProS) trains it.

Its UᶜCDR setting on Sketchy and TU-Berlin is ZS-SBIR. Two stages, one run here:

* **Prompt units** (``units``): one learned token per training domain (photo, sketch) and per seen
  class, inserted after CLIP's class token (ground-truth units only, no positional embedding)
  before the frozen image tower, whose token 1 is pooled; dropout on every token, always active.
* **Context-aware simulator** (``simulator``): a new ViT of CLIP's width (the generator) reads two
  learned templates, every prompt unit with the image's own domain and class units zeroed, and its
  own patch embeddings; its outputs at the two template slots become the domain and class prompts
  that replace the units in CLIP's sequence. The units are frozen; the generator, its projection,
  the templates, CLIP's ``visual.proj`` and class embedding train.

Both stages train the shared 16-vector text context of "a photo of <class> from X...X domain." and
CLIP's text projection, with cross-entropy of normalised image features against the normalised
texts of the seen classes at temperature 0.07. At test time the generator sees every unit unmasked;
the embedding (token 1, not normalised) is the same for sketches and photos.

Images: its training augmentation (colour jitter included) with ImageNet statistics, CLIP's
preprocessing at test time, and sketches colour-inverted where its loader inverts them (Sketchy,
QuickDraw; not TU-Berlin), each a switch (``preprocess``, ``invert_sketches``).

The official code writes the generator as ``VisionTransformer(224, 32, 768, layers, 12, 512)``: ViT-B/32's
sizes. Here it follows the backbone (its width, patch size, input and ``width // 64`` heads), which is
the same on ViT-B/32. Its class embedding and output projection are never used there (they get no
gradient, yet count as trainable: 18,226,176 in stage 2); they are not built here (17,832,192).
docs/methods.md lists every difference and the config that restores the official choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, Transformer
from torch import nn

from sbir_bench.config import opt
from sbir_bench.errors import ConfigError
from sbir_bench.methods import METHODS, Method, Stage, TripletBatch
from sbir_bench.models import PromptedCLIP
from sbir_bench.data.balanced import PHOTO_DOMAIN, SKETCH_DOMAIN, ImageBatch
from sbir_bench.data.catalog import get_spec
from sbir_bench.data.domains import training_domains
from sbir_bench.models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ByDomain,
    Inverted,
    eval_transform,
    jittered_train_transform,
)
from sbir_bench.models.prompted import patch_tokens
from sbir_bench.models.text_prompts import DomainSentencePrompts

UNITS, SIMULATOR = "units", "simulator"
PHOTO, SKETCH = PHOTO_DOMAIN, SKETCH_DOMAIN  # the official domain dictionary (sorted folder names: extended_photo/images, sketch/sketches)
PREPROCESS = ("official", "backbone")
INVERT = ("official", "all", "none")
# The official loader inverts the images of domains named "sketch" or "quickdraw": Sketchy's sketches
# (and QuickDraw's) come white on black, TU-Berlin's ("sketches") as stored
INVERTED_BY_ITS_LOADER = ("sketchy", "sketchy-fg", "quickdraw")
INVERTED_DOMAINS = ("sketch", "quickdraw")  # a multi-domain copy's domains its loader inverts (DomainNet)


@dataclass
class ProSConfig:
    """Options of ProS; the defaults are its official code's (src/options/options_pros.py,
    reproduce_runs.sh). ``train.*`` is stage 2's (batch 50 images = 25 triplets' sketches and photos)."""

    n_ctx: int = opt(16, "shared text context vectors (-tp_N_CTX)", min=1)
    generator_layers: int = opt(2, "the generator's layers (-generator_layer)", min=1)
    dropout: float = opt(0.5, "stage 1, on every token of CLIP's input, active even in eval mode", min=0.0, below=1.0)
    temperature: float = opt(0.07, "of the image-text cross-entropy", positive=True)
    pool_token: int = opt(1, "the token whose ln_post output is the feature: 1 (the official code) or 0 (class token)",
                          choices=(1, 0))
    units_epochs: int = opt(1, "stage 1 epochs (-stage1_epochs), at a constant rate train.lr", min=1)
    units_batch_size: int = opt(200, "stage 1 sketch-photo pairs per batch: 400 images (its loader for stage 1)", min=1)
    units_grad_accum: int = opt(1, "stage 1 micro-batches per step (its dropout makes a split step another step)", min=1)
    preprocess: str = opt("official", "official: its augmentation with ImageNet statistics; backbone: ours",
                          choices=PREPROCESS)
    domains: int = opt(0, "training domains, one prompt unit each: 0 = a sketch dataset's photos and sketches; a "
                          "multi-domain run sets it from the dataset (DomainNet: 5)", min=0)
    invert_sketches: str = opt("official", "official: its loader's rule (domains named sketch or quickdraw: Sketchy's, "
                                           "QuickDraw's sketches, DomainNet's sketch and quickdraw images); all; none",
                               choices=INVERT)


def official_sketch_transforms(rule: str, dataset: str, train: Callable,
                               evaluation: Callable) -> Tuple[Callable, Callable]:
    """The sketches' transforms under ProS's loader (DePro's is the same file): colour-inverted before the
    images' transforms where it inverts them (``official``: the domains named ``sketch`` or ``quickdraw``,
    i.e. Sketchy's, Sketchy-FG's and QuickDraw's sketches, DomainNet's sketch and quickdraw images, not
    TU-Berlin's ``sketches``), everywhere (``all``) or nowhere (``none``)."""
    if rule == "all" or (rule == "official" and dataset in INVERTED_BY_ITS_LOADER):
        return Inverted(train), Inverted(evaluation)
    if rule == "official" and get_spec(dataset).domain_split is not None:
        return (ByDomain(INVERTED_DOMAINS, Inverted(train), train),
                ByDomain(INVERTED_DOMAINS, Inverted(evaluation), evaluation))
    return train, evaluation


def resolve_domain_units(method: str, config, spec, data):
    """``config`` with ``domains`` set as the official code sizes its domain units: one per training domain of
    a multi-domain dataset (DomainNet, one held out: 5, in its dictionary's sorted order), 0 (photos and
    sketches) elsewhere; a value that contradicts the dataset is one line. ProS and UCDR-Adapter share it."""
    if spec.domain_split is None:
        if config.domains:
            raise ConfigError(f"{method}: method_config.domains={config.domains} applies to a multi-domain dataset; "
                              f"{spec.title} has photos and sketches (leave it 0)")
        return config
    n = len(training_domains(spec, data.held_out_domain))
    if config.domains not in (0, n):
        raise ConfigError(f"{method}: method_config.domains={config.domains}, but {spec.title} with "
                          f"{data.held_out_domain} held out trains on {n} domains (leave it unset)")
    return replace(config, domains=n)


def batch_domains(config, batch) -> torch.Tensor:
    """The domain-unit index of each image of :meth:`ProSFamily.labelled_images`: the official dictionary's
    (the batch's domain indices) on a multi-domain dataset, else sketch 1 and photo 0 (an official sampler's
    batch carries them so)."""
    if isinstance(batch, ImageBatch):
        return batch.domain
    b = batch.sketch.shape[0]
    device = batch.label.device
    if config.domains:
        if batch.domain is None or batch.positive_domain is None:
            raise ValueError("a multi-domain run's triplet batches carry each image's domain (TripletBatch.domain, "
                             "positive_domain); this one has none")
        return torch.cat([batch.domain, batch.positive_domain]).to(device)
    return torch.cat([torch.full((b,), SKETCH, device=device), torch.full((b,), PHOTO, device=device)])


def text_projection_matrix(clip: nn.Module) -> torch.Tensor:
    """CLIP's text projection as a (width, embed) matrix; ProS trains a copy of it."""
    proj = clip.text_projection
    if isinstance(proj, nn.Linear) or proj is None:
        raise ConfigError("pros trains CLIP's text projection matrix; this backbone's text tower has a "
                          f"{type(proj).__name__} instead (use an OpenAI-style CLIP such as ViT-B-32)")
    return proj


class PromptGenerator(nn.Module):
    """ProS's generator: a ViT of CLIP's image-tower sizes without a class token or output projection
    (the official one has both and never uses them). Positional embeddings of the patches only are
    used (``positional_embedding[1:]``, as there)."""

    def __init__(self, width: int, patch: int, grid: int, layers: int, act_layer: type) -> None:
        super().__init__()
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, max(1, width // 64), act_layer=act_layer)
        self.ln_post = LayerNorm(width)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.conv1, self.positional_embedding, images)

    def forward(self, prefix: torch.Tensor, images: torch.Tensor, n_out: int) -> torch.Tensor:
        """Outputs at the first ``n_out`` slots of ``[prefix, patches]`` after ``ln_post`` (B, n_out, W)."""
        x = self.ln_pre(torch.cat([prefix.to(self.conv1.weight.dtype), self.patches(images)], dim=1))
        return self.ln_post(PromptedCLIP.run_transformer(self.transformer, x)[:, :n_out])


class ProSFamily(Method):
    """What ProS and the methods forked from its code (DePro, UCDR-Adapter) share: its loader's images
    (``preprocess``, ``invert_sketches``: its training augmentation with ImageNet statistics, CLIP's
    preprocessing at test time, the sketch and quickdraw domains inverted), and CLIP's image tower run on
    ``[class token, prompts, patches]`` with a trained copy of its class embedding and projection
    (``class_embedding``, ``image_proj``), pooled at one token. Not registered: a base, not a method."""

    prompts_image_encoder = True
    reads_image_batches = True  # their losses read images one by one: the official samplers apply

    @staticmethod
    def labelled_images(batch: TripletBatch | ImageBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(images, classes) a batch trains on: an official sampler's images (``train.sampler``), or a triplet
        batch's sketches then their positive photos (the negatives are not used)."""
        if isinstance(batch, ImageBatch):
            return batch.images, batch.label
        return torch.cat([batch.sketch, batch.positive]), torch.cat([batch.label, batch.label])

    @classmethod
    def image_transforms(cls, config, pp, crop_scale_min: float) -> Tuple[Callable, Callable]:
        if config.preprocess == "backbone":
            return super().image_transforms(config, pp, crop_scale_min)
        size = pp.size if isinstance(pp.size, int) else pp.size[0]
        return jittered_train_transform(size, 0.8, 0.4, IMAGENET_MEAN, IMAGENET_STD), eval_transform(pp)

    @classmethod
    def sketch_transforms(cls, config, dataset: str, train: Callable, evaluation: Callable) -> Tuple[Callable, Callable]:
        return official_sketch_transforms(config.invert_sketches, dataset, train, evaluation)

    @staticmethod
    def first_stage(name: str, train, epochs: int, batch_size: int, grad_accum: int, knob: str) -> Stage:
        """Their first stage (ProS's units, UCDR-Adapter's source prompts): ``epochs`` at ``batch_size`` triplets
        at a constant rate, without validation or early stopping, split by its own ``knob``."""
        settings = replace(train, epochs=epochs, batch_size=batch_size, schedule="constant", warmup_epochs=0.0,
                           early_stop=0, val_every=0, grad_accum=grad_accum)
        return Stage(name, settings, knob)

    def prompt_bound(self) -> float:
        """Their prompt tables' uniform init bound, ``sqrt(6 / (3 * patch area + width))`` (their xavier rule)."""
        patch = self.clip.visual.conv1.kernel_size
        return math.sqrt(6.0 / (3 * patch[0] * patch[1] + self.prompted.vision_width))

    def copy_image_head(self) -> None:
        """Own copies of CLIP's class embedding and image projection, which these methods train: the
        caller's backbone stays as it was handed."""
        self.image_proj = nn.Parameter(self.clip.visual.proj.detach().clone())
        self.class_embedding = nn.Parameter(self.clip.visual.class_embedding.detach().clone())

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's patch tokens of ``images`` with their positional embeddings (B, P, W)."""
        return patch_tokens(self.clip.visual.conv1, self.clip.visual.positional_embedding, images)

    def prompted_sequence(self, patches: torch.Tensor, *prompts: torch.Tensor) -> torch.Tensor:
        """CLIP's input ``[class token, *prompts, patches]`` from :meth:`patches`; each prompt (B, n, W), or
        (B, W) for one token."""
        v, x = self.clip.visual, patches
        b = x.shape[0]
        first = (self.class_embedding + v.positional_embedding[0]).to(x.dtype).expand(b, 1, -1)
        return torch.cat([first, *(p.reshape(b, -1, p.shape[-1]).to(x.dtype) for p in prompts), x], dim=1)

    def pooled_feature(self, sequence: torch.Tensor, token: int) -> torch.Tensor:
        """CLIP's frozen image tower on ``sequence``: ``ln_post`` of token ``token``, times the trained projection."""
        v = self.clip.visual
        x = PromptedCLIP.run_transformer(v.transformer, v.ln_pre(sequence))
        return v.ln_post(x[:, token]) @ self.image_proj.to(x.dtype)


@METHODS.register("pros")
class ProS(ProSFamily):
    description = "ProS (CVPR'24): prompt units, then a prompt generator simulating unseen domains/classes; CE"
    table_order = 70
    config_class = ProSConfig

    @classmethod
    def check_config(cls, config: ProSConfig, tokenizer) -> None:
        """Its fields' bounds and choices are declared on ProSConfig (checked as every config is); a class
        prompt that does not fit the text encoder is refused when the prompts are built."""

    @classmethod
    def training_stages(cls, config: ProSConfig, train) -> Tuple[Stage, ...]:
        """Stage 1 (prompt units) at a constant rate for ``units_epochs`` at ``units_batch_size``, without
        validation or early stopping; stage 2 (the simulator) with the run's ``train`` settings."""
        units = cls.first_stage(UNITS, train, config.units_epochs, config.units_batch_size, config.units_grad_accum,
                                "method_config.units_grad_accum")
        return units, Stage(SIMULATOR, train)

    @classmethod
    def split_invariant(cls, config: ProSConfig, stage: str = "", micro_batch: int = 1) -> bool:
        """Stage 1 draws its dropout mask per forward pass: a micro-batch draws its own (on a GPU other
        numbers than the whole batch's mask); stage 2 has no randomness and a mean loss."""
        return stage != UNITS or config.dropout == 0.0

    @classmethod
    def resolve_config(cls, config: ProSConfig, spec, data) -> ProSConfig:
        return resolve_domain_units("pros", config, spec, data)

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        cfg = self.config
        self.prompted = PromptedCLIP(self.clip)
        visual = self.clip.visual
        width, patch = self.prompted.vision_width, visual.conv1.kernel_size
        grid = visual.positional_embedding.shape[0] - 1
        # own copies of the CLIP tensors ProS trains: the caller's backbone stays as it was handed
        self.text_projection = nn.Parameter(text_projection_matrix(self.clip).detach().clone())
        self.copy_image_head()
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, self.prompted.text_width) * 0.02)
        bound = self.prompt_bound()
        self.domain_units = nn.Parameter(torch.empty(cfg.domains or 2, width).uniform_(-bound, bound))
        self.class_units = nn.Parameter(torch.empty(len(self.seen), width).uniform_(-bound, bound))
        scale = width ** -0.5
        self.domain_template = nn.Parameter(scale * torch.randn(1, width))
        self.class_template = nn.Parameter(scale * torch.randn(1, width))
        act = type(visual.transformer.resblocks[0].mlp.gelu)
        self.generator = PromptGenerator(width, patch[0], int(round(math.sqrt(grid))), cfg.generator_layers, act)
        self.generator_proj = nn.Parameter(scale * torch.randn(width, width))
        self.text_prompts = DomainSentencePrompts(self.backbone.tokenizer, self.seen_names, cfg.n_ctx, "pros")
        self.begin_stage(UNITS)  # training starts there; the embedding does not depend on the stage

    # ------------------------------------------------------------------ stages
    def stage_parameters(self, stage: str) -> List[nn.Parameter]:
        """What ``stage`` trains (the official ``training_set`` lists, by name prefix)."""
        text = [self.ctx, self.text_projection]
        if stage == UNITS:
            return text + [self.domain_units, self.class_units]
        if stage == SIMULATOR:
            return text + [self.domain_template, self.class_template, *self.generator.parameters(),
                           self.generator_proj, self.image_proj, self.class_embedding]
        raise ValueError(f"pros has the stages {UNITS} and {SIMULATOR}, not {stage!r}")

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        """Every tensor either stage trains, whichever stage is current: a checkpoint of stage 2 (and
        the artifact) holds the units stage 1 learned, which stage 2 uses frozen."""
        own = {id(p) for p in self.own_parameters()}
        return {n: p.detach().clone() for n, p in self.named_parameters() if id(p) in own}

    # ------------------------------------------------------------------ text
    def class_text_features(self) -> torch.Tensor:
        """Text features (not normalised) of the seen classes' prompts with the learned context."""
        return self.text_prompts.encode(self.prompted, self.ctx, self.text_projection)

    # ------------------------------------------------------------------ images
    def clip_sequence(self, images: torch.Tensor, domain: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """CLIP's input ``[class token, domain prompt, class prompt, patches]`` (B, 3 + P, W)."""
        return self.prompted_sequence(self.patches(images), domain, cls)

    def clip_feature(self, sequence: torch.Tensor) -> torch.Tensor:
        """The frozen image tower on ``sequence``, pooled at ``pool_token``."""
        return self.pooled_feature(sequence, self.config.pool_token)

    def generator_input(self, images: torch.Tensor, domain: Optional[torch.Tensor] = None,
                        cls: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The generator's prefix ``[domain template, class template, domain units, class units]`` with
        each image's own domain and class units zeroed (when given) (B, 2 + n_d + n_c, W)."""
        b = images.shape[0]
        units = []
        for table, own in ((self.domain_units, domain), (self.class_units, cls)):
            rows = table.expand(b, -1, -1)
            if own is not None:
                mask = torch.arange(table.shape[0], device=own.device)[None, :] == own[:, None]
                rows = rows.masked_fill(mask[..., None], 0.0)
            units.append(rows)
        return torch.cat([self.domain_template.expand(b, -1, -1), self.class_template.expand(b, -1, -1), *units], dim=1)

    def generated_prompts(self, images: torch.Tensor, domain: Optional[torch.Tensor] = None,
                          cls: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The generator's domain and class prompts (B, 2, W)."""
        out = self.generator(self.generator_input(images, domain, cls), images, 2)
        return out @ self.generator_proj.to(out.dtype)

    def features(self, images: torch.Tensor, domain: Optional[torch.Tensor] = None,
                 cls: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image features of the current stage (not normalised): ground-truth units in stage 1 (with
        dropout), generated prompts otherwise (masked when labels are given, as in training)."""
        if self.stage == UNITS:
            sequence = self.clip_sequence(images, self.domain_units[domain], self.class_units[cls])
            return self.clip_feature(F.dropout(sequence, self.config.dropout, training=True))
        prompts = self.generated_prompts(images, domain, cls)
        return self.clip_feature(self.clip_sequence(images, prompts[:, 0], prompts[:, 1]))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding: every unit unmasked, no label (the official stage 4), not normalised."""
        prompts = self.generated_prompts(images)
        return self.clip_feature(self.clip_sequence(images, prompts[:, 0], prompts[:, 1])).float()

    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        """Cross-entropy of the sketches' and their photos' features against the seen classes' texts
        (the official batch: half sketches, half photos; the negatives are not used)."""
        images, labels = self.labelled_images(batch)
        return self.class_loss(images, batch_domains(self.config, batch), labels)

    def logits(self, images: torch.Tensor, domain: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Normalised image features against the seen classes' normalised texts, over the temperature."""
        feats = F.normalize(self.features(images, domain, labels).float(), dim=-1)
        text = F.normalize(self.class_text_features().float(), dim=-1)
        return feats @ text.t() / self.config.temperature

    def class_loss(self, images: torch.Tensor, domain: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        ce = F.cross_entropy(self.logits(images, domain, labels), labels)
        return {"loss": ce, "cls": ce.detach()}
