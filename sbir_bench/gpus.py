"""The GPUs an estimate can be for: memory, and the throughput assumed for a run's arithmetic.

Memory is the card's; throughputs are the vendors' datasheet peaks (dense bf16 tensor cores; fp32
without TF32, PyTorch's default for matmuls); the utilisation a prompt-learning step reaches and the
share of memory a run may plan for are our assumptions (docs/cluster.md). Kept apart from the
estimate itself (sizing.py) so that the command line can list the choices without loading models.

>>> parse_bytes("24GiB") == 24 * 2**30, parse_bytes("1.5GB"), parse_bytes(1000)
(True, 1500000000, 1000)
>>> round(GPUS["a100-80gb"].seconds(312e12 * 0.15, bf16=True), 6)
1.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict

from .errors import ConfigError

USABLE_SHARE = 0.9  # of a GPU's memory a run may plan for: the CUDA context and fragmentation keep the rest
@dataclass(frozen=True)
class Gpu:
    """One GPU model: its memory, and the throughput assumed for a run's arithmetic (assumptions)."""

    name: str
    memory_bytes: int
    bf16_tflops: float  # dense tensor-core peak, vendor datasheet
    fp32_tflops: float  # without TF32 (PyTorch's default for matmuls), vendor datasheet
    utilization: float = 0.15  # assumed share of that peak a step reaches in eager PyTorch (docs/cluster.md)

    def seconds(self, flops: float, bf16: bool) -> float:
        """Seconds for ``flops`` at the assumed utilisation of this GPU's peak."""
        return flops / ((self.bf16_tflops if bf16 else self.fp32_tflops) * 1e12 * self.utilization)


def usable_memory(gpu: str) -> int:
    """The bytes a run plans for on ``gpu``: its memory less what the CUDA context and fragmentation keep."""
    return int(USABLE_SHARE * get_gpu(gpu).memory_bytes)


GPUS: Dict[str, Gpu] = {gpu.name: gpu for gpu in (
    Gpu("a100-40gb", 40 * 2**30, 312.0, 19.5),
    Gpu("a100-80gb", 80 * 2**30, 312.0, 19.5),
    Gpu("h100-80gb", 80 * 2**30, 989.0, 67.0),
    Gpu("l40s-48gb", 45 * 2**30, 362.0, 91.6),
    Gpu("rtx4090-24gb", 24 * 2**30, 165.2, 82.6),
)}


DEFAULT_GPU = "a100-80gb"


def get_gpu(name: str) -> Gpu:
    """The GPU called ``name`` or a one-line error listing them."""
    if name not in GPUS:
        raise ConfigError(f"unknown --gpu {name!r}; choose one of: {', '.join(GPUS)}")
    return GPUS[name]


def parse_bytes(value: str | int | float) -> int:
    """``24GiB``, ``40GB``, ``512MiB`` or a number of bytes -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B)?\s*", str(value), re.I)
    if not m:
        raise ConfigError(f"memory size {value!r}: use a number of bytes or e.g. 24GiB, 40GB, 512MiB")
    unit = (m.group(2) or "B").upper()
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(float(m.group(1)) * (1024 if "I" in unit else 1000) ** power)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


