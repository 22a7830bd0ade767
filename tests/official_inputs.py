"""Fixed weights and inputs shared by the official-code fixtures and the tests that replay them.

``tests/fixtures/official/make_fixtures.py`` runs CLIP-AT's and CoCoOp's official code (checked out
outside this project) on a tiny OpenAI-layout CLIP filled with :func:`weights`, and stores what that
code computes; ``tests/test_official_equivalence.py`` builds the same CLIP through open_clip
(``test-openai-tiny.json``), fills it the same way, and checks our methods against the numbers.
Everything here comes from numpy's seeded generator, so the inputs are the same bytes on every CPU.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import numpy as np

# the OpenAI CLIP constructor's arguments for the fixture model (open_clip: test-openai-tiny.json)
TINY_OPENAI = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                   context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2,
                   transformer_layers=2)
CLASS_NAMES = ["hot_air_balloon", "t-shirt", "cup", "star", "kite"]  # underscore and hyphen on purpose
N_IMAGES = 4
N_PROMPTS = 3


def _std(name: str, shape: Sequence[int]) -> float:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
    return fan_in ** -0.5 if fan_in else 0.1


def weights(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> Dict[str, np.ndarray]:
    """A float32 value per parameter name, in sorted-name order from one seeded generator.

    LayerNorm gains sit near 1, the temperature is CLIP's initial 1/0.07, everything else is
    N(0, 1/fan_in) (0.1 for vectors), so activations stay O(1) through the tiny towers.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        noise = rng.standard_normal(shape)
        if name == "logit_scale":
            value = np.full(shape, math.log(1 / 0.07))
        elif (".ln_" in name or name.startswith("ln_")) and name.endswith(".weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = noise * _std(name, shape)
        out[name] = value.astype(np.float32)
    return out


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n`` normalised-looking images (N, 3, size, size), float32."""
    return np.random.default_rng([seed, 1]).standard_normal((n, 3, size, size)).astype(np.float32)


def prompt_values(rows: int, width: int, seed: int) -> np.ndarray:
    """Values for a learned prompt (rows, width): N(0, 1), as CLIP-AT's ``randn`` initialisation."""
    return np.random.default_rng([seed, 2]).standard_normal((rows, width)).astype(np.float32)


def labels(n: int, n_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 3]).integers(n_classes, size=n)


def pil_image(seed: int, size=(40, 24)):
    """A non-square RGB image (width, height = ``size``): padding to a square has work to do."""
    from PIL import Image
    pixels = np.random.default_rng([seed, 4]).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ----------------------------------------------------------------------------------------- ProS
# ProS's generator is hard-coded to width 768, input 224 and patch 32 and reads CLIP's width, so its
# tiny CLIP keeps those and shrinks the rest (open_clip: test-pros-tiny.json)
PROS_TINY = dict(embed_dim=32, image_resolution=224, vision_layers=1, vision_width=768, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=2, transformer_layers=1)
VIT_B32_OPENAI = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                      context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                      transformer_layers=12)
PROS_IMAGES = 4
PROS_DROPOUT_SEED = 70
FULL_VALUES = 256  # tensors with more values are stored as row summaries
PROS_OWN = ("generator", "specific_", "ge_", "text_prompt_learner.ctx")


def pros_own_names(names) -> list:
    """The official ProS state names of the method's own tensors (not CLIP's): filled from seed 50."""
    return sorted(n for n in names if n.startswith(PROS_OWN))


def row_summary(values: np.ndarray, groups: int = 32) -> dict:
    """A large tensor as its shape and, for each of at most ``groups`` runs of consecutive rows of its
    last axis, the L2 norm and the dot product with a fixed random direction (summed over the run's
    rows): any changed, moved or missing value changes some run's pair."""
    rows = values.reshape(-1, values.shape[-1]).astype(np.float64)
    direction = np.random.default_rng([rows.shape[1], 5]).standard_normal(rows.shape[1])
    runs = np.array_split(np.arange(len(rows)), min(groups, len(rows)))
    norm = [np.sqrt((rows[r] ** 2).sum()) for r in runs]
    dot = [(rows[r] @ direction).sum() for r in runs]
    return {"shape": list(values.shape), "norm": [float(f"{v:.8g}") for v in norm],
            "dot": [float(f"{v:.8g}") for v in dot]}


def pros_retrieval_set(n_query: int = 30, n_gallery: int = 240, n_classes: int = 4, dim: int = 8):
    """Unnormalised query and gallery embeddings around class centres, without tied distances, and their
    labels: at least 200 gallery items (the official metric code needs them)."""
    rng = np.random.default_rng(80)
    centres = rng.standard_normal((n_classes, dim)) * 1.5
    ql, gl = rng.integers(n_classes, size=n_query), rng.integers(n_classes, size=n_gallery)
    q = centres[ql] + rng.standard_normal((n_query, dim)) * rng.uniform(0.5, 2.0, (n_query, 1))
    g = centres[gl] + rng.standard_normal((n_gallery, dim)) * rng.uniform(0.5, 2.0, (n_gallery, 1))
    return q.astype(np.float32), g.astype(np.float32), ql.astype(np.int64), gl.astype(np.int64)


# ----------------------------------------------------------------------------------------- DePro
# DePro's generator is ProS's size (hard-coded 768/224/32): the same tiny CLIP (PROS_TINY). Eight images
# whose classes and domains (indices into CLASS_NAMES and the sorted domains extended_photo, sketch) give
# DaTri every case: a class with a cross-domain positive, one alone (class 2, class 4), one whose images
# share a domain (class 3).
DEPRO_IMAGES = 8
DEPRO_CLASSES = [0, 0, 1, 1, 2, 3, 3, 4]
DEPRO_DOMAINS = [0, 1, 1, 0, 1, 1, 1, 0]
DEPRO_OWN = ("text_prompt_learner.ctx", "visual_udp_generator.", "visual_encoder.prompt_embeddings",
             "visual_encoder.meta_net.")


def depro_own_names(names) -> list:
    """The official DePro state names of the method's own tensors (not CLIP's): filled from seed 50."""
    return sorted(n for n in names if n.startswith(DEPRO_OWN))


# ----------------------------------------------------------------------------------------- UCDR-Adapter
# its adapters are hard-coded to width 768: ProS's tiny CLIP; the DePro images' classes and domains
UCDR_OWN = ("text_prompt_learner.ctx", "image_encoder.specific_", "image_encoder.W_", "image_encoder.prompt_proj",
            "image_encoder.layer_norm", "image_encoder_m.specific_", "image_encoder_m.W_",
            "image_encoder_m.prompt_proj", "image_encoder_m.layer_norm")


def ucdr_own_names(names) -> list:
    """The official UCDR-Adapter state names of the method's own tensors (not CLIP's, nor the copies of
    CLIP's blocks it makes): filled from seed 50."""
    return sorted(n for n in names if n.startswith(UCDR_OWN))
