"""Process-group setup for ``torchrun`` (NCCL on CUDA, gloo on CPU) and small helpers."""

from __future__ import annotations

import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..ranks import is_rank_zero, world


def init_distributed(device: torch.device) -> bool:
    """Initialise the default process group when launched by torchrun; True if distributed."""
    rank, size = world()
    if size <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return True


def local_device(requested: str) -> torch.device:
    """``auto`` -> this rank's GPU (LOCAL_RANK) if CUDA is available, else CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def is_main() -> bool:
    """This process writes records and checkpoints (the one rank-0 rule: :mod:`sbir_bench.ranks`)."""
    return is_rank_zero()


def is_initialized() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); ``[obj]`` when not distributed."""
    if not is_initialized():
        return [obj]
    out: Optional[List[Any]] = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity when not distributed)."""
    if not is_initialized():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_ranks_true(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (identity when not distributed)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32,
                     device=torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _summed(value: float, dtype: torch.dtype, device: torch.device) -> float:
    """``value`` summed over ranks (itself when not distributed)."""
    if not is_initialized():
        return value
    t = torch.tensor([value], dtype=dtype, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_sum(value: int, device: torch.device) -> int:
    """Sum of a count over ranks (identity when not distributed)."""
    return int(_summed(value, torch.int64, device))


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python float over ranks (identity when not distributed)."""
    world_size = dist.get_world_size() if is_initialized() else 1
    return float(_summed(value, torch.float64, device) / world_size)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (every rank's loss depends on
    every rank's input through the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the whole batch, across DDP processes.

    A plain BatchNorm normalises each process's share of a batch by that share's own mean and
    variance, so the same run on 1 and on 8 GPUs trains two different models (and on small shares,
    with noisy statistics). Here the shares' sums are all-reduced (autograd-aware, so gradients flow
    as in one process); outside ``torchrun`` or in eval mode it is exactly ``BatchNorm1d``. Running
    statistics follow BatchNorm's update (momentum, unbiased variance), from the global batch.
    ``SyncBatchNorm`` does the same on GPUs only; this also runs under gloo on CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized()):
            return super().forward(x)
        d = x.shape[1]
        x64 = x.double()  # sums of squares in double: no cancellation in var = E[x^2] - E[x]^2
        count = torch.full((1,), float(x.shape[0]), dtype=torch.float64, device=x.device)
        total = _AllReduceSum.apply(torch.cat([x64.sum(0), (x64 * x64).sum(0), count]))
        n = total[-1]
        mean = total[:d] / n
        var = (total[d: 2 * d] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(x.dtype))
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1).clamp_min(1)).to(x.dtype))
        out = ((x64 - mean) / torch.sqrt(var + self.eps)).to(x.dtype)
        return out * self.weight + self.bias if self.affine else out
