"""UCDR-Adapter (Jiang et al., WACV 2025), as its official code (fine68/UCDR2024 at dbbd797) computes it,
with the repairs that code needs to run at all (docs/methods.md lists each as a labelled choice).

A fork of ProS's code, in two stages of one run:

* **Source prompts** (``prompts``): one learned token per training domain and per seen class (the ground-
  truth ones inserted after CLIP's class token, before the frozen image tower, pooled at token 1), and
  the shared text context of "a photo of <class> from X..X domain." (CLIP's text projection stays
  frozen); cross-entropy against the seen classes' texts at temperature 0.07 plus a triplet against a
  momentum branch: an exponential moving average (0.999) of the prompt tables embeds every training
  image, its features fill per-class queues of 20, and each anchor draws two positives and two negatives
  from them at random (``torch.randint``, margin 0.2 on the Euclidean distance).
* **Adapters** (``adapter``): a query from the image alone (its patch tokens through CLIP's own frozen
  blocks, ``ln_post`` of token 0) attends, through two shared linear maps, over *all* domain tokens and
  over *all* class tokens (softmax at temperature 0.75); each result plus a LayerNorm of its linear
  projection, divided by 33, becomes the domain and the class prompt. The adapters, CLIP's class
  embedding and ``visual.proj`` train with the same cross-entropy; the text context and the tables are
  frozen. Its ground-truth masking is empty (the slices are ``[p*i : p*i]``), so training computes what
  the test does.

The retrieval embedding (token 1, not normalised) is the same for sketches and photos. Not built: the
frozen deep copy of CLIP's blocks that the official code uses as its query encoder (it equals CLIP's own
blocks, which are used instead), the momentum copies of frozen tensors (an average of equal values) and
of the adapters (their features enter no loss: the triplet runs in stage 1 only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm
from torch import nn

from sbir_bench.baselines.pros import INVERT, PREPROCESS, ProSFamily, batch_domains, resolve_domain_units
from sbir_bench.config import opt
from sbir_bench.data.balanced import ImageBatch
from sbir_bench.methods import METHODS, Stage, TripletBatch
from sbir_bench.models import PromptedCLIP
from sbir_bench.models.text_prompts import DomainSentencePrompts

PROMPTS, ADAPTER = "prompts", "adapter"


@dataclass
class UCDRAdapterConfig:
    """Options of UCDR-Adapter; the defaults are its README's Sketchy/TU-Berlin command (``-tp_N_CTX 8``;
    DomainNet's is 16) over its options.py, with ``-prompt 1`` (docs/methods.md). ``train.*`` is stage 2's."""

    n_ctx: int = opt(8, "shared text context vectors (-tp_N_CTX: 8 on Sketchy/TU-Berlin, 16 on DomainNet)", min=1)
    temperature: float = opt(0.07, "of the image-text cross-entropy", positive=True)
    attention_temperature: float = opt(0.75, "of the adapters' softmax over the prompt tokens (-ratio_soft_dom/cls)",
                                       positive=True)
    prompt_ratio: float = opt(33.0, "the generated prompts are divided by it (-ratio_prompt)", positive=True)
    momentum: float = opt(0.999, "of the moving average of the prompt tables (stage 1's momentum branch)",
                          min=0.0, below=1.0)
    queue_size: int = opt(20, "momentum features kept per class", min=1)
    margin: float = opt(0.2, "of the random-sample triplet (stage 1)", min=0.0)
    prompts_epochs: int = opt(1, "stage 1 epochs (one pass of its loader), at a constant rate train.lr", min=1)
    prompts_batch_size: int = opt(200, "stage 1 sketch-photo pairs per batch: 400 images (its loader for stage 1)", min=1)
    prompts_grad_accum: int = opt(1, "stage 1 micro-batches per step (its queues and draws make a split step "
                                     "another step)", min=1)
    preprocess: str = opt("official", "official: ProS's augmentation with ImageNet statistics; backbone: ours",
                          choices=PREPROCESS)
    domains: int = opt(0, "training domains, one domain token each: 0 = a sketch dataset's photos and sketches; a "
                          "multi-domain run sets it from the dataset (DomainNet: 5)", min=0)
    invert_sketches: str = opt("official", "official: its loader's rule (domains named sketch or quickdraw: Sketchy's, "
                                           "QuickDraw's sketches, DomainNet's sketch and quickdraw images); all; none",
                               choices=INVERT)


class PromptAttention(nn.Module):
    """The adapters: ``W_image`` maps the query, ``W_prompt`` the prompt tokens; a softmax over the tokens of
    their dot products (no sqrt(d) scaling) at ``temperature`` weighs the mapped tokens; the sum plus a
    LayerNorm of its projection is the output (B, 1, W). Shared by the domain and the class prompt."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.W_image = nn.Linear(width, width)
        self.W_prompt = nn.Linear(width, width)
        self.prompt_proj = nn.Linear(width, width)
        self.layer_norm2 = LayerNorm(width)

    def forward(self, query: torch.Tensor, prompts: torch.Tensor, temperature: float) -> torch.Tensor:
        keys = self.W_prompt(prompts).expand(query.shape[0], -1, -1)  # (B, N, W)
        scores = torch.bmm(keys, self.W_image(query).transpose(1, 2)) / temperature  # (B, N, 1)
        combined = (F.softmax(scores, dim=1) * keys).sum(dim=1, keepdim=True)
        return combined + self.layer_norm2(self.prompt_proj(combined))


