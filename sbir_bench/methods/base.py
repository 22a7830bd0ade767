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

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..models.factory import Backbone


@dataclass
class NoConfig:
    """Config of a method without options."""


@dataclass
class TripletBatch:
    """One training batch: anchor sketches with a positive and a negative photo each."""

    sketch: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    label: torch.Tensor  # class of sketch and positive (index into the seen-class list)
    negative_label: torch.Tensor  # class of the negative photo (same list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TripletBatch":
        return TripletBatch(*(t.to(device, non_blocking=non_blocking) for t in
                              (self.sketch, self.positive, self.negative, self.label, self.negative_label)))


class Method(nn.Module):
    """Base class of every sbir-bench method."""

    name: str = ""
    description: str = ""
    config_class: type = NoConfig
    trainable: bool = True

    def __init__(self, backbone: Backbone, class_names: Sequence[str], seen: Sequence[int], config=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.clip = backbone.model
        self.clip.requires_grad_(False)
        self.class_names = list(class_names)
        self.seen = list(seen)  # training labels index into this list of dataset labels
        self.config = config if config is not None else self.config_class()

    # -- helpers shared by methods -------------------------------------------------------------
    @property
    def seen_names(self) -> List[str]:
        return [self.class_names[c] for c in self.seen]

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature (frozen), as a multiplier."""
        return self.clip.logit_scale.exp()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenizer(list(texts)).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def frozen_class_text(self, names: Sequence[str], template: str = "a photo of a {}.") -> torch.Tensor:
        """Frozen CLIP text embeddings (normalised) of ``template`` for each class name."""
        texts = [template.format(n.replace("_", " ").replace("-", " ")) for n in names]
        return nn.functional.normalize(self.clip.encode_text(self.tokenize(texts)).float(), dim=-1)

    # -- the interface --------------------------------------------------------------------------
    def prepare_eval(self, class_names: Sequence[str]) -> None:
        """Called once before embedding a test set whose class vocabulary is ``class_names``."""

    def embed_sketches(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_photos(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:
        """Loss terms; ``"loss"`` is the total that is optimised."""
        raise NotImplementedError(f"{self.name} is not trainable")

    def forward(self, batch: TripletBatch) -> Dict[str, torch.Tensor]:  # lets DDP wrap a method
        return self.loss(batch)

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
