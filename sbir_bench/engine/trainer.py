"""The shared trainer: everything about optimisation, nothing about any particular method.

Only parameters with ``requires_grad`` are optimised (the CLIP backbone is frozen). Features:
AdamW or SGD with a cosine schedule and linear warm-up; AMP (bf16, or fp16 with a grad scaler) on
CUDA; gradient accumulation; a checkpoint after every epoch and bit-for-bit resume on CPU (data
order, augmentation and RNG states are restored); validation at chosen epochs; DDP under
``torchrun`` with the global batch split evenly across ranks so that N processes see exactly the
samples one process would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from ..config import TrainConfig
from ..data.triplets import TripletDataset, collate_triplets
from ..errors import ConfigError
from ..methods.base import Method
from ..progress import info, progress, warn
from . import distributed as dist_utils
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class EpochSampler(Sampler):
    """Seeded permutation per epoch; this rank's share of every global batch, drop-last."""

    def __init__(self, n: int, global_batch: int, steps: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if global_batch % world:
            raise ConfigError(f"batch size {global_batch} is not divisible by the {world} DDP processes")
        self.n, self.global_batch, self.steps, self.seed = n, global_batch, steps, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        need = self.steps * self.global_batch
        order = np.concatenate([rng.permutation(self.n) for _ in range(math.ceil(need / self.n))])[:need]
        per_rank = self.global_batch // self.world
        for s in range(self.steps):
            chunk = order[s * self.global_batch: (s + 1) * self.global_batch]
            yield from chunk[self.rank * per_rank: (self.rank + 1) * per_rank].tolist()

    def __len__(self) -> int:
        return self.steps * (self.global_batch // self.world)


@dataclass
class TrainResult:
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    skipped_images: int = 0
    resumed_from_epoch: int = 0


def cosine_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up then cosine decay to zero."""
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
    return f


class Trainer:
    """Fits a :class:`Method` on a :class:`TripletDataset`."""

    def __init__(self, method: Method, dataset: TripletDataset, cfg: TrainConfig, device: torch.device,
                 seed: int, checkpoint_dir: Optional[Path] = None, workers: int = 0, pin_memory: bool = False,
                 validate: Optional[Callable[[Method], Dict[str, float]]] = None,
                 on_epoch_end: Optional[Callable[[int], None]] = None) -> None:
        self.method, self.dataset, self.cfg, self.device, self.seed = method, dataset, cfg, device, seed
        self.checkpoint_dir = checkpoint_dir
        self.validate, self.on_epoch_end = validate, on_epoch_end
        self.distributed = dist_utils.init_distributed(device)
        self.rank, self.world = dist_utils.world()
        params = [p for p in method.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"method {method.name} has no trainable parameters")
        self.params = params
        if cfg.batch_size % (cfg.grad_accum * self.world):
            raise ConfigError("batch_size must be divisible by grad_accum x number of processes")
        self.steps = cfg.steps_per_epoch or max(1, len(dataset) // cfg.batch_size)
        self.sampler = EpochSampler(len(dataset), cfg.batch_size, self.steps, seed, self.rank, self.world)
        self.loader = DataLoader(dataset, batch_size=cfg.batch_size // (self.world * cfg.grad_accum),
                                 sampler=self.sampler, num_workers=workers, collate_fn=collate_triplets,
                                 pin_memory=pin_memory and device.type == "cuda", drop_last=False)
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose adamw or sgd")
        total = self.steps * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_lambda(total, int(cfg.warmup_epochs * self.steps)))
        self.use_amp = cfg.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None) \
            if self.distributed else method

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, epoch: int, history: List[Dict[str, float]]) -> Dict:
        return {"epoch": epoch, "method": self.method.name, "trainable": self.method.trainable_state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": history}

    def _resume(self) -> tuple[int, List[Dict[str, float]]]:
        if not (self.cfg.resume and self.checkpoint_dir):
            return 0, []
        ckpt = load_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            info(f"--resume: no checkpoint in {self.checkpoint_dir}, starting from scratch")
            return 0, []
        if ckpt.get("method") != self.method.name:
            raise ConfigError(f"checkpoint in {self.checkpoint_dir} is for method {ckpt.get('method')!r}, not {self.method.name!r}")
        self.method.load_trainable_state(ckpt["trainable"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        info(f"resumed from {self.checkpoint_dir} after epoch {ckpt['epoch']}")
        return int(ckpt["epoch"]), list(ckpt.get("history", []))

    # ------------------------------------------------------------------ loop
    def _step(self, micro_batches: List) -> Dict[str, float]:
        """One optimiser step over the micro-batches of one global batch."""
        self.optimizer.zero_grad(set_to_none=True)
        totals: Dict[str, float] = {}
        n = len(micro_batches)
        for k, batch in enumerate(micro_batches):
            batch = batch.to(self.device, non_blocking=True)
            sync = not self.distributed or k == n - 1
            ctx = self.model.no_sync() if (self.distributed and not sync) else _null()
            with ctx, torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                terms = self.model(batch)
            self.scaler.scale(terms["loss"] / n).backward()
            for key, val in terms.items():
                totals[key] = totals.get(key, 0.0) + float(val.detach()) / n
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return totals

    def fit(self) -> TrainResult:
        """Train for ``cfg.epochs`` (continuing from the last checkpoint with ``resume``)."""
        start_epoch, history = self._resume()
        result = TrainResult(history=history, resumed_from_epoch=start_epoch)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, self.cfg.epochs):
            self.method.train()
            self.dataset.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            sums: Dict[str, float] = {}
            micro: List = []
            bar = progress(self.loader, desc=f"{self.method.name} epoch {epoch + 1}/{self.cfg.epochs}",
                           total=len(self.loader), unit="batch")
            steps_done = 0
            for batch, skipped in bar:
                result.skipped_images += skipped
                if batch is not None:
                    micro.append(batch)
                if len(micro) + 0 < self.cfg.grad_accum and batch is not None:
                    continue
                if micro:
                    terms = self._step(micro)
                    steps_done += 1
                    for key, val in terms.items():
                        sums[key] = sums.get(key, 0.0) + val
                micro = []
            row = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0]}
            row.update({k: dist_utils.all_reduce_mean(v / max(1, steps_done), self.device) for k, v in sums.items()})
            self.method.eval()
            if self.validate and self.cfg.val_every and ((epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs):
                row.update({f"val_{k}": v for k, v in self.validate(self.method).items()})
            history.append(row)
            info("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            if self.checkpoint_dir and dist_utils.is_main():
                save_checkpoint(self.checkpoint_dir, self._payload(epoch + 1, history))
            dist_utils.barrier()
            if self.on_epoch_end:
                self.on_epoch_end(epoch + 1)
        if result.skipped_images:
            warn(f"{result.skipped_images} training triplet(s) skipped because of unreadable images")
        result.seconds = time.perf_counter() - t0
        self.method.eval()
        return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
