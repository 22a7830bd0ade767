"""The numeric precision of training and of evaluation: one policy, each stage stating its own.

Training follows ``train.amp``; embedding images (test sets, validation, the frozen features the
linear probe trains on and the feature cache stores) follows ``eval.amp``. Both mean bf16 autocast on
a CUDA device that supports it and fp32 everywhere else; training falls back to fp16 with a gradient
scaler on a GPU without bf16. The feature cache keys its entries by :attr:`Precision.cache_label`,
so features computed under another precision are never mixed in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch


@dataclass(frozen=True)
class Precision:
    """``fp32``, ``bf16`` or ``fp16`` (the last two as autocast)."""

    name: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The autocast dtype (None: no autocast, fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        """fp16 training needs a gradient scaler; bf16 and fp32 do not."""
        return self.name == "fp16"

    @property
    def cache_label(self) -> str:
        """How the feature cache names it.

        >>> FP32.cache_label, Precision("bf16").cache_label
        ('fp32', 'bf16-autocast')
        """
        return "fp32" if self.dtype is None else f"{self.name}-autocast"

    def autocast(self, device_type: str) -> ContextManager:
        """The autocast context of this precision on ``device_type`` (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.dtype)


FP32 = Precision("fp32")


def device_offers(device: torch.device) -> str:
    """What autocast ``device`` offers: ``bf16`` (a CUDA GPU with bf16), ``fp16`` (a CUDA GPU without it)
    or ``none`` (the CPU and anything else: sbir-bench runs fp32 there)."""
    if device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def training_policy(amp: bool, offers: str) -> Precision:
    """The one rule for training: ``train.amp`` on a device that offers autocast takes bf16 where it has it,
    else fp16 with a gradient scaler; fp32 otherwise. The run asks it of its device, the estimate of the
    named GPU (:attr:`sbir_bench.gpus.Gpu.offers`).

    >>> [training_policy(True, o).name for o in ("bf16", "fp16", "none")], training_policy(False, "bf16").name
    (['bf16', 'fp16', 'fp32'], 'fp32')
    """
    if not amp or offers == "none":
        return FP32
    return Precision("bf16") if offers == "bf16" else Precision("fp16")


def evaluation_policy(amp: bool, offers: str) -> Precision:
    """The one rule for embedding: ``eval.amp`` where the device has bf16; else fp32 (embeddings are never
    fp16, whose range a projection's outputs can exceed).

    >>> evaluation_policy(True, "bf16").name, evaluation_policy(True, "fp16").name
    ('bf16', 'fp32')
    """
    return Precision("bf16") if amp and offers == "bf16" else FP32


def training_precision(amp: bool, device: torch.device) -> Precision:
    """``train.amp`` on ``device`` (:func:`training_policy`).

    >>> training_precision(True, torch.device("cpu")).name
    'fp32'
    """
    return training_policy(amp, device_offers(device)) if amp else FP32


def evaluation_precision(amp: bool, device: torch.device) -> Precision:
    """``eval.amp`` on ``device`` (:func:`evaluation_policy`).

    >>> evaluation_precision(True, torch.device("cpu")) == FP32
    True
    """
    return evaluation_policy(amp, device_offers(device)) if amp else FP32
