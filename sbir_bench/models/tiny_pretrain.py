"""A tiny CLIP for the mini world: ``sbir-tiny`` contrastively pretrained on synthetic photos.

A randomly initialised CLIP maps every image to nearly the same vector, so on the mini set neither
zero-shot retrieval nor prompt learning means anything. Real CLIP was pretrained on web *photos*
with captions and sees sketches as out-of-domain images; this module reproduces that situation in
miniature. It renders a fresh corpus of photo-like images of the 20 mini object classes (new
instances from a different seed than the mini set, and a random colour per instance so that shape,
not colour, identifies the class) plus fewer sketch-like drawings (1 for every 2 photos), pairs each
with a caption ("a photo of a star.", "a sketch of a star."), and aligns image and text towers so
that captions classify images zero-shot (see :func:`pretrain`). As in web CLIP, a class's sketches
land near its photos but not on them (:data:`SKETCH_ALIGNMENT`): zero-shot sketch-to-photo retrieval
works far above chance, the features tell sketches apart well, and there is a modality gap for a
trained method to close, which is the ZS-SBIR situation in miniature.

The same weights on every machine: 3,000 training steps amplify the last-bit differences between
CPUs (Intel and AMD kernels reduce floats in different orders), so weights built on two machines
differ and so would every mini-set number. The package therefore *ships* the weights this generator
built once (fp16 safetensors, :data:`SHIPPED`, its SHA-256 in :data:`SHIPPED_SHA256` and in every run
record). ``--backbone sbir-tiny --pretrained mini`` (the default for ``sbir-tiny``) loads them;
``--pretrained random`` keeps random init. The generator stays a documented command,
``python -m sbir_bench.models.tiny_pretrain OUT.safetensors`` (about 4 minutes on two cores), and a
test checks that it still builds a backbone of the same quality (zero-shot accuracy within a band),
not the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save

from ..data.classnames import class_text
from ..data.mini import MINI_CLASSES, render_photo, render_sketch
from ..errors import WeightsError
from ..fileio import atomic_write_bytes, file_sha256
from ..log import configure_cli_logging, progress
from .backbone_configs import TINY, create_model

THREADS = 2

VERSION = 6  # 4: child process with pinned numerics; 5: sketches near their photos; 6: deterministic kernels
TAG = "mini"
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a sketch of a {}.")
PHOTOS_PER_CLASS = 300  # a ViT from scratch memorises ~1k images; 6k lets it learn shapes
SKETCHES_PER_CLASS = 150  # web-scale CLIP has seen sketches: fewer than photos, enough to tell them apart
STEPS = 3000
BATCH = 128
LR = 3e-3
TEXT_STEPS = 150
SEED = 1000
SKETCH_ALIGNMENT = 0.3  # how close a class's sketch vector is to its photo vector (1: the same vector)


SHIPPED = Path(__file__).parent / "weights" / f"sbir-tiny-{TAG}-v{VERSION}.safetensors"
SHIPPED_SHA256 = "86099f64832ae962b300143236b939ed2dd64cc6eed5900399b24b86a19f900d"
_verified = False


def _corpus(seed: int, per_class: int = PHOTOS_PER_CLASS,
            sketches_per_class: int = SKETCHES_PER_CLASS) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(uint8 images N x 3 x 64 x 64, labels, class names) of freshly rendered photos and sketches.

    Per class, ``per_class`` photos come first, then ``sketches_per_class`` sketches (see :func:`is_sketch`).
    """
    images, labels = [], []
    for ci, cname in enumerate(MINI_CLASSES):
        for k in range(per_class):
            rng = np.random.default_rng([seed, ci, k])
            images.append(np.asarray(render_photo(cname, rng, rng.uniform(30, 230, 3)), dtype=np.uint8))
            labels.append(ci)
        for k in range(sketches_per_class):
            rng = np.random.default_rng([seed, ci, per_class + k])
            images.append(np.asarray(render_sketch(cname, rng), dtype=np.uint8))
            labels.append(ci)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels), list(MINI_CLASSES)


