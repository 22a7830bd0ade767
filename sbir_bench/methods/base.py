"""What a method is: a registered ``nn.Module`` that embeds sketches and photos and defines a loss.

The trainer, data pipeline, evaluation and reporting only ever talk to this interface, so a new
method is one class::

    @METHODS.register("my-method")
    class MyMethod(Method):
        description = "one line for `sbir-bench methods`"
        config_class = MyConfig            # a dataclass; YAML `method_config:` fills it

        def embed_sketches(self, images): ...
        def embed_photos(self, images): ...
        def loss(self, batch): return {"loss": ..., "triplet": ...}

Everything that is not a trainable parameter (the CLIP backbone) stays frozen; checkpoints hold only
the trainable state, so they are small and never duplicate CLIP's weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..config import from_dict, validate
from ..data.classnames import class_text
from ..data.triplets import TripletBatch
from ..errors import ConfigError
from ..models.factory import Backbone
from ..models.preprocess import eval_transform, preprocess_config, train_transform
from ..models.prompted import PromptedCLIP
from ..plugins import METHODS


@dataclass
class NoConfig:
    """Config of a method without options."""


@dataclass(frozen=True)
class Stage:
    """One phase of a method's training: its name ("" for a method trained in one phase) and its own
    optimisation settings (epochs, batch, rate schedule). Each stage starts a fresh optimiser over
    the parameters :meth:`Method.begin_stage` leaves trainable, and checkpoints on its own."""

    name: str
    train: Any  # a sbir_bench.config.TrainConfig
    accum_knob: str = "train.grad_accum"  # the setting that splits this stage's batches into micro-batches


def check_choice(method: str, key: str, value: Any, allowed: Sequence[str]) -> None:
    """One line when option ``key`` of ``method`` is not one of ``allowed``.

    >>> check_choice("pros", "preprocess", "official", ("official", "backbone"))
    """
    if value not in allowed:
        raise ConfigError(f"{method}: {key}={value!r}; choose one of: {', '.join(allowed)}")


@dataclass(frozen=True)
class ImagePipeline:
    """How a method's images are prepared, for training and evaluation, photos and sketches apart."""

    train: Callable
    eval: Callable
    sketch_train: Callable
    sketch_eval: Callable


def image_pipeline(method: "Method", preprocess_cfg: Dict[str, Any], dataset: str, image_size: Optional[int] = None,
                   crop_scale_min: float = 1.0) -> ImagePipeline:
    """The one builder of a method's image transforms, from its backbone's preprocessing
    (``preprocess_cfg``) and the dataset whose images it prepares: a run, ``eval --model`` and
    :func:`sbir_bench.load_model` all call it, so the same model embeds the same image the same way
    (ProS inverts Sketchy's sketches, not TU-Berlin's)."""
    pp = preprocess_config(preprocess_cfg, image_size)
    train, evaluation = type(method).image_transforms(method.config, pp, crop_scale_min)
    sketch_train, sketch_eval = type(method).sketch_transforms(method.config, dataset, train, evaluation)
    return ImagePipeline(train, evaluation, sketch_train, sketch_eval)