def random_sample_triplet(features: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor, lengths: torch.Tensor,
                          margin: float) -> torch.Tensor:
    """UCDR-Adapter's ``triplet_loss_random`` over per-class queues (``queue``: (C, S, D), oldest entry first;
    ``lengths``: (C,)). For each anchor in order, positives are its class's entries and negatives every other
    class's (in class order); it draws a first positive, a first negative, a second positive and a second
    negative with ``torch.randint`` (the global generator, one call each, as the official loop) and adds
    ``0.5 relu(|a-p1| - |a-n1| + margin) + 0.5 relu(|a-p2| - |a-n2| + margin)``; anchors with no positive or
    no negative are skipped (no draw). The mean over the others; 0 when none has both (the official code
    fails there)."""
    counts = lengths.tolist()
    total = sum(counts)
    starts = [sum(counts[:c]) for c in range(len(counts))]
    flat = torch.cat([queue[c, :n] for c, n in enumerate(counts) if n]) if total else queue.new_zeros(0, 1)
    losses = []
    for anchor, label in zip(features, labels.tolist()):
        n_pos = counts[label]
        n_neg = total - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        p1, n1, p2, n2 = (int(torch.randint(0, n, (1,)).item()) for n in (n_pos, n_neg, n_pos, n_neg))
        pos = lambda i: flat[starts[label] + i]  # noqa: E731
        neg = lambda i: flat[i if i < starts[label] else i + n_pos]  # noqa: E731  (skip the own class's run)
        d = lambda other: torch.linalg.vector_norm(anchor - other)  # noqa: E731
        losses.append(0.5 * F.relu(d(pos(p1)) - d(neg(n1)) + margin) + 0.5 * F.relu(d(pos(p2)) - d(neg(n2)) + margin))
    return torch.stack(losses).mean() if losses else features.sum() * 0.0