def is_sketch(n_images: int, n_classes: int, sketches_per_class: int) -> torch.Tensor:
    """Modality of each :func:`_corpus` image (True: sketch)."""
    per = n_images // n_classes
    return (torch.arange(n_images) % per) >= per - sketches_per_class


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> CLIP-normalised float (OpenAI statistics, as the mini runs use)."""
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def class_vectors(photo_head: torch.Tensor, free_head: torch.Tensor) -> torch.Tensor:
    """(2, C, E) unit class vectors: photos', and sketches' = a mix of the photo vector and a free one.

    Web CLIP places a class's sketches near, not on, its photos: the sketch vector of class c is
    ``normalize(a * p_c + (1 - a) * q_c)`` with ``a`` = :data:`SKETCH_ALIGNMENT` and q_c learned.
    """
    p, q = F.normalize(photo_head, dim=-1), F.normalize(free_head, dim=-1)
    return torch.stack([p, F.normalize(SKETCH_ALIGNMENT * p + (1 - SKETCH_ALIGNMENT) * q, dim=-1)])


def _train_image_tower(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int,
                       steps: int, gen: torch.Generator, sketch: torch.Tensor) -> torch.Tensor:
    """Stage 1: image tower + cosine class heads (CLIP's logit scale), one per modality (see
    :func:`class_vectors`); returns the (2, C, E) unit class vectors."""
    width = model.text_projection.shape[1]
    head = torch.nn.Parameter(torch.randn(n_classes, width, generator=gen) * 0.02)
    free = torch.nn.Parameter(torch.randn(n_classes, width, generator=gen) * 0.02)
    params = [*model.visual.parameters(), model.logit_scale, head, free]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.05)
    for step in progress(range(steps), desc="pretraining sbir-tiny: image tower", unit="step"):
        idx = torch.randint(len(images), (BATCH,), generator=gen)
        batch = normalise(images[idx])
        if step % 2:
            batch = batch.flip(-1)
        img = F.normalize(model.encode_image(batch), dim=-1)
        vectors = class_vectors(head, free)[sketch[idx].long()]  # (B, C, E): each image's modality
        logits = model.logit_scale.exp() * torch.einsum("be,bce->bc", img, vectors)
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return class_vectors(head, free).detach()


def _train_text_tower(model: torch.nn.Module, captions: list, targets: torch.Tensor, steps: int) -> None:
    """Stage 2: text tower maps each caption of class c onto c's vector of the caption's modality
    ("a sketch of a {}" onto the sketch vectors, the other templates onto the photo vectors)."""
    params = [p for n, p in model.named_parameters() if not n.startswith("visual") and n != "logit_scale"]
    opt = torch.optim.AdamW(params, lr=1e-3)
    labels = torch.arange(targets.shape[1])
    for step in progress(range(steps), desc="pretraining sbir-tiny: text tower", unit="step"):
        k = step % len(captions)
        txt = F.normalize(model.encode_text(captions[k]), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp().detach() * txt @ targets[int("sketch" in TEMPLATES[k])].t(),
                               labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def pretrain(steps: int = STEPS, seed: int = SEED) -> dict:
    """Train sbir-tiny from its seeded random init on the synthetic photo corpus; return its state dict.

    Two stages, because a randomly initialised text tower gives 20 nearly identical caption vectors
    and joint contrastive training from scratch does not get off the ground in a CPU-minute: the
    image tower first learns the classes against free class vectors, then the text tower learns to
    put each class's captions on its vector (50 steps suffice). The result is CLIP-like: image and
    caption embeddings aligned, zero-shot classification by cosine similarity.
    """
    torch.manual_seed(seed)
    model = create_model(TINY, pretrained=None)[0]
    tokenizer = open_clip.get_tokenizer(TINY)
    images, labels, names = _corpus(seed)
    captions = [tokenizer([t.format(class_text(n)) for n in names]) for t in TEMPLATES]
    gen = torch.Generator().manual_seed(seed)
    model.train()
    sketch = is_sketch(len(images), len(names), SKETCHES_PER_CLASS)
    targets = _train_image_tower(model, images, labels, len(names), steps, gen, sketch)
    _train_text_tower(model, captions, targets, TEXT_STEPS)
    model.eval()
    return model.state_dict()


def ensure_weights() -> str:
    """Path of the shipped sbir-tiny weights, after checking (once per process) that they are the
    bytes the package was released with: a damaged install is an error, never other numbers."""
    global _verified
    if not _verified:
        if not SHIPPED.is_file():
            raise WeightsError(f"the shipped sbir-tiny weights are missing ({SHIPPED}); reinstall sbir-bench")
        if file_sha256(SHIPPED) != SHIPPED_SHA256:
            raise WeightsError(f"the shipped sbir-tiny weights {SHIPPED} are damaged (SHA-256 differs); "
                               f"reinstall sbir-bench")
        _verified = True
    return str(SHIPPED)


def to_safetensors(state: dict) -> bytes:
    """fp16 safetensors bytes of a state dict (the shipped format: half the size, loads into fp32)."""
    return save({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()},
                metadata={"generator": f"sbir_bench.models.tiny_pretrain v{VERSION}", "steps": str(STEPS),
                          "seed": str(SEED)})


def build(path: str, steps: int = STEPS) -> None:
    """Pretrain with pinned threads and deterministic kernels; write fp16 safetensors atomically.

    Deterministic kernels make two builds on one machine identical: with two threads, the backward
    of an indexed gather accumulates in a thread-dependent order (up to 0.9 apart in some weights).
    Other machines build a backbone of the same quality, not the same bytes.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        atomic_write_bytes(path, to_safetensors(pretrain(steps)))
    finally:  # a caller in the same process (a test) keeps its own settings
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m sbir_bench.models.tiny_pretrain OUT.safetensors [--quiet]")
    configure_cli_logging(quiet="--quiet" in sys.argv)
    build(sys.argv[1])
