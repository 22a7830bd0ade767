"""The memory plan: how each training stage's step fits the memory a process may use.

One room for what used to be spread over the runner, the estimate and the trainer: the budget (the
user's ``train.memory_budget``, else on CUDA the memory this process can hold, by the one usable-share
rule of :func:`sbir_bench.gpus.usable`), the search for the fewest micro-batches whose predicted peak
fits (only splits the method says keep its step: ``Method.split_invariant``), the agreement of DDP
ranks (the tightest GPU decides), and the loop over a run's stages. The trainer takes the micro-batches
a plan gives as its own argument; ``train.grad_accum`` stays what the user asked (the least split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import RunConfig, TrainConfig, from_dict
from ..errors import OutOfMemoryError
from ..gpus import gib, parse_bytes, usable
from ..log import get_logger
from ..methods import get_method
from ..methods.base import Stage
from ..ranks import world
from ..sizing import Counts, method_cost, peak_bytes
from . import distributed as dist_utils

log = get_logger(__name__)


@dataclass(frozen=True)
class MemoryPlan:
    """How one stage's steps run: micro-batches per step and their size, and, where a budget was planned
    for, the budget and the predicted peak (None without one: the split is the configured one)."""

    micro_batches: int
    micro_batch: int
    budget_bytes: Optional[int] = None
    predicted_peak_bytes: Optional[int] = None


def memory_record(plan: MemoryPlan, device: torch.device) -> Dict[str, Any]:
    """The record's memory section: the plan and, on CUDA, the measured peak beside the prediction."""
    out: Dict[str, Any] = {k: v for k, v in asdict(plan).items() if v is not None}
    if device.type == "cuda":
        out["measured_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def memory_budget(train: TrainConfig, device: torch.device) -> Optional[int]:
    """Bytes a training step may plan for in this process: ``train.memory_budget``; on CUDA by default
    the usable share of the memory this process could hold (free + already its own); on CPU none."""
    if train.memory_budget:
        return parse_bytes(train.memory_budget)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return usable(free + torch.cuda.memory_allocated(device))
    return None


def fewest_micro_batches(per_process: int, peak: Callable[[int], int], budget: int, at_least: int = 1,
                         keeps: Callable[[int], bool] = lambda micro: True,
                         knob: str = "train.grad_accum", text_chunk: int = 0) -> Tuple[int, int]:
    """(micro-batches, micro-batch size): the fewest micro-batches (dividing ``per_process``, at least
    ``at_least``, the configured split) whose predicted ``peak(size)`` fits ``budget``. A split beyond
    the configured one is taken only where ``keeps(size)`` (the method's step is the whole batch's,
    :meth:`~sbir_bench.methods.Method.split_invariant`): a budget never changes what is trained.
    Raises :class:`OutOfMemoryError` naming the need when not even one triplet fits, or ``knob`` when
    only a split that changes the step would.

    >>> fewest_micro_batches(8, peak=lambda size: size, budget=4, keeps=lambda size: size % 4 == 0)
    (2, 4)
    """
    fits = [k for k in range(max(1, at_least), per_process + 1)
            if per_process % k == 0 and peak(per_process // k) <= budget]
    if not fits:
        raise OutOfMemoryError(f"one triplet needs about {gib(peak(1))} of memory, more than the budget of "
                               f"{gib(budget)}; raise --memory-budget (train.memory_budget), use a GPU with more "
                               f"memory or a smaller backbone{text_chunk_advice(text_chunk)}")
    kept = [k for k in fits if k == at_least or keeps(per_process // k)]
    if kept:
        return kept[0], per_process // kept[0]
    k = fits[0]
    raise OutOfMemoryError(f"the memory budget of {gib(budget)} needs each batch of {per_process} triplets split into "
                           f"{k} micro-batches of {per_process // k}, which changes this method's training step "
                           f"(its split_invariant); set {knob}={k} to train that split as its own configuration "
                           f"(part of the model's identity), lower the batch size, or raise the budget")


def text_chunk_advice(text_chunk: Optional[int] = None) -> str:
    """The ``train.text_chunk`` advice as the knob stands: "set" while it is off, "lower" once it is set."""
    if text_chunk:
        return f", or lower train.text_chunk (now {text_chunk})"
    return ", or set train.text_chunk (methods with per-image class texts)"


def plan_micro_batches(cfg: RunConfig, counts: Counts, budget: int, world: int = 1,
                       stage: Optional[Stage] = None) -> Tuple[int, int]:
    """(micro-batches per step, micro-batch size) for ``cfg`` (``cfg.train``: the stage's settings) within
    ``budget`` bytes per process, splitting only where the method's step stays the whole batch's."""
    stage = stage or Stage("", cfg.train)
    method_cls = get_method(cfg.method)
    method_cfg = from_dict(method_cls.config_class, cfg.method_config, "method_config")
    cost = method_cost(cfg, counts, stage.name)
    return fewest_micro_batches(cfg.train.batch_size // world, lambda m: peak_bytes(cost, cfg.train, m), budget,
                                cfg.train.grad_accum, lambda m: method_cls.split_invariant(method_cfg, stage.name, m),
                                stage.accum_knob, cfg.train.text_chunk)


def predicted_peak(cfg: RunConfig, counts: Counts, micro: int, stage: str = "") -> int:
    """Predicted peak bytes of ``cfg``'s training step (in ``stage``) over micro-batches of ``micro`` triplets."""
    return peak_bytes(method_cost(cfg, counts, stage), cfg.train, micro)


def plan_stage(cfg: RunConfig, counts: Counts, stage: Stage, budget: Optional[int], ranks: int = 1) -> MemoryPlan:
    """One stage's plan within ``budget`` bytes per process (``cfg.train``: the stage's settings); without a
    budget, or for a method that does not train, the configured split."""
    train = stage.train
    if budget is None or not get_method(cfg.method).trainable:
        return MemoryPlan(train.grad_accum, train.batch_size // (ranks * train.grad_accum))
    staged = replace(cfg, train=train)
    micro_batches, micro = plan_micro_batches(staged, counts, budget, ranks, stage)
    return MemoryPlan(micro_batches, micro, budget, predicted_peak(staged, counts, micro, stage.name))


def memory_plans(cfg: RunConfig, counts: Counts, stages: Sequence[Stage], device: torch.device) -> Dict[str, MemoryPlan]:
    """Every stage's plan, by stage name. Every DDP rank takes the same plan, the one with the most
    micro-batches (the tightest GPU decides): ranks that split differently would wait on each other's
    gradient all-reduce forever; a stage that fits on no rank stops all of them together."""
    plans: Dict[str, MemoryPlan] = {}
    budget = memory_budget(cfg.train, device)
    for stage in stages:
        try:
            mine: Any = plan_stage(cfg, counts, stage, budget, world()[1])
        except OutOfMemoryError as exc:  # decided together, so that no rank waits for one that stopped
            mine = exc
        chosen = dist_utils.broadcast_from_main(_tightest(dist_utils.gather_to_main(mine)))
        if isinstance(chosen, OutOfMemoryError):
            raise chosen
        plans[stage.name] = chosen
        if chosen.budget_bytes is not None and chosen.micro_batches > stage.train.grad_accum:
            log.info(f"memory budget {gib(chosen.budget_bytes)}: each batch of {stage.train.batch_size}"
                     f"{f' ({stage.name})' if stage.name else ''} runs as {chosen.micro_batches} micro-batches of "
                     f"{chosen.micro_batch} (predicted peak {gib(chosen.predicted_peak_bytes)})")
    return plans


def _tightest(plans: Optional[List[Any]]) -> Any:
    """Of every rank's plan (rank 0 only; None elsewhere): an error if any rank has one, else the plan
    with the most micro-batches."""
    if plans is None:
        return None
    errors = [p for p in plans if isinstance(p, OutOfMemoryError)]
    if errors:
        return errors[0]
    return max(plans, key=lambda p: p.micro_batches)