@METHODS.register("ucdr-adapter")
class UCDRAdapter(ProSFamily):
    description = "UCDR-Adapter (WACV'25): source prompts + momentum-queue triplet, then image-queried adapters; CE"
    table_order = 78
    config_class = UCDRAdapterConfig

    @classmethod
    def check_config(cls, config: UCDRAdapterConfig, tokenizer) -> None:
        """Its fields' bounds and choices are declared on UCDRAdapterConfig; a class prompt that does not fit
        the text encoder is refused when the prompts are built."""

    @classmethod
    def training_stages(cls, config: UCDRAdapterConfig, train) -> Tuple[Stage, ...]:
        """Stage 1 (source prompts) at a constant rate for ``prompts_epochs`` at ``prompts_batch_size``, without
        validation or early stopping; stage 2 (adapters) with the run's ``train`` settings."""
        prompts = cls.first_stage(PROMPTS, train, config.prompts_epochs, config.prompts_batch_size,
                                  config.prompts_grad_accum, "method_config.prompts_grad_accum")
        return prompts, Stage(ADAPTER, train)

    @classmethod
    def split_invariant(cls, config: UCDRAdapterConfig, stage: str = "", micro_batch: int = 1) -> bool:
        """Stage 1 appends each forward pass's momentum features to the queues its triplet then samples, and
        moves the moving average once per pass: a split step sees other queues. Stage 2: a mean CE."""
        return stage != PROMPTS

    @classmethod
    def resolve_config(cls, config: UCDRAdapterConfig, spec, data) -> UCDRAdapterConfig:
        return resolve_domain_units("ucdr-adapter", config, spec, data)

    def __init__(self, backbone, class_names, seen, config=None) -> None:
        super().__init__(backbone, class_names, seen, config)
        cfg = self.config
        self.prompted = PromptedCLIP(self.clip)
        visual = self.clip.visual
        width = self.prompted.vision_width
        self.copy_image_head()
        self.ctx = nn.Parameter(torch.randn(cfg.n_ctx, self.prompted.text_width) * 0.02)
        bound = self.prompt_bound()
        n_domains = cfg.domains or 2
        self.domain_prompts = nn.Parameter(torch.empty(n_domains, width).uniform_(-bound, bound))
        self.class_prompts = nn.Parameter(torch.empty(len(self.seen), width).uniform_(-bound, bound))
        self.attention = PromptAttention(width)
        # the momentum branch (stage 1): its own draws of the tables, moved towards them at every step
        self.register_buffer("momentum_domain_prompts", torch.empty(n_domains, width).uniform_(-bound, bound))
        self.register_buffer("momentum_class_prompts", torch.empty(len(self.seen), width).uniform_(-bound, bound))
        embed = int(visual.proj.shape[1])
        self.register_buffer("queue", torch.zeros(len(self.seen), cfg.queue_size, embed))
        self.register_buffer("queue_lengths", torch.zeros(len(self.seen), dtype=torch.long))
        self.text_prompts = DomainSentencePrompts(self.backbone.tokenizer, self.seen_names, cfg.n_ctx, "ucdr-adapter")
        self.begin_stage(PROMPTS)

    # ------------------------------------------------------------------ stages
    def stage_parameters(self, stage: str) -> List[nn.Parameter]:
        """What ``stage`` trains (the official ``training_set`` lists, by name prefix)."""
        if stage == PROMPTS:
            return [self.ctx, self.domain_prompts, self.class_prompts]
        if stage == ADAPTER:
            return [*self.attention.parameters(), self.class_embedding, self.image_proj]
        raise ValueError(f"ucdr-adapter has the stages {PROMPTS} and {ADAPTER}, not {stage!r}")

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        """Every tensor either stage trains, and the momentum branch and queues (stage 1 reads them at its
        next step): a checkpoint resumes where it stopped, an artifact holds the frozen tables stage 2 uses."""
        own = {id(p) for p in self.own_parameters()}
        state = {n: p.detach().clone() for n, p in self.named_parameters() if id(p) in own}
        state.update({n: b.detach().clone() for n, b in self.named_buffers() if n.startswith(("momentum_", "queue"))})
        return state

    # ------------------------------------------------------------------ text
    def class_text_features(self) -> torch.Tensor:
        """Text features (not normalised) of the seen classes' prompts: the learned context, CLIP's own
        (frozen) text projection."""
        return self.text_prompts.encode(self.prompted, self.ctx, self.clip.text_projection)

    # ------------------------------------------------------------------ images
    def clip_sequence(self, images: torch.Tensor, domain: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """CLIP's input ``[class token, domain prompt, class prompt, patches]`` (B, 3 + P, W)."""
        return self.prompted_sequence(self.patches(images), domain, cls)

    def clip_feature(self, sequence: torch.Tensor) -> torch.Tensor:
        """The frozen image tower on ``sequence``: ``ln_post`` of token 1, projected."""
        return self.pooled_feature(sequence, 1)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """The adapters' query (B, 1, W): the patch tokens alone through CLIP's blocks, ``ln_post`` of token 0."""
        v = self.clip.visual
        return v.ln_post(PromptedCLIP.run_transformer(v.transformer, v.ln_pre(self.patches(images)))[:, :1])

    def generated_prompts(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The domain and the class prompt of each image (B, 1, W) each."""
        q = self.query(images)
        t = self.config.attention_temperature
        dom = self.attention(q, self.domain_prompts.to(q.dtype), t) / self.config.prompt_ratio
        cls = self.attention(q, self.class_prompts.to(q.dtype), t) / self.config.prompt_ratio
        return dom, cls

    def features(self, images: torch.Tensor, domain: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Image features of the current stage (not normalised): the ground-truth tokens in stage 1, the
        generated prompts otherwise."""
        if self.stage == PROMPTS:
            return self.clip_feature(self.clip_sequence(images, self.domain_prompts[domain], self.class_prompts[cls]))
        dom, cls_prompt = self.generated_prompts(images)
        return self.clip_feature(self.clip_sequence(images, dom, cls_prompt))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding (the official stage 4), not normalised."""
        dom, cls = self.generated_prompts(images)
        return self.clip_feature(self.clip_sequence(images, dom, cls)).float()

    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)

    # ------------------------------------------------------------------ momentum branch
    @torch.no_grad()
    def momentum_features(self, images: torch.Tensor, domain: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Move the momentum tables towards the trained ones (``m = 0.999 m + 0.001 p``), then embed with them
        (normalised): the official order, once per training forward pass."""
        m = self.config.momentum
        for mine, trained in ((self.momentum_domain_prompts, self.domain_prompts),
                              (self.momentum_class_prompts, self.class_prompts)):
            mine.copy_(m * mine + (1 - m) * trained)
        sequence = self.clip_sequence(images, self.momentum_domain_prompts[domain], self.momentum_class_prompts[cls])
        return F.normalize(self.clip_feature(sequence).float(), dim=-1)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append each feature to its class's queue in batch order, dropping the oldest of a full queue."""
        size = self.queue.shape[1]
        for feature, label in zip(features, labels.tolist()):
            n = int(self.queue_lengths[label])
            if n == size:
                self.queue[label, :-1] = self.queue[label, 1:].clone()
                n -= 1
            self.queue[label, n] = feature.to(self.queue.dtype)
            self.queue_lengths[label] = n + 1

    # ------------------------------------------------------------------ loss
    def loss(self, batch: TripletBatch | ImageBatch) -> Dict[str, torch.Tensor]:
        """The objective over the batch's images (:meth:`labelled_images`), in order: the queues fill so."""
        images, labels = self.labelled_images(batch)
        return self.objective(images, batch_domains(self.config, batch), labels)

    def objective(self, images: torch.Tensor, domain: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Cross-entropy of the normalised features against the normalised texts; in stage 1 plus the
        random-sample triplet against the queues, after this pass's momentum features joined them."""
        feats = F.normalize(self.features(images, domain, labels).float(), dim=-1)
        text = F.normalize(self.class_text_features().float(), dim=-1)
        ce = F.cross_entropy(feats @ text.t() / self.config.temperature, labels)
        if self.stage != PROMPTS or not self.training:
            return {"loss": ce, "cls": ce.detach()}
        momentum = self.momentum_features(images, domain, labels)
        if feats.device.type == "meta":  # a resource estimate (sizing.py): the momentum pass is counted; the
            triplet = feats.sum() * 0.0  # queues' Python bookkeeping has no values to read, and its few distances
        else:  # per anchor hold a negligible share of the step's memory
            self.enqueue(momentum, labels)
            triplet = random_sample_triplet(feats, labels, self.queue, self.queue_lengths, self.config.margin)
        return {"loss": ce + triplet, "cls": ce.detach(), "triplet": triplet.detach()}
