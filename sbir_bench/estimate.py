"""The resource estimate of a run: its memory and time on a named GPU, before any GPU hour is spent.

The figures come from the cost model of :mod:`sbir_bench.sizing` (the real method traced on the meta
device), the micro-batches a budget needs from the memory plan (:mod:`sbir_bench.training.memory`, the
same search a run makes), and the precision from the run's own rule asked of the named card
(:mod:`sbir_bench.precision`). A method trained in stages is estimated stage by stage and combined by the
rule the record uses (:func:`sbir_bench.methods.base.combine_stages`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional

from .config import RunConfig
from .data.balanced import stream_steps
from .data.tasks import epoch_triplets
from .gpus import DEFAULT_GPU, get_gpu, gib, usable_memory
from .methods.base import Stage, combine_stages, run_stages
from .precision import evaluation_policy, training_policy
from .sizing import Counts, method_cost, peak_bytes, static_bytes
from .training.memory import plan_stage


@dataclass
class Estimate:
    """Memory and time of one run (per process), as ``--dry-run`` prints and ``--json`` writes."""

    method: str
    dataset: str
    backbone: str
    batch_size: int
    micro_batch: int
    precision: str
    steps_per_epoch: int
    epochs: int
    trainable_parameters: int
    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # saved by autograd for the micro-batch (under bf16 autocast with train.amp, as a GPU runs it)
    workspace_bytes: int  # the largest single op output (transient)
    peak_memory_bytes: int
    flops_per_step: int  # forward + backward of one optimiser step (the whole batch)
    eval_flops: int
    gpu: str
    gpu_hours: float
    budget_bytes: Optional[int] = None
    counts_from: str = ""
    text_chunk: int = 0
    notes: List[str] = field(default_factory=list)
    stages: List[Dict[str, Any]] = field(default_factory=list)  # a method trained in stages: each one's figures

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line: memory (its parts), micro-batch, FLOPs and time."""
        train = "" if not self.trainable_parameters else (
            f"{self.steps_per_epoch} steps/epoch x {self.epochs}, {self.trainable_parameters:,} trainable, "
            f"{self.flops_per_step / 1e12:.2f} TFLOP/step, micro-batch {self.micro_batch} of {self.batch_size}, ")
        if self.stages:  # the figures of each stage before the combined peak and time
            train = "; ".join(f"{s['stage']}: {s['steps_per_epoch']} steps/epoch x {s['epochs']} at batch "
                              f"{s['batch_size']} (micro-batch {s['micro_batch']}), {s['trainable_parameters']:,} "
                              f"trainable, peak {gib(s['peak_memory_bytes'])}" for s in self.stages) + "; "
        return (f"{train}peak {gib(self.peak_memory_bytes)} ({self.precision}: weights {gib(self.weights_bytes)}, "
                f"gradients {gib(self.gradient_bytes)}, optimiser {gib(self.optimizer_bytes)}, activations "
                f"{gib(self.activation_bytes)}, workspace {gib(self.workspace_bytes)}), "
                f"{self.gpu_hours:.2f} GPU-h on {self.gpu}")


def estimate(cfg: RunConfig, counts: Counts, gpu: str = DEFAULT_GPU, budget: Optional[int] = None) -> Estimate:
    """The estimate of ``cfg`` on ``gpu`` (whose usable memory is the budget unless ``budget`` is given).

    A method trained in stages (ProS) is estimated stage by stage: the peak is the largest stage's,
    the time the sum of the stages' (every epoch of each: early stopping can only shorten it), and
    ``stages`` lists each; the top-level batch and step figures are the last stage's.
    """
    card = get_gpu(gpu)
    budget = budget if budget is not None else usable_memory(gpu)
    stages = run_stages(cfg)
    parts = [_stage_estimate(replace(cfg, train=s.train), counts, gpu, budget, s, cfg.train.batch_size) for s in stages]
    eval_flops = method_cost(cfg, counts, stages[-1].name).embed_flops_per_image * counts.test_images
    embedding = evaluation_policy(cfg.eval.amp, card.offers)  # the rule a run on this card follows
    combined = Estimate(**combine_stages([asdict(e) for e in parts]))
    combined.eval_flops = eval_flops
    combined.gpu_hours += card.seconds(eval_flops, embedding.dtype is not None) / 3600
    if any(s.train.early_stop for s in stages):
        combined.notes.append("every epoch counted: early stopping can only shorten the run")
    if len(parts) > 1:
        combined.stages = [{"stage": s.name, **{k: getattr(e, k) for k in STAGE_FIELDS}} for s, e in zip(stages, parts)]
    return combined


PRECISION_LABELS = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with a grad scaler", "fp32": "fp32"}
STAGE_FIELDS = ("batch_size", "micro_batch", "epochs", "steps_per_epoch", "trainable_parameters", "flops_per_step",
                "peak_memory_bytes", "gpu_hours")


def stage_steps(train, counts: Counts, run_batch: int) -> int:
    """Steps per epoch of a stage with settings ``train``, as its trainer counts them
    (:func:`~sbir_bench.training.trainer.steps_per_epoch`): an official sampler's stream, which the run's
    ``run_batch`` defines, or ``train.epoch_length``'s triplets."""
    if train.steps_per_epoch:
        return train.steps_per_epoch
    if train.sampler != "triplets":
        return stream_steps(train.sampler, run_batch, train.batch_size, counts.domain_sizes())
    return max(1, epoch_triplets(train.epoch_length, counts.train_sketches, counts.train_photos) // train.batch_size)


def _stage_estimate(cfg: RunConfig, counts: Counts, gpu: str, budget: int, stage: Stage, run_batch: int) -> Estimate:
    """One training stage's estimate (``cfg.train``: its settings; ``run_batch`` the run's, which an
    official sampler's stream follows), without the evaluation."""
    card = get_gpu(gpu)
    cost = method_cost(cfg, counts, stage.name)
    weights, grads, opt = static_bytes(cost, cfg.train)
    batch = cfg.train.batch_size
    precision = training_policy(cfg.train.amp, card.offers)  # bf16, fp16 with a scaler, or fp32: as a run there
    steps = stage_steps(cfg.train, counts, run_batch)
    trains = cost.trainable > 0
    micro = plan_stage(cfg, counts, stage, budget).micro_batch if trains else 0
    step_flops = cost.flops(batch) if trains else 0
    seconds = card.seconds(step_flops * steps * cfg.train.epochs if trains else 0, precision.dtype is not None)
    return Estimate(
        method=cfg.method, dataset=cfg.data.dataset, backbone=cfg.backbone.name, batch_size=batch, micro_batch=micro,
        precision=PRECISION_LABELS[precision.name], steps_per_epoch=steps if trains else 0,
        epochs=cfg.train.epochs if trains else 0, trainable_parameters=cost.trainable, weights_bytes=weights,
        gradient_bytes=grads if trains else 0, optimizer_bytes=opt if trains else 0,
        activation_bytes=cost.saved(micro) if trains else 0, workspace_bytes=cost.workspace(micro) if trains else 0,
        peak_memory_bytes=peak_bytes(cost, cfg.train, micro) if trains else weights,
        flops_per_step=step_flops, eval_flops=0, gpu=gpu, gpu_hours=seconds / 3600, budget_bytes=budget,
        counts_from=counts.source, text_chunk=cfg.train.text_chunk)
