"""Image preprocessing that travels with the weights (open_clip's own preprocess config).

Every open_clip weight tag specifies how its images were prepared (resize interpolation, resize
mode, normalisation statistics). Evaluation uses exactly open_clip's inference transform for the
backbone's config; training augmentation (random resized crop and flip) keeps the same
interpolation and normalisation, so training and test images differ only by the augmentation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, Optional

from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, ImageOps
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what reference code written for ImageNet models normalises with
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                 "random": T.InterpolationMode.BICUBIC}  # open_clip maps "random" to bicubic at inference


def preprocess_config(cfg: Dict[str, Any], image_size: Optional[int] = None) -> PreprocessCfg:
    """open_clip's :class:`PreprocessCfg` from a model's preprocess dict, optionally resized."""
    known = {k: v for k, v in cfg.items() if k in PreprocessCfg.__dataclass_fields__}
    out = PreprocessCfg(**known)
    return replace(out, size=image_size) if image_size else out


def eval_transform(cfg: PreprocessCfg) -> Callable:
    """open_clip's inference transform for ``cfg`` (resize, crop or pad, tensor, normalise)."""
    return image_transform_v2(cfg, is_train=False)


def train_transform(cfg: PreprocessCfg, crop_scale_min: float) -> Callable:
    """Augmentation shared by sketches and photos, in ``cfg``'s interpolation and statistics: a random
    resized crop of at least ``crop_scale_min`` of the area (``data.crop_scale_min``) and a flip."""
    size = cfg.size if isinstance(cfg.size, int) else tuple(cfg.size)
    crop = T.RandomResizedCrop(size, scale=(crop_scale_min, 1.0), interpolation=INTERPOLATION[cfg.interpolation],
                               antialias=True)
    return T.Compose([crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])



class PadToSquare:
    """Pad to a ``size`` square with black, keeping the aspect (``PIL.ImageOps.pad``, bicubic).

    A class, not a lambda, so transforms pickle into DataLoader worker processes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.pad(image, (self.size, self.size), method=Image.Resampling.BICUBIC)

    def __repr__(self) -> str:  # shown in records' image_transforms
        return f"PadToSquare(size={self.size}, fill=black, interpolation=bicubic)"


class Inverted:
    """``transform`` of the colour-inverted image (white strokes on black for a sketch).

    A class, not a lambda, so transforms pickle into DataLoader worker processes."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image):
        return self.transform(ImageOps.invert(image.convert("RGB")))

    def __repr__(self) -> str:  # shown in records' image_transforms
        return f"Inverted({self.transform!r})"


class ByDomain:
    """A transform chosen per image by its domain (a multi-domain copy such as DomainNet): ``chosen`` for
    the domains in ``domains``, ``other`` for the rest. The loaders ask :func:`sbir_bench.data.images.
    transform_for` which one an image gets. ProS's and DePro's loader inverts the images of the domains
    named ``sketch`` and ``quickdraw`` and no other: this states that rule for DomainNet's query side,
    which mixes domains."""

    def __init__(self, domains, chosen: Callable, other: Callable) -> None:
        self.domains, self.chosen, self.other = tuple(domains), chosen, other

    def for_domain(self, domain: str) -> Callable:
        return self.chosen if domain in self.domains else self.other

    def __call__(self, image: Image.Image):  # an image of unknown domain (load_model's API): the others' rule
        return self.other(image)

    def __repr__(self) -> str:  # shown in records' image_transforms
        return f"ByDomain({list(self.domains)}: {self.chosen!r}; else {self.other!r})"


def padded_square_transform(size: int, mean, std) -> Callable:
    """:class:`PadToSquare`, then normalise with ``mean``/``std``: CLIP-AT's official preprocessing
    (no crop, so no stroke is lost)."""
    return T.Compose([PadToSquare(size), T.ToTensor(), T.Normalize(mean, std)])


def jittered_train_transform(size: int, crop_scale_min: float, jitter: float, mean, std) -> Callable:
    """ProS's training augmentation: a random resized crop (bilinear) of at least ``crop_scale_min`` of
    the area, a flip, colour jitter of ``jitter`` in brightness, contrast, saturation and hue, then
    ``mean``/``std`` (ImageNet's in its code, whatever the weights were trained with)."""
    return T.Compose([T.RandomResizedCrop((size, size), scale=(crop_scale_min, 1.0), antialias=True),
                      T.RandomHorizontalFlip(0.5), T.ColorJitter(jitter, jitter, jitter, jitter), T.ToTensor(),
                      T.Normalize(mean, std)])
