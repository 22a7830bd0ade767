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


def _bf16_here(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def training_precision(amp: bool, device: torch.device) -> Precision:
    """``train.amp`` on CUDA: bf16 autocast, or fp16 with a scaler where the GPU lacks bf16; else fp32.

    >>> training_precision(True, torch.device("cpu")).name
    'fp32'
    """
    if not amp or device.type != "cuda":
        return FP32
    return Precision("bf16") if _bf16_here(device) else Precision("fp16")


def evaluation_precision(amp: bool, device: torch.device) -> Precision:
    """``eval.amp`` on a CUDA device with bf16: bf16 autocast; else fp32 (embeddings are never fp16,
    whose range a projection's outputs can exceed).

    >>> evaluation_precision(True, torch.device("cpu")) == FP32
    True
    """
    return Precision("bf16") if amp and _bf16_here(device) else FP32