def with_own_modules(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """``model`` with its own copies of the submodules ``names`` and everything else shared: a method that
    trains parts of CLIP (CLIP-AT its image tower's LayerNorms, DePro both towers') trains a copy, since a
    library must not change the backbone object its caller handed it (which may serve other methods, or be
    evaluated again). Costs those submodules' memory once more."""
    clone = copy.copy(model)
    for slot in ("_modules", "_parameters", "_buffers"):  # copy.copy shares these dicts: give the clone its own
        setattr(clone, slot, type(getattr(model, slot))(getattr(model, slot)))
    for name in names:
        setattr(clone, name, copy.deepcopy(getattr(model, name)))
    return clone


def stages_of(method_cls: type, method_config: Dict[str, Any], train) -> Tuple[Stage, ...]:
    """The training stages of ``method_cls`` with the config mapping ``method_config`` (a run's
    ``method_config``) and ``train`` settings, without building anything."""
    return method_cls.training_stages(from_dict(method_cls.config_class, method_config, "method_config"), train)


def resolved_method_config(cfg, method_cls: Optional[type] = None):
    """The method's validated config as the run ``cfg``'s data resolves it (``Method.resolve_config``): the
    one value a run, its estimate and ``reproduce`` build the method from."""
    from ..data.catalog import get_spec
    from ..data.domains import check_domain_config
    method_cls = method_cls or METHODS.get(cfg.method)
    method_cfg = from_dict(method_cls.config_class, cfg.method_config, f"method_config ({cfg.method})")
    check_domain_config(cfg.data)
    return method_cls.resolve_config(method_cfg, get_spec(cfg.data.dataset), cfg.data)


def run_stages(cfg) -> Tuple[Stage, ...]:
    """The stages of a run (a ``config.RunConfig``): the value the memory plan, the estimate, resume and
    training all read. A run computes it once and hands it on."""
    return stages_of(METHODS.get(cfg.method), cfg.method_config, cfg.train)


STAGE_SUMS = ("steps_done", "seconds", "skipped_images", "skipped_steps", "gpu_hours")  # what stages add up
STAGE_PEAK = ("memory", "weights_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes", "workspace_bytes",
              "peak_memory_bytes")  # what the stage with the largest peak says


def _peak(part: Dict[str, Any]) -> float:
    memory = part.get("memory") or {}
    return part.get("peak_memory_bytes") or memory.get("predicted_peak_bytes") or memory.get("measured_peak_bytes") or 0


def combine_stages(parts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The one rule that makes a run of its stages, for the record and the estimate alike: the last stage's
    values, the sums of what stages add up (:data:`STAGE_SUMS`: steps, seconds, skips, GPU-hours) and the
    memory of the stage with the largest peak (:data:`STAGE_PEAK`).

    >>> combine_stages([{"seconds": 2, "lr": 0.1, "peak_memory_bytes": 9}, {"seconds": 3, "lr": 0.2,
    ...                                                                       "peak_memory_bytes": 4}])
    {'seconds': 5, 'lr': 0.2, 'peak_memory_bytes': 9}
    >>> combine_stages([{"memory": {"micro_batch": 200}}, {"memory": {"micro_batch": 25}}])  # no peak planned
    {'memory': {'micro_batch': 25}}
    """
    out = dict(parts[-1])
    for key in STAGE_SUMS:
        if any(key in p for p in parts):
            out[key] = sum(p.get(key, 0) for p in parts)
    largest = max(reversed(parts), key=_peak)  # equal peaks (none planned): the last stage's, as the rest
    out.update({k: largest[k] for k in STAGE_PEAK if k in largest})
    return out


class Method(nn.Module):
    """Base class of every sbir-bench method."""

    name: str = ""
    reads_image_batches: bool = False  # its loss also takes an ImageBatch (train.sampler balanced / dpk)
    description: str = ""
    config_class: type = NoConfig
    trainable: bool = True
    # True when images reach the method only through the frozen, unprompted image encoder: then
    # embed_sketches(x) == embed_features(frozen_image_features(x), "sketch") (and likewise for
    # photos), and evaluation may take the features from the disk cache (sbir_bench.feature_cache).
    uses_frozen_features: bool = False
    # True when the method injects prompts into the image encoder: it needs a ViT image tower, and
    # a ResNet backbone is refused in one line before anything is built (sbir_bench.runner).
    prompts_image_encoder: bool = False
    # Where `reproduce` finds its recipes: a folder laid out as the shipped one (paper/<table>/<cell>/<name>.yaml,
    # mini/<name>.yaml); None: the shipped recipes. A plug-in method ships its own and appears in the tables.
    recipes: Any = None
    table_order: int = 100  # its row's place in reproduce's tables (the built-ins from 10; a plug-in after them)

    @classmethod
    def check_config(cls, config, tokenizer) -> None:
        """Refuse option combinations that mean nothing, before any data or weight is loaded (one line).

        ``tokenizer`` is the backbone's (some rules count a phrase's tokens); the default accepts all.
        """

    @classmethod
    def check_dataset(cls, config, spec) -> None:
        """Refuse a dataset the method cannot run as documented (``spec``: a ``DatasetSpec``), in one line
        before anything loads. Default: every dataset; a multi-domain one (DomainNet) trains the method on
        the held-out domain's complement as its query side and real photos as its gallery side."""

    @classmethod
    def resolve_config(cls, config, spec, data):
        """The method's config for dataset ``spec`` under data section ``data``: what the data decides (ProS's
        and UCDR-Adapter's count of training domains, one prompt unit each) filled in, a contradiction
        refused in one line. The run resolves it before anything loads; the record and the artifact hold the
        result. Default: ``config`` unchanged."""
        return config

    @classmethod
    def training_stages(cls, config, train) -> Tuple[Stage, ...]:
        """The phases training runs in order, from the method's config and the run's ``train`` section.

        Default: one unnamed stage with the run's settings. A method trained in phases (ProS: prompt
        units, then the prompt generator) returns one named :class:`Stage` per phase; the runner, the
        memory plan and the resource estimate follow them.
        """
        return (Stage("", train),)

    @classmethod
    def split_invariant(cls, config, stage: str = "", micro_batch: int = 1) -> bool:
        """Whether a step over micro-batches of ``micro_batch`` triplets (gradients accumulated) computes
        what the whole batch's step computes, up to float rounding, in training stage ``stage``.

        True by default: a mean loss over independent samples. False where the step reads the batch
        as a whole (BatchNorm statistics, a random draw per forward pass, a share of the batch rounded
        per forward): a memory budget never splits such a step (training/memory.py); only the stage's
        ``accum_knob``, part of the model's identity, does.
        """
        return True

    def stage_parameters(self, stage: str) -> Optional[List[nn.Parameter]]:
        """The parameters training stage ``stage`` trains (a method trained in stages says so per stage);
        None: those the method built as trainable (a one-stage method)."""
        return None

    def begin_stage(self, name: str) -> None:
        """Enter training stage ``name``: the method's own parameters that :meth:`stage_parameters` names
        become the trainable ones, the others frozen (the backbone stays frozen). The trainer calls it for
        the stage it runs, and the estimate for the stage it traces; a method whose computation differs
        per stage reads :attr:`stage`."""
        self.stage = name
        chosen = self.stage_parameters(name)
        if chosen is None:
            return
        ids = {id(p) for p in chosen}
        for p in self.own_parameters():
            p.requires_grad_(id(p) in ids)

    def own_parameters(self) -> List[nn.Parameter]:
        """The method's own parameters: everything but the backbone's, trainable now or not."""
        frozen = {id(p) for p in self.clip.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    @classmethod
    def image_transforms(cls, config, pp, crop_scale_min: float) -> Tuple[Callable, Callable]:
        """(training, evaluation) image transforms for open_clip preprocess config ``pp``.

        Default: the backbone's own preprocessing, with the shared augmentation for training. A
        method whose reference code prepares images otherwise (CLIP-AT) overrides this; such a
        method must not set ``uses_frozen_features`` (the feature cache is keyed by ``pp``).
        """
        return train_transform(pp, crop_scale_min), eval_transform(pp)

    @classmethod
    def sketch_transforms(cls, config, dataset: str, train: Callable, evaluation: Callable) -> Tuple[Callable, Callable]:
        """(training, evaluation) transforms of the sketches of ``dataset``, given the images' own.

        Default: the same as the photos'. A method whose reference code prepares sketches otherwise
        (ProS inverts some datasets' sketches) overrides this.
        """
        return train, evaluation

    def __init__(self, backbone: Backbone, class_names: Sequence[str], seen: Sequence[int], config=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.clip = backbone.model
        self.clip.requires_grad_(False)
        self.class_names = list(class_names)
        self.seen = list(seen)  # training labels index into this list of dataset labels
        self.config = config if config is not None else self.config_class()
        self.stage = ""  # the training stage it is in (begin_stage); "" for a method trained in one
        # a method built in Python is checked as the CLI's is: its fields' bounds, then the combinations
        validate(self.config, f"method_config ({self.name or type(self).__name__})")
        self.check_config(self.config, backbone.tokenizer)

    # -- helpers shared by methods -------------------------------------------------------------
    @property
    def seen_names(self) -> List[str]:
        return [self.class_names[c] for c in self.seen]

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature (frozen), as a multiplier."""
        return self.clip.logit_scale.exp()

    def set_text_chunk(self, images: int) -> None:
        """Compute per-image class texts (SpLIP's ``class_text=image``, CoCoOp) in checkpointed chunks of
        ``images`` images while training (0: all at once). The values and gradients are the same; their
        activation memory is one chunk's, paid for with a second forward pass of those texts."""
        for module in self.modules():
            if isinstance(module, PromptedCLIP):
                module.text_chunk = images

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenizer(list(texts)).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def frozen_class_text(self, names: Sequence[str], template: str = "a photo of a {}.") -> torch.Tensor:
        """Frozen CLIP text embeddings (normalised) of ``template`` for each class name."""
        texts = [template.format(class_text(n)) for n in names]
        return nn.functional.normalize(self.clip.encode_text(self.tokenize(texts)).float(), dim=-1)

    @torch.no_grad()
    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP image embeddings (normalised, float32): what zero-shot CLIP retrieves with."""
        return nn.functional.normalize(self.clip.encode_image(images).float(), dim=-1)

    def batch_features(self, images: torch.Tensor, batch: TripletBatch) -> torch.Tensor:
        """Frozen features of one of ``batch``'s tensors: the tensor itself when the batch already holds
        cached features (``trains_on_frozen_features``), else the frozen encoder's output."""
        return images if batch.features else self.frozen_image_features(images)

    # -- the interface --------------------------------------------------------------------------
    def prepare_eval(self, class_names: Sequence[str]) -> None:
        """Called once before embedding a test set whose class vocabulary is ``class_names``."""

    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        if self.uses_frozen_features:
            return self.embed_features(self.frozen_image_features(images), "sketch")
        raise NotImplementedError

    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        if self.uses_frozen_features:
            return self.embed_features(self.frozen_image_features(images), "photo")
        raise NotImplementedError

    def trains_on_frozen_features(self) -> bool:
        """True when training batches may be cached frozen features instead of images (no augmentation)."""
        return False

    def embed_features(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Retrieval embedding from frozen image features (methods with ``uses_frozen_features``)."""
        raise NotImplementedError(f"{self.name} does not embed from frozen features")

    @torch.no_grad()
    def embed_cached(self, features: np.ndarray, modality: str, batch_size: int = 4096) -> np.ndarray:
        """:meth:`embed_features` over an array of cached features, in batches on the method's device."""
        out = [self.embed_features(torch.from_numpy(features[i: i + batch_size]).to(self.device), modality).float().cpu()
               for i in range(0, len(features), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        """Loss terms; ``"loss"`` is the total that is optimised."""
        raise NotImplementedError(f"{self.name} is not trainable")

    def forward(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:  # lets DDP wrap a method
        return self.loss(batch)

    def param_groups(self, lr: float) -> List[dict]:
        """Optimiser parameter groups; a group without ``lr`` runs at the run's ``lr``. Default: every
        trainable parameter in one group (CLIP-AT gives CLIP's own parameters a smaller rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def trainable_state(self) -> Dict[str, torch.Tensor]:
        """What training changes (what checkpoints store): trainable parameters and the method's own
        buffers (e.g. BatchNorm running statistics), never the frozen backbone's."""
        frozen = {id(b) for b in self.clip.buffers()}
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        names |= {n for n, b in self.named_buffers() if id(b) not in frozen}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state(self, state: Dict[str, torch.Tensor]) -> None:
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks {sorted(missing)[:3]}")
        self.load_state_dict(state, strict=False)

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
