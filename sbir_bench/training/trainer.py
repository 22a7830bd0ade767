"""The shared trainer: everything about optimisation, nothing about any particular method.

Only parameters with ``requires_grad`` are optimised (the CLIP backbone is frozen). Features:
AdamW or SGD with a per-step or per-epoch cosine schedule and a linear or constant warm-up; AMP
(bf16, or fp16 with a grad scaler) on CUDA; gradient accumulation; a stop at the first non-finite
loss term; a checkpoint after every epoch, and resume refused when the settings differ and
bit-for-bit on CPU otherwise (data order, augmentation and RNG states are restored); validation at
chosen epochs, with early stopping that keeps the best validated model; DDP under ``torchrun`` with
the global batch split evenly across ranks so that N processes see exactly the samples one process
would. A method trained in stages (ProS) gets one Trainer per stage (:func:`sbir_bench.runner.train`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from ..config import TrainConfig
from ..data.balanced import stream_batches
from ..data.images import loader_generator, resolve_workers
from ..data.tasks import epoch_triplets
from ..data.triplets import collate_triplets
from ..errors import ConfigError, DataError, DivergedError, OutOfMemoryError
from ..log import get_logger, progress
from ..methods.base import Method
from ..precision import training_precision
from ..ranks import world
from . import distributed as dist_utils
from .checkpoint import (
    check_resumable,
    claim_folder,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    warn_if_foreign,
)
from .memory import MemoryPlan, text_chunk_advice
from .samplers import EpochSampler, StreamSampler

log = get_logger(__name__)


def steps_per_epoch(cfg: TrainConfig, dataset) -> int:
    """Optimiser steps in one epoch: ``train.steps_per_epoch``, else one epoch of the official sampler's
    stream cut into batches (its last partial batch dropped), else ``train.epoch_length``'s triplets."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    stream = getattr(dataset, "stream", None)
    if stream is not None:
        return stream_batches(stream.size, cfg.batch_size)
    return max(1, epoch_triplets(cfg.epoch_length, len(dataset), getattr(dataset, "n_photos", None)) // cfg.batch_size)


@dataclass
class TrainResult:
    history: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    skipped_images: int = 0  # summed over every rank
    skipped_steps: int = 0  # optimiser steps no rank took (some rank had no readable triplet)
    resumed_from_epoch: int = 0
    best_epoch: int = 0  # with early stopping: the epoch whose model was kept
    stopped_early: bool = False


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step ``step`` (docs: TrainConfig.schedule).

    ``cosine-step``: warm-up over ``warmup_epochs`` then cosine decay to zero, updated every step.
    ``cosine-epoch``: the schedule of CoOp and MaPLe's reference code (Dassl's
    ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=epochs)``, stepped once per epoch):
    epoch ``e`` runs at ``0.5 (1 + cos(pi (e - w) / epochs))`` after ``w`` warm-up epochs. A
    ``constant`` warm-up runs at ``warmup_lr``, a ``linear`` one ramps up to the base rate.
    ``constant``: the base rate after the warm-up (CLIP-AT's code has no schedule).
    ``exponential-epoch``: ProS's ``adjust_learning_rate``, epoch ``e`` at ``lr * 0.001 ** (e / 20)``,
    never below ``1e-6``.

    >>> f = lr_lambda(TrainConfig(lr=1e-4, schedule="exponential-epoch"), steps_per_epoch=10)
    >>> [round(f(10 * epoch) * 1e-4, 9) for epoch in (0, 10, 40)]  # the rate at epochs 0, 10 and 40
    [0.0001, 3.162e-06, 1e-06]
    """
    total = steps_per_epoch * cfg.epochs
    warm_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    warm_epochs = int(math.ceil(cfg.warmup_epochs))

    def warm(step: int) -> float:
        return cfg.warmup_lr / cfg.lr if cfg.warmup == "constant" else (step + 1) / max(1, warm_steps)

    def per_step(step: int) -> float:
        if step < warm_steps:
            return warm(step)
        done = (step - warm_steps) / max(1, total - warm_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    def per_epoch(step: int) -> float:
        epoch = step // steps_per_epoch
        if epoch < warm_epochs:
            return warm(step)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warm_epochs) / cfg.epochs))

    def constant(step: int) -> float:
        return warm(step) if step < warm_steps else 1.0

    def exponential(step: int) -> float:
        if step < warm_steps:
            return warm(step)
        return max(EXPONENTIAL_DECAY ** ((step // steps_per_epoch) / EXPONENTIAL_EPOCHS), EXPONENTIAL_FLOOR / cfg.lr)

    return {"cosine-epoch": per_epoch, "constant": constant, "exponential-epoch": exponential}.get(cfg.schedule,
                                                                                                  per_step)


EXPONENTIAL_DECAY, EXPONENTIAL_EPOCHS, EXPONENTIAL_FLOOR = 1e-3, 20, 1e-6  # ProS's trainer.adjust_learning_rate
EARLY_STOP_METRICS = ("mAP@all", "Acc@1")  # what early stopping compares by default: category, else instance level


def selection_keys(cfg: TrainConfig) -> Tuple[str, ...]:
    """The validation values early stopping reads, in order of preference: ``train.select_metric`` (or the
    defaults of :data:`EARLY_STOP_METRICS`), prefixed ``<preset>:`` when ``train.select_protocol`` names a
    preset other than the run's (the validation then reports them beside the run's own metrics), and
    ``test:`` when ``train.select_on`` is ``test`` (the values are the test task's).

    >>> selection_keys(TrainConfig(select_metric="mAP@200", select_protocol="pros"))
    ('pros:mAP@200',)
    """
    metrics = EARLY_STOP_METRICS if cfg.select_metric == "auto" else (cfg.select_metric,)
    prefix = ("test:" if cfg.select_on == "test" else "") + ("" if cfg.select_protocol == "run" else
                                                             f"{cfg.select_protocol}:")
    return tuple(prefix + m for m in metrics)


@dataclass
class EarlyStopping:
    """Stops after ``patience`` validations in a row without a higher value, keeping the best model.

    The state travels in every checkpoint, so a resumed run stops, and keeps, exactly what an
    uninterrupted one would.
    """

    patience: int
    keys: Tuple[str, ...] = EARLY_STOP_METRICS  # the validation values compared (selection_keys)
    best: float = -math.inf
    best_epoch: int = 0
    waited: int = 0
    stopped: bool = False
    state: Optional[Dict[str, torch.Tensor]] = None  # the best epoch's trainable state

    def update(self, epoch: int, metrics: Dict[str, float], method: Method) -> None:
        """Account for the validation after ``epoch`` (1-based)."""
        value = next((metrics[k] for k in self.keys if k in (metrics or {})), None)
        if value is None:
            raise DataError(f"early stopping needs {' or '.join(self.keys)} from validation; it returned "
                            f"{sorted(metrics or {}) or 'nothing'}")
        if math.isfinite(value) and value > self.best:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            self.state = method.trainable_state()
        else:
            self.waited += 1
            self.stopped = self.waited >= self.patience

    def to_payload(self) -> Dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "waited": self.waited, "stopped": self.stopped,
                "state": self.state}

    def load(self, payload: Optional[Dict[str, Any]]) -> None:
        for key, value in (payload or {}).items():
            setattr(self, key, value)


def build_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimiser over :meth:`Method.param_groups` (a group's own ``lr`` overrides ``cfg.lr``)."""
    groups = [g for g in method.param_groups(cfg.lr) if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer:
    """Fits a :class:`Method` on a triplet dataset (images or cached features)."""

    def __init__(self, method: Method, dataset, cfg: TrainConfig, device: torch.device,
                 seed: int, checkpoint_dir: Optional[Path] = None, workers: Optional[int] = 0, pin_memory: bool = False,
                 validate: Optional[Callable[[Method], Dict[str, float]]] = None,
                 on_epoch_end: Optional[Callable[[int], None]] = None,
                 fingerprint: Optional[Dict[str, Any]] = None, trackers=None, memory: Optional[MemoryPlan] = None,
                 stage: str = "",
                 stage_index: int = 0, epochs_before: int = 0) -> None:
        self.method, self.dataset, self.cfg, self.device, self.seed = method, dataset, cfg, device, seed
        self.stage = stage  # a named stage of a method trained in stages ("" for one-stage methods)
        self.early = EarlyStopping(cfg.early_stop, selection_keys(cfg)) if cfg.early_stop else None
        self.checkpoint_dir, self.fingerprint = checkpoint_dir, fingerprint
        self.trackers, self.global_step = trackers, 0
        # how each step is split (Lightning's way: the trainer is handed it): the memory plan's micro-batches,
        # else the configured train.grad_accum; train.grad_accum itself stays what the user asked
        self.memory: Optional[MemoryPlan] = memory
        self.micro_batches = memory.micro_batches if memory else cfg.grad_accum
        if stage:  # a named stage of a method trained in stages: what it trains (Method.stage_parameters)
            method.begin_stage(stage)
        self.validate, self.on_epoch_end = validate, on_epoch_end
        self.distributed = dist_utils.init_distributed(device)
        self.rank, self.world = world()
        self.params = [p for p in method.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"method {method.name} has no trainable parameters")
        if cfg.batch_size % (self.micro_batches * self.world):
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the micro-batches ({self.micro_batches}) x "
                              f"the number of processes ({self.world})")
        if len(dataset) == 0:
            raise DataError("no training triplet: the split leaves no seen-class training sketch")
        self.steps = steps_per_epoch(cfg, dataset)
        self.sampler = self._sampler(seed, stage_index, epochs_before)
        self.loader = self._loader(workers, pin_memory)
        self.optimizer = build_optimizer(method, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.steps))
        self.precision = training_precision(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.needs_scaler)
        self.model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None) \
            if self.distributed else method

    def _sampler(self, seed: int, stage_index: int, epochs_before: int) -> Sampler:
        """The official sampler's stream (a :class:`DomainImages` dataset, ``train.sampler``), continuing
        after the ``epochs_before`` epochs of earlier stages as theirs does; else seeded triplet order."""
        stream = getattr(self.dataset, "stream", None)
        if stream is not None:
            return StreamSampler(stream, self.cfg.batch_size, self.steps, epochs_before, self.rank, self.world)
        order_seed = (seed, stage_index) if stage_index else seed  # each stage draws its own data order
        return EpochSampler(len(self.dataset), self.cfg.batch_size, self.steps, order_seed, self.rank, self.world)

    def _loader(self, workers: Optional[int], pin_memory: bool) -> DataLoader:
        per_step = self.cfg.batch_size // (self.world * self.micro_batches) * getattr(self.dataset, "items_per_pair", 1)
        n_workers = 0 if getattr(self.dataset, "in_memory", False) else resolve_workers(workers, len(self.dataset), per_step)
        return DataLoader(self.dataset, batch_size=per_step, sampler=self.sampler, num_workers=n_workers,
                          collate_fn=getattr(self.dataset, "collate", collate_triplets),
                          pin_memory=pin_memory and self.device.type == "cuda", drop_last=False,
                          persistent_workers=n_workers > 0, generator=loader_generator())

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, epoch: int, history: List[Dict[str, float]]) -> Dict:
        return {"epoch": epoch, "method": self.method.name, "trainable": self.method.trainable_state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": history,
                "trained_on": self.fingerprint, "early_stop": self.early.to_payload() if self.early else None}

    def _resume(self) -> tuple[int, List[Dict[str, float]]]:
        if not (self.cfg.resume and self.checkpoint_dir):
            return 0, []
        ckpt = load_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            log.info(f"--resume: no checkpoint in {self.checkpoint_dir}, starting from scratch")
            return 0, []
        check_resumable(ckpt, self.method.name, self.fingerprint, self.checkpoint_dir)
        self.method.load_trainable_state(ckpt["trainable"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if self.early:
            self.early.load(ckpt.get("early_stop"))
        log.info(f"resumed from {self.checkpoint_dir} after epoch {ckpt['epoch']}")
        return int(ckpt["epoch"]), list(ckpt.get("history", []))

    # ------------------------------------------------------------------ loop
    def _step(self, micro_batches: List, where: str) -> Dict[str, float]:
        """One optimiser step over the micro-batches of one global batch; the loss terms and the
        gradient norm (after unscaling, before the step: reading it changes nothing)."""
        self.optimizer.zero_grad(set_to_none=True)
        totals: Dict[str, float] = {}
        n = len(micro_batches)
        for k, batch in enumerate(micro_batches):
            batch = batch.to(self.device, non_blocking=True)
            sync = not self.distributed or k == n - 1
            ctx = self.model.no_sync() if (self.distributed and not sync) else contextlib.nullcontext()
            with self._out_of_memory(where, len(batch.label)):
                with ctx, self.precision.autocast(self.device.type):
                    terms = self.model(batch)
                check_finite(terms, where, self.distributed)
                self.scaler.scale(terms["loss"] / n).backward()
            for key, val in terms.items():
                totals[key] = totals.get(key, 0.0) + float(val.detach()) / n
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad.detach().norm() for p in self.params if p.grad is not None]
        totals["grad_norm"] = float(torch.stack(grads).norm()) if grads else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return totals

    @contextlib.contextmanager
    def _out_of_memory(self, where: str, micro: int):
        """Turn the GPU's out-of-memory error into one line: the predicted need, the budget, the knobs."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            plan = self.memory
            need = (f"predicted peak {plan.predicted_peak_bytes / 2**30:.2f} GiB within a budget of "
                    f"{plan.budget_bytes / 2**30:.2f} GiB" if plan and plan.budget_bytes is not None
                    else "no memory budget was planned")
            raise OutOfMemoryError(f"out of GPU memory at {where} (micro-batch of {micro} triplets; {need}): lower "
                                   f"train.memory_budget (--memory-budget) so that each batch is split further"
                                   f"{text_chunk_advice(self.cfg.text_chunk)}") from None

    def _report_step(self, terms: Dict[str, float], seconds: float, bar) -> None:
        """Step values to the trackers (rank 0) and the progress bar."""
        self.global_step += 1
        bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items() if k not in ("grad_norm", "margin")}, refresh=False)
        if not self.trackers or not self.trackers.active:
            return
        values = {f"train/{k}": v for k, v in terms.items()}
        values["train/lr"] = self.scheduler.get_last_lr()[0]
        values["train/images_per_s"] = self.cfg.batch_size / max(seconds, 1e-9)
        if self.device.type == "cuda":
            values["train/peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.memory and self.memory.predicted_peak_bytes is not None:
            values["train/predicted_peak_memory_gib"] = self.memory.predicted_peak_bytes / 2**30
        self.trackers.log(values, self.global_step)

    def _epoch(self, epoch: int, result: TrainResult) -> Dict[str, float]:
        """One pass over the epoch's batches; the mean of each loss term."""
        sums: Dict[str, float] = {}
        micro: List = []
        steps_done = 0
        name = f"{self.method.name} {self.stage}" if self.stage else self.method.name
        bar = progress(self.loader, desc=f"{name} epoch {epoch + 1}/{self.cfg.epochs}",
                       total=len(self.loader), unit="batch")
        t0 = time.perf_counter()
        last = len(self.loader)
        for i, (batch, skipped) in enumerate(bar):
            result.skipped_images += skipped
            if batch is not None:
                micro.append(batch)
            if (i + 1) % self.micro_batches and i + 1 < last:
                continue  # step boundaries are fixed by loader position, the same on every rank
            # Every rank steps or none does: a rank whose micro-batches were all unreadable would
            # otherwise skip the gradient all-reduce the others wait in (a hang under NCCL).
            if dist_utils.all_ranks_true(bool(micro)):
                terms = self._step(micro, f"epoch {epoch + 1}, step {steps_done + 1}")
                steps_done += 1
                self._report_step(terms, time.perf_counter() - t0, bar)
                t0 = time.perf_counter()
                for key, val in terms.items():
                    sums[key] = sums.get(key, 0.0) + val
            else:
                result.skipped_steps += 1
            micro = []
        return {k: dist_utils.all_reduce_mean(v / max(1, steps_done), self.device) for k, v in sums.items()}

    def _validates(self, epoch: int) -> bool:
        every = self.cfg.val_every
        return bool(self.validate and every and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs))

    def fit(self) -> TrainResult:
        """Train for ``cfg.epochs`` (continuing from the last checkpoint with ``resume``); the checkpoint
        folder is held exclusively meanwhile (:func:`~.checkpoint.claim_folder`, rank 0)."""
        if not (self.checkpoint_dir and dist_utils.is_main()):
            return self._fit()
        with claim_folder(self.checkpoint_dir):
            if not self.cfg.resume:
                warn_if_foreign(self.checkpoint_dir, self.method.name, self.fingerprint)
            return self._fit()

    def _fit(self) -> TrainResult:
        start_epoch, history = self._resume()
        self.global_step = start_epoch * self.steps  # tracker steps continue where the checkpoint left off
        result = TrainResult(history=history, resumed_from_epoch=start_epoch)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, self.cfg.epochs):
            if self.early and self.early.stopped:
                break
            self.method.train()
            self.sampler.set_epoch(epoch)
            row = {"epoch": epoch + 1, "lr": self.scheduler.get_last_lr()[0], **self._epoch(epoch, result)}
            self.method.eval()
            if self._validates(epoch):
                metrics = dist_utils.broadcast_from_main(self.validate(self.method))
                row.update({f"val_{k}": v for k, v in (metrics or {}).items()})
                if self.trackers:
                    self.trackers.log({f"val/{k}": v for k, v in (metrics or {}).items()}, self.global_step)
                if self.early:  # every rank holds the same metrics: all stop together
                    self.early.update(epoch + 1, metrics, self.method)
            if self.stage:
                row["stage"] = self.stage
            history.append(row)
            if self.checkpoint_dir and dist_utils.is_main():
                save_checkpoint(self.checkpoint_dir, self._payload(epoch + 1, history))
            # said once it is saved: an epoch whose line was printed survives a Ctrl-C that follows the line
            log.info("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            dist_utils.barrier()
            if self.on_epoch_end:
                self.on_epoch_end(epoch + 1)
        result.skipped_images = dist_utils.all_reduce_sum(result.skipped_images, self.device)  # every rank's
        if result.skipped_images and dist_utils.is_main():
            steps = (f"; {result.skipped_steps} step(s) skipped on every process, where one process had no readable "
                     f"triplet" if result.skipped_steps else "")
            log.warning(f"{result.skipped_images} training triplet(s) skipped because of unreadable images{steps}")
        result.seconds = time.perf_counter() - t0
        if self.early and self.early.state is not None:
            self.method.load_trainable_state(self.early.state)  # the best validated epoch's model
            result.best_epoch, result.stopped_early = self.early.best_epoch, self.early.stopped
            log.info(f"kept the model of epoch {self.early.best_epoch} (validation {self.early.best:.4g})"
                     + (f"; stopped after {self.early.patience} validation(s) without a gain" if self.early.stopped
                        else ""))
        self.method.eval()
        return result


def check_finite(terms: Dict[str, torch.Tensor], where: str, distributed: bool = False) -> None:
    """Stop at the first non-finite loss term, naming it (nothing is recorded for a diverged run).

    Under DDP every rank learns whether any rank diverged, so all stop together instead of waiting
    for a gradient all-reduce that never comes.
    """
    bad = next(((k, float(v.detach())) for k, v in terms.items() if not math.isfinite(float(v.detach()))), None)
    if distributed and not dist_utils.all_ranks_true(bad is None):
        bad = bad or ("loss (on another process)", float("nan"))
    if bad is not None:
        raise DivergedError(f"training diverged at {where}: loss term {bad[0]!r} is {bad[1]}; nothing was "
                            f"recorded (lower --lr, or check the inputs)")


