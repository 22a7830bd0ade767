"""The GPUs an estimate can be for: memory, and the throughput assumed for a run's arithmetic.

Memory is the card's; throughputs are the vendors' datasheet peaks (dense bf16 tensor cores; fp32
without TF32, PyTorch's default for matmuls); the utilisation a prompt-learning step reaches and the
share of memory a run may plan for are our assumptions (docs/cluster.md). Kept apart from the
estimate itself (estimate.py, sizing.py) so that the command line can list the choices without loading models.

>>> parse_bytes("24GiB") == 24 * 2**30, parse_bytes("1.5GB"), parse_bytes(1000)
(True, 1500000000, 1000)
>>> round(GPUS["a100-80gb"].seconds(312e12 * 0.15, half=True), 6)
1.0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional

from .errors import ConfigError

USABLE_SHARE = 0.9  # of a GPU's memory a training step may plan for: the CUDA context and fragmentation keep the rest
SCORING_SHARE = 0.5  # of the free GPU memory a score block may take (eval.memory auto): the model stays resident
@dataclass(frozen=True)
class Gpu:
    """One GPU model: its memory, and the throughput assumed for a run's arithmetic (assumptions)."""

    name: str
    memory_bytes: int
    half_tflops: float  # dense 16-bit tensor-core peak (bf16, or fp16 on a card without bf16), vendor datasheet
    fp32_tflops: float  # without TF32 (PyTorch's default for matmuls), vendor datasheet
    utilization: float = 0.15  # assumed share of that peak a step reaches in eager PyTorch (docs/cluster.md)
    bf16: bool = True  # has bf16: train.amp takes bf16 there, fp16 with a grad scaler without it (precision.py)

    @property
    def offers(self) -> str:
        """What autocast this card offers, as :func:`sbir_bench.precision.device_offers` says of a device."""
        return "bf16" if self.bf16 else "fp16"

    def seconds(self, flops: float, half: bool) -> float:
        """Seconds for ``flops`` at the assumed utilisation of this GPU's 16-bit (``half``) or fp32 peak."""
        return flops / ((self.half_tflops if half else self.fp32_tflops) * 1e12 * self.utilization)


def usable(available: int, share: float = USABLE_SHARE) -> int:
    """The one usable-memory rule: the bytes a process may plan for out of ``available`` (a card's memory,
    or what is free on it now), at ``share`` (training's by default, :data:`SCORING_SHARE` for score blocks).

    >>> usable(1000), usable(1000, SCORING_SHARE)
    (900, 500)
    """
    return int(available * share)


def usable_memory(gpu: str) -> int:
    """The bytes a run plans for on ``gpu``: its memory less what the CUDA context and fragmentation keep."""
    return usable(get_gpu(gpu).memory_bytes)


GPUS: Dict[str, Gpu] = {gpu.name: gpu for gpu in (
    Gpu("a100-40gb", 40 * 2**30, 312.0, 19.5),
    Gpu("a100-80gb", 80 * 2**30, 312.0, 19.5),
    Gpu("h100-80gb", 80 * 2**30, 989.0, 67.0),
    Gpu("l40s-48gb", 45 * 2**30, 362.0, 91.6),
    Gpu("rtx4090-24gb", 24 * 2**30, 165.2, 82.6),
    Gpu("v100-32gb", 32 * 2**30, 125.0, 15.7, bf16=False),  # ProS's card: no bf16, fp16 tensor cores
)}


DEFAULT_GPU = "a100-80gb"


def get_gpu(name: str) -> Gpu:
    """The GPU called ``name`` or a one-line error listing them."""
    if name not in GPUS:
        raise ConfigError(f"unknown --gpu {name!r}; choose one of: {', '.join(GPUS)}")
    return GPUS[name]


SIZE_UNITS = {"": 1, "B": 1, **{f"{p}{suffix}": base ** (i + 1) for i, p in enumerate("KMGT")
                              for suffix, base in (("", 1024), ("IB", 1024), ("B", 1000))}}


def parse_bytes(value: str | int | float) -> int:
    """A memory size in bytes: the one grammar of every memory option (``train.memory_budget``,
    ``eval.memory``, ``--gpu``'s budget). ``GiB``/``MiB``/``KiB``/``TiB`` and a bare ``G``/``M``/``K``/``T``
    are binary (2^30, as SLURM's ``--mem``), ``GB``/``MB``/``KB``/``TB`` decimal (10^9); case is ignored.

    >>> parse_bytes("2GiB") == parse_bytes("2g") == 2 * 2**30, parse_bytes("2GB"), parse_bytes(" 0.5 KiB ")
    (True, 2000000000, 512)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).upper() not in SIZE_UNITS:
            raise ConfigError(f"memory size {value!r}: use a number of bytes or e.g. 24GiB (binary), 40GB "
                              f"(decimal), 512MiB")
        number, unit = float(m.group(1)), m.group(2).upper()
    size = number * SIZE_UNITS[unit]
    if not size < 2**63:  # also inf and nan
        raise ConfigError(f"memory size {value!r} is too large (at most 2^63 bytes)")
    if size < 0:
        raise ConfigError(f"memory size {value!r} is negative")
    return int(size)


def parse_memory(value: str | int) -> Optional[int]:
    """A memory option that may say ``auto`` (``eval.memory``, ``--eval-memory``): None for ``auto`` (decided
    on the device), else :func:`parse_bytes`.

    >>> parse_memory(" Auto "), parse_memory("1KiB")
    (None, 1024)
    """
    return None if str(value).strip().lower() == "auto" else parse_bytes(value)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


