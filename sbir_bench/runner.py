"""One run end to end, as named steps: prepare data -> build the method -> train -> score -> record.

This is the only place that wires the pieces together; it knows nothing method-specific. Every
check that can fail on the user's input (outputs writable, dataset present, split valid, tasks
evaluable) runs in :func:`prepare_data`, before any model weight is loaded.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import open_clip
import torch

from .artifacts import build_method, check_no_leakage, load_backbone_for, save_artifact
from .config import (
    RunConfig,
    config_id,
    keys_with_role,
    to_dict,
    without_keys,
)
from .data.catalog import get_spec
from .data.discovery import (
    DatasetIndex,
    index_dataset,
    locate,
    photos_listed_twice,
    resolve_root,
)
from .data.domains import check_domain_config, protocol_record
from .data.splits import load_split
from .data.tasks import (
    RetrievalTask,
    SplitPartition,
    build_task,
    build_val_task,
    partition,
    training_partition,
)
from .data.balanced import IMAGES_PER_PAIR, DomainImages
from .data.triplets import FeatureTriplets, TripletDataset
from .embedding import EmbeddedTask, embed_samples, embed_task
from .errors import ConfigError, DataError
from .estimate import Estimate, estimate
from .feature_cache import FeatureCache
from .feature_cache import open_for as open_feature_cache
from .fileio import atomic_write_json, check_output_dir, file_sha256
from .gpus import parse_bytes
from .log import get_logger
from .methods import Method, Stage, get_method
from .methods.base import combine_stages, image_pipeline, resolved_method_config, run_stages
from .models import Backbone, load_backbone
from .models.backbone_configs import vit_image_tower
from .models.factory import check_weights_source
from .models.preprocess import preprocess_config
from .precision import Precision, evaluation_precision
from .ranks import world
from .records import SCHEMA, provenance, run_name, data_split
from .retrieval import PRESETS, Protocol, RetrievalResult, evaluate_many
from .retrieval.npz_files import save_embeddings, save_per_query
from .retrieval.protocol import metric_names
from .sizing import Counts, catalog_counts, counts_from_data
from .tracking import NoTrackers, Trackers, check_available, parse_report_to
from .training import distributed as dist_utils
from .training.checkpoint import LAST
from .training.memory import MemoryPlan, memory_plans, memory_record
from .training.samplers import check_stage_fits
from .training.trainer import Trainer, selection_keys, steps_per_epoch

log = get_logger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms where torch offers them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class RunData:
    """The dataset side of a run: index, seen/unseen partition and the test and validation tasks."""

    index: DatasetIndex
    part: SplitPartition
    task: RetrievalTask
    val_task: RetrievalTask

    @property
    def fine(self) -> bool:
        return self.index.spec.fine_grained


@dataclass
class RunParts:
    """Everything a run needs before training (dict-style access is kept for existing callers)."""

    data: RunData
    backbone: Backbone
    method: Method
    train_tf: Callable
    eval_tf: Callable
    cache: Optional[FeatureCache] = None
    sketch_train_tf: Optional[Callable] = None  # the sketches' own transforms (Method.sketch_transforms)
    sketch_eval_tf: Optional[Callable] = None

    @property
    def index(self) -> DatasetIndex:
        return self.data.index

    @property
    def part(self) -> SplitPartition:
        return self.data.part

    @property
    def fine(self) -> bool:
        return self.data.fine


def prepare_data(cfg: RunConfig) -> RunData:
    """:func:`load_data`, after checking the output folder can be written (before any work starts)."""
    check_output_dir(cfg.output_dir)
    return load_data(cfg)


def load_data(cfg: RunConfig) -> RunData:
    """Index the dataset, apply the split, partition the seen classes and build the tasks; refuse
    degenerate inputs (no query, nothing to retrieve) with one line, before any model is loaded."""
    check_domain_config(cfg.data)
    index = index_dataset(cfg.data.dataset, cfg.data.data_root)
    unseen = load_split(index.spec, index.class_names, cfg.data.split, cfg.data.split_file)
    part = partition(index, unseen, training_partition(cfg.data, cfg.seed))
    fine = index.spec.fine_grained
    again = photos_listed_twice(index, cfg.data.data_root) if cfg.data.gallery == "published" else None
    task = build_task(cfg.data.setting, part, fine, cfg.data.gzs_protocol, cfg.data.gzs_seen_photo_fraction, cfg.seed,
                      again, index.spec, cfg.data.ucdr_gallery, cfg.data.udcdr_gallery, cfg.data.query_domain)
    task.check(f"{cfg.data.dataset} split {data_split(cfg.data)}")
    return RunData(index, part, task, build_val_task(cfg.data.setting, part, fine))


def method_and_config(cfg: RunConfig) -> tuple:
    """The method class and its validated config, and the backbone's weight source, all checked
    before any data or weights are touched."""
    method_cls = get_method(cfg.method)
    method_cfg = resolved_method_config(cfg, method_cls)
    check_weights_source(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir)
    if method_cls.prompts_image_encoder and not vit_image_tower(cfg.backbone.name):
        raise ConfigError(f"{cfg.method} puts prompts into the image encoder, which needs a ViT backbone; "
                          f"{cfg.backbone.name}'s image tower is not one (zeroshot-clip, linear-probe and coop work on it)")
    method_cls.check_config(method_cfg, open_clip.get_tokenizer(cfg.backbone.name))
    check_method_data(cfg, method_cls, method_cfg)
    check_available(parse_report_to(cfg.report_to), cfg.tracking_uri)
    return method_cls, method_cfg


def check_method_data(cfg: RunConfig, method_cls: type, method_cfg) -> None:
    """The method runs on the run's dataset: one line before anything loads, for a run and for its dry-run
    estimate alike. ``method_cfg`` is what ``resolved_method_config`` gave, which checked the data section
    against its dataset (a multi-domain benchmark's settings and options) on the way."""
    method_cls.check_dataset(method_cfg, get_spec(cfg.data.dataset))
    if cfg.train.sampler != "triplets" and not method_cls.reads_image_batches:
        raise ConfigError(f"train.sampler={cfg.train.sampler} draws single images for the methods whose loss reads "
                          f"them one by one (pros, depro, ucdr-adapter); {cfg.method} trains on triplets: drop "
                          f"train.sampler")


def build(cfg: RunConfig, device: torch.device, data: Optional[RunData] = None) -> RunParts:
    """Everything a run needs before training: data, backbone, method and image transforms."""
    method_cls, method_cfg = method_and_config(cfg)
    data = data or prepare_data(cfg)
    backbone = load_backbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir, device)
    method = method_cls(backbone, data.index.class_names, data.part.seen, method_cfg).to(device)
    method.set_text_chunk(cfg.train.text_chunk)
    if cfg.data.image_size and cfg.data.image_size != backbone.image_size and \
            getattr(backbone.model.visual, "positional_embedding", None) is not None:
        raise ConfigError(f"data.image_size={cfg.data.image_size}, but {cfg.backbone.name} is a ViT with a fixed "
                          f"{backbone.image_size}-pixel input; drop data.image_size")
    return assemble(cfg, data, backbone, method, device)


def assemble(cfg: RunConfig, data: "RunData", backbone, method, device: torch.device) -> "RunParts":
    """A run's parts around a built method (trained here or loaded from an artifact): the image
    transforms its weights' preprocessing gives, and the frozen-feature cache of its eval precision."""
    pp = preprocess_config(backbone.preprocess_cfg, cfg.data.image_size)
    cache = open_feature_cache(backbone, asdict(pp), device.type, evaluation_precision(cfg.eval.amp, device)) \
        if cfg.eval.feature_cache else None
    images = image_pipeline(method, backbone.preprocess_cfg, cfg.data.dataset, cfg.data.image_size,
                            cfg.data.crop_scale_min)
    return RunParts(data, backbone, method, images.train, images.eval, cache, images.sketch_train, images.sketch_eval)


@dataclass
class Scorer:
    """Embeds a task with the method and scores it under the run's protocol (and every preset)."""

    cfg: RunConfig
    parts: RunParts
    device: torch.device
    protocol: Protocol
    skipped: Dict[str, int] = field(default_factory=dict)

    @property
    def precision(self) -> Precision:
        """How images are embedded (``eval.amp``; precision.py)."""
        return evaluation_precision(self.cfg.eval.amp, self.device)

    def embed(self, task: RetrievalTask) -> EmbeddedTask:
        names = self.parts.index.class_names
        self.parts.method.prepare_eval([names[c] for c in sorted({s.label for s in task.gallery})])
        emb = embed_task(task, self.parts.method, self.parts.eval_tf, self.device, self.cfg.eval.batch_size,
                         self.cfg.data.workers, precision=self.precision, cache=self.parts.cache,
                         sketch_transform=self.parts.sketch_eval_tf)
        if emb is not None:
            self.skipped[task.name] = emb.skipped
        return emb

    def score(self, task: RetrievalTask, desc: str, all_presets: bool = False, also: Sequence[Protocol] = ()) -> tuple:
        """(embeddings, [result under the run's protocol, then one per preset if ``all_presets``, else one
        per protocol of ``also``]); (None, None) on DDP ranks other than 0, which only embed their shard."""
        emb = self.embed(task)
        if emb is None:
            return None, None
        protocols = [self.protocol] + (list(PRESETS.values()) if all_presets else list(also))
        return emb, evaluate_many(*emb.arrays(), protocols=protocols, memory=self.cfg.eval.memory,
                                  device=self.device, desc=desc, query_seen=emb.query_seen)

    def validation_metrics(self, task: RetrievalTask) -> Optional[Dict[str, float]]:
        """Validation under the run's protocol, and under ``train.select_protocol`` where that names another
        preset (those values keyed ``<preset>:<metric>``, as early stopping reads them)."""
        chosen = self.cfg.train.select_protocol
        results = self.score(task, "validation", also=[PRESETS[chosen]] if chosen != "run" else [])[1]
        if results is None:
            return None
        return {**results[0].metrics, **{f"{chosen}:{k}": v for r in results[1:] for k, v in r.metrics.items()}}

    def frozen_features(self, samples) -> Dict[str, np.ndarray]:
        """path -> frozen image feature (eval transform, no augmentation), through the cache if enabled."""
        method, parts = self.parts.method, self.parts

        def compute(todo):
            return embed_samples(todo, method.frozen_image_features, parts.eval_tf, self.device,
                                 self.cfg.eval.batch_size, self.cfg.data.workers, "training features", self.precision)
        feats, pos, _ = parts.cache.features(samples, compute) if parts.cache else compute(samples)
        return {samples[i].path: f for i, f in zip(pos, feats)}



def config_run_name(cfg: RunConfig) -> str:
    """The run's name: method (and variant), dataset, setting, split and seed."""
    return run_name(cfg.method + (f"-{cfg.variant}" if cfg.variant else ""), cfg.data.dataset, cfg.data.setting,
                    data_split(cfg.data), cfg.seed)


def checkpoint_dir(cfg: RunConfig) -> Path:
    """Where the run's checkpoints go: ``train.checkpoint_dir``, else ``<output_dir>/checkpoints/<run name>``."""
    return Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else \
        Path(cfg.output_dir) / "checkpoints" / config_run_name(cfg)


def stage_checkpoint_dir(cfg: RunConfig, stage: str) -> Path:
    """Where training stage ``stage`` checkpoints: the run's folder, or its ``<stage>`` subfolder for a
    named stage of a method trained in stages."""
    root = checkpoint_dir(cfg)
    return root / stage if stage else root


def has_checkpoint(cfg: RunConfig) -> bool:
    """Whether any training stage of ``cfg`` left a checkpoint (the run can resume)."""
    return any((stage_checkpoint_dir(cfg, s.name) / LAST).is_file() for s in run_stages(cfg))


def finished_record(cfg: RunConfig) -> Optional[Path]:
    """A record of this run (same run name and config, up to where files go) in the output folder, or None."""
    wanted = config_id(to_dict(cfg))
    for path in sorted(Path(cfg.output_dir).glob(f"{config_run_name(cfg)}_*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and config_id(record.get("config") or {}) == wanted:
            return path
    return None


def train(cfg: RunConfig, parts: RunParts, scorer: Scorer, stages: Sequence[Stage], plans: Dict[str, MemoryPlan],
          on_epoch_end=None, trackers: Optional[Trackers] = None) -> Dict[str, Any]:
    """Fit the method on seen-class triplets (if it trains), stage after stage (the run's ``stages``, each
    split as its memory plan says); the ``train`` section of the record (a method trained in stages also
    lists each under ``stages``, and the whole is their :func:`~sbir_bench.methods.base.combine_stages`)."""
    method = parts.method
    if not method.trainable:
        return {"epochs": 0}
    dataset = training_triplets(cfg, parts, scorer)
    validate = selection_validator(cfg, parts, scorer)
    fingerprint = training_fingerprint(cfg, stages)
    infos, history = [], []
    for index, stage in enumerate(stages):
        info = train_stage(cfg, parts, scorer, stage, index, dataset, validate, on_epoch_end, trackers,
                           plans[stage.name], fingerprint, sum(s.train.epochs for s in stages[:index]))
        history += info.pop("history")
        infos.append(info)
    out = {k: v for k, v in combine_stages(infos).items() if k != "stage"}
    out.update(epochs=cfg.train.epochs, history=history, checkpoint_dir=str(checkpoint_dir(cfg)))
    if len(stages) > 1:
        out["stages"] = infos
    return out


def selection_validator(cfg: RunConfig, parts: RunParts, scorer: Scorer) -> Optional[Callable]:
    """What the trainer validates after an epoch: the seen-class validation split, or with
    ``train.select_on: test`` the test task itself (its values keyed ``test:<metric>``: a model chosen on
    the numbers it reports, which the record and the tables say); None where there is nothing to validate."""
    if cfg.train.select_on == "test":
        def on_test(method) -> Optional[Dict[str, float]]:
            metrics = scorer.validation_metrics(parts.data.task)
            return None if metrics is None else {f"test:{k}": v for k, v in metrics.items()}
        return on_test
    if parts.data.val_task.evaluable:
        return lambda m: scorer.validation_metrics(parts.data.val_task)
    if cfg.train.val_every:
        log.info("no seen-class validation: the split leaves no validation photos (raise data.val_fraction)")
    return None


def model_selection(cfg: RunConfig, stages: Sequence[Stage]) -> Dict[str, Any]:
    """The record's statement of which epoch's model it holds and what chose it."""
    last = stages[-1].train
    if not last.early_stop:
        return {"kept": "last epoch"}
    return {"kept": "best validated epoch", "on": last.select_on, "keys": list(selection_keys(last)),
            "every": last.val_every, "patience": last.early_stop}


def training_triplets(cfg: RunConfig, parts: RunParts, scorer: Scorer):
    """The seen-class training triplets: images, or cached frozen features for methods that train on them."""
    part = parts.part
    # category settings train on category triplets
    instance_triplets = parts.fine and training_partition(cfg.data, cfg.seed).instance_triplets
    if cfg.train.sampler != "triplets":  # an official sampler's images (data/balanced.py)
        return DomainImages(part.train_sketches, part.train_photos, part.seen, parts.train_tf, cfg.train.sampler,
                            cfg.train.batch_size, cfg.seed, parts.sketch_train_tf)
    if parts.method.trains_on_frozen_features():
        features = scorer.frozen_features(list(part.train_sketches) + list(part.train_photos))
        return FeatureTriplets(part.train_sketches, part.train_photos, part.seen, features, cfg.seed,
                               instance_triplets)
    return TripletDataset(part.train_sketches, part.train_photos, part.seen, parts.train_tf, cfg.seed,
                          instance_triplets, parts.sketch_train_tf)


def train_stage(cfg: RunConfig, parts: RunParts, scorer: Scorer, stage: Stage, index: int, dataset, validate,
                on_epoch_end, trackers, plan: MemoryPlan, fingerprint: Dict[str, Any],
                epochs_before: int = 0) -> Dict[str, Any]:
    """One stage of training with its own optimiser, schedule and checkpoints (``<checkpoints>/<stage>``
    for a named stage): a resumed run finds each finished stage complete and continues the open one. An
    official sampler's stream continues after the ``epochs_before`` epochs of the earlier stages."""
    train_cfg = stage.train
    trainer = Trainer(parts.method, dataset, train_cfg, scorer.device, cfg.seed,
                      stage_checkpoint_dir(cfg, stage.name), cfg.data.workers, cfg.data.pin_memory,
                      validate, on_epoch_end, fingerprint=fingerprint, trackers=trackers, memory=plan,
                      stage=stage.name, stage_index=index, epochs_before=epochs_before)
    result = trainer.fit()
    info = {**({"stage": stage.name} if stage.name else {}), "epochs": train_cfg.epochs,
            "batch_size": train_cfg.batch_size, "sampler": train_cfg.sampler, **stream_record(dataset, train_cfg),
            "steps_per_epoch": trainer.steps, "history": result.history,
            "steps_done": trainer.global_step,
            "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch,
            "skipped_images": result.skipped_images, "skipped_steps": result.skipped_steps,
            "world_size": trainer.world, "grad_accum": train_cfg.grad_accum,
            "micro_batches": trainer.micro_batches,
            "micro_batch": train_cfg.batch_size // (trainer.world * trainer.micro_batches),
            "memory": memory_record(plan, scorer.device)}
    if train_cfg.early_stop:
        info.update(best_epoch=result.best_epoch, stopped_early=result.stopped_early)
    del trainer  # its DDP wrapper lets go of the parameters before the next stage wraps them again
    return info


def stream_record(dataset, train_cfg) -> Dict[str, Any]:
    """What an official sampler's run states of its stream (nothing for triplets): the images per batch, the
    images of each training domain in its dictionary's order, and one epoch's length (data/balanced.py)."""
    stream = getattr(dataset, "stream", None)
    if stream is None:
        return {}
    return {"images_per_batch": IMAGES_PER_PAIR * train_cfg.batch_size,
            "domain_images": stream.sizes,
            "stream_epoch_images": stream.size}


def check_sampler(cfg: RunConfig, data: RunData, stages: Sequence[Stage]) -> None:
    """An official sampler's stream over the run's training images, built before any weight is loaded: a
    domain smaller than one block, DPK's single-image classes, or a stage asking for more than one epoch
    of it is one line here, not after the model is built."""
    if cfg.train.sampler == "triplets":
        return
    part = data.part
    images = DomainImages(part.train_sketches, part.train_photos, part.seen, None, cfg.train.sampler,
                          cfg.train.batch_size, cfg.seed)
    for stage in stages:
        check_stage_fits(images.stream, stage.train.batch_size, steps_per_epoch(stage.train, images))


def check_early_stopping(cfg: RunConfig, data: RunData, stages: Sequence[Stage]) -> None:
    """Early stopping compares seen-class validations: refuse it, in one line before anything loads,
    when the run has none (it would silently train every epoch), or when the metric it is to compare
    is not one the selection protocol reports."""
    if not any(s.train.early_stop for s in stages):
        if cfg.train.select_on == "test":  # a record must not claim a selection that never happened
            raise ConfigError("train.select_on=test chooses the kept epoch through early stopping: set "
                              "train.early_stop >= 1 (and train.val_every >= 1), or drop train.select_on")
        return
    on_test = cfg.train.select_on == "test"
    if not (cfg.train.val_every and (on_test or data.val_task.evaluable)):
        if data.index.spec.domain_split is not None:
            raise ConfigError(f"train.early_stop needs a seen-class validation: on {data.index.spec.title} under "
                              f"data.seen_split={cfg.data.seen_split} none is left; use data.seen_split=train (its "
                              f"validation classes, as SnMpNet), train.select_on=test (the official ProS/DePro "
                              f"selection, labelled so), or train.early_stop: 0")
        raise ConfigError("train.early_stop needs a seen-class validation: set train.val_every >= 1 and a "
                          "data.val_fraction that leaves validation photos, or train.early_stop: 0")
    chosen = cfg.train.select_protocol
    protocol = Protocol.from_eval_config(cfg.eval) if chosen == "run" else PRESETS[chosen]
    reported = metric_names(protocol, (data.task if on_test else data.val_task).level)
    if cfg.train.select_metric != "auto" and cfg.train.select_metric not in reported:
        raise ConfigError(f"train.select_metric={cfg.train.select_metric!r} is not a "
                          f"{(data.task if on_test else data.val_task).level}-level "
                          f"metric of the {chosen} protocol; choose one of: auto, {', '.join(reported)}")


def run_counts(cfg: RunConfig) -> Counts:
    """The sizes an estimate of ``cfg`` follows: the copy on disk when there is one, else the catalog's."""
    spec = get_spec(cfg.data.dataset)
    try:
        locate(spec, resolve_root(spec, cfg.data.data_root))
    except DataError:
        return catalog_counts(cfg.data)
    return counts_from_data(load_data(cfg))


def estimate_run(cfg: RunConfig, gpu: str) -> Estimate:
    """Memory and time of ``cfg`` on ``gpu`` (estimate.py), without weights or any data computation."""
    budget = parse_bytes(cfg.train.memory_budget) if cfg.train.memory_budget else None
    method_cls = get_method(cfg.method)
    check_method_data(cfg, method_cls, resolved_method_config(cfg, method_cls))
    return estimate(cfg, run_counts(cfg), gpu, budget)


# what may change when a training resumes: declared on the config fields (config.ROLES)
RESUMABLE_KEYS = keys_with_role("incidental", "evaluation")


def training_fingerprint(cfg: RunConfig, stages: Optional[Sequence[Stage]] = None) -> Dict[str, Any]:
    """What a checkpoint was trained on: the resolved config minus what may change on resume. With early
    stopping the validation schedule decides which epoch's model is kept: it is part of the training then."""
    tree = without_keys(to_dict(cfg), RESUMABLE_KEYS)
    if any(s.train.early_stop for s in (stages if stages is not None else run_stages(cfg))):
        tree.setdefault("train", {})["val_every"] = cfg.train.val_every
    return tree


def training_identity(cfg: RunConfig) -> str:
    """What a trained model depends on, as a short hash: the training fingerprint with the data
    section's test-only choices replaced by :func:`~sbir_bench.data.tasks.training_partition`, the one
    statement of what the training partition depends on. ZS and GZS (under the literature's
    composition) train on the same partition, so a GZS cell can evaluate the ZS cell's model instead of
    training it; a ``heldout`` partition is another model in every setting."""
    tree = training_fingerprint(cfg)
    data = tree["data"]
    for key in ("setting", "gzs_protocol", "gzs_seen_photo_fraction", "val_fraction", "max_per_class", "ucdr_gallery",
                "udcdr_gallery", "query_domain"):
        data.pop(key, None)
    data["partition"] = training_partition(cfg.data, cfg.seed).identity()
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def final_validation(train_info: Dict[str, Any], val_task: RetrievalTask, scorer: Scorer) -> Dict[str, float]:
    """Seen-class validation metrics of the final model: from the validation of the epoch whose model
    was kept (the last, or the best with early stopping) if the trainer ran one, else computed now (so
    zero-shot runs report them too)."""
    history = [h for h in train_info.get("history") or [] if not any(k.startswith("val_test:") for k in h)]
    if train_info.get("best_epoch") and history:  # early stopping kept that epoch's model (of the last stage)
        stage = (train_info.get("stages") or [{}])[-1].get("stage")
        history = [h for h in history if h.get("stage") == stage and h["epoch"] == train_info["best_epoch"]]
    if history and any(k.startswith("val_") for k in history[-1]):
        return {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
    return scorer.validation_metrics(val_task) if val_task.evaluable else {}


def run(cfg: RunConfig, on_epoch_end=None) -> Dict[str, Any]:
    """Execute one run and return its record (also written under ``cfg.output_dir``). What it logs
    is the caller's to show or hide (the CLI: ``--quiet``); the library sets no level."""
    done = finished_record(cfg) if cfg.train.resume else None
    if done is not None:  # resuming a finished run would write a second record of the same seed
        log.warning(f"{config_run_name(cfg)} already finished with this config: {done}; nothing to resume")
        record = json.loads(done.read_text())
        return {**record, "record_path": str(done), "already_finished": True}
    device = dist_utils.local_device(cfg.device)
    dist_utils.init_distributed(device)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    data = prepare_data(cfg)
    stages = run_stages(cfg)  # computed once: the checks, the memory plan and training read the same value
    check_early_stopping(cfg, data, stages)
    check_sampler(cfg, data, stages)
    # before any weight is loaded: a budget nothing fits stops here
    plans = memory_plans(cfg, counts_from_data(data), stages, device) if get_method(cfg.method).trainable else {}
    parts = build(cfg, device, data)
    name = config_run_name(cfg)
    run_id = new_run_id(name)
    scorer = Scorer(cfg, parts, device, Protocol.from_eval_config(cfg.eval))
    task = parts.data.task
    log.info(f"{name}: {len(parts.part.seen)} seen / {len(parts.part.unseen)} unseen classes; test {len(task.queries)} "
             f"queries x {len(task.gallery)} gallery; method {cfg.method} ({parts.method.n_trainable():,} trainable parameters)")
    trackers = Trackers(parse_report_to(cfg.report_to), Path(cfg.output_dir) / run_id, run_id, to_dict(cfg),
                        cfg.tracking_uri) if dist_utils.is_main() else NoTrackers()
    try:
        train_info = train(cfg, parts, scorer, stages, plans, on_epoch_end, trackers)
        val_metrics = final_validation(train_info, parts.data.val_task, scorer)
        t_eval = time.perf_counter()
        emb, results = scorer.score(task, "test", all_presets=True)
        if results is not None:
            trackers.log({f"test/{k}": v for k, v in results[0].metrics.items()}, train_info.get("steps_done", 0))
    finally:
        tracking = trackers.finish()
    if results is None:  # a DDP rank other than 0: it embedded its shard, rank 0 scores and records
        return {"run_name": name, "rank": world()[0]}
    timings = {"total_seconds": time.perf_counter() - t_start, "eval_seconds": time.perf_counter() - t_eval}
    record = make_record(cfg, parts, name, results, train_info, val_metrics, scorer.skipped, timings, device)
    record["tracking"] = tracking
    save_record(cfg, record, emb, results[0], parts, run_id)
    return record


def new_run_id(name: str) -> str:
    """A run's id: its name, the start time and a random suffix (unique within a second)."""
    return f"{name}_{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def evaluate_model(cfg: RunConfig, artifact, allow_seen: bool = False, pretrained: Optional[str] = None
                   ) -> Dict[str, Any]:
    """Score a trained model artifact on the task ``cfg`` describes (any dataset, split or setting) and
    write a normal record that says which artifact it came from; nothing is trained."""
    device = dist_utils.local_device(cfg.device)
    dist_utils.init_distributed(device)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    data = prepare_data(cfg)
    overlap = check_no_leakage(artifact, [data.part.class_names[c] for c in data.part.unseen], allow_seen)
    backbone = load_backbone_for(artifact, pretrained, device)
    parts = assemble(cfg, data, backbone, build_method(artifact, backbone, device), device)
    scorer = Scorer(cfg, parts, device, Protocol.from_eval_config(cfg.eval))
    emb, results = scorer.score(data.task, "test", all_presets=True)
    if results is None:
        return {"run_name": config_run_name(cfg), "rank": world()[0]}
    timings = {"total_seconds": time.perf_counter() - t_start, "eval_seconds": time.perf_counter() - t_start}
    meta = artifact.meta
    train_info = {"epochs": 0, "from_model": meta["run_id"]}
    record = make_record(cfg, parts, config_run_name(cfg), results, train_info, {}, scorer.skipped, timings, device)
    record["model_source"] = {"artifact": str(artifact.path), "run_id": meta["run_id"],
                              "tensors_sha256": meta["tensors_sha256"], "trained_on": meta["training"],
                              "seen_classes_in_test": overlap}
    save_record(cfg, record, emb, results[0])
    return record


def image_transforms_record(parts: RunParts) -> Dict[str, str]:
    """How images were prepared, for the record: training and evaluation, and the sketches' own where
    they differ (ProS inverts some datasets' sketches)."""
    out = {"train": repr(parts.train_tf), "eval": repr(parts.eval_tf)}
    for key, tf, photo in (("sketch_train", parts.sketch_train_tf, parts.train_tf),
                           ("sketch_eval", parts.sketch_eval_tf, parts.eval_tf)):
        if tf is not None and tf is not photo:
            out[key] = repr(tf)
    return out


def make_record(cfg: RunConfig, parts: RunParts, name: str, results: list, train_info: Dict[str, Any],
                val_metrics: Dict[str, float], skipped: Dict[str, int], timings: Dict[str, float],
                device: torch.device) -> Dict[str, Any]:
    """The run record (docs: README "Results records"); results[0] is under the run's protocol."""
    part = parts.part
    res: RetrievalResult = results[0]
    return {
        "schema": SCHEMA, "run_name": name, "method": cfg.method, "variant": cfg.variant, "dataset": cfg.data.dataset,
        "setting": cfg.data.setting, "split": data_split(cfg.data, for_record=True),
        "backbone": cfg.backbone.name, "pretrained": parts.backbone.pretrained, "seed": cfg.seed,
        "config": to_dict(cfg), "method_config_resolved": to_dict(parts.method.config), **res.to_json(),
        "metrics_by_protocol": {r.protocol["preset"]: r.metrics for r in results[1:]},
        "counts": part.counts, "test_set": {"queries": len(parts.data.task.queries),  # as built, before any
                                            "gallery": len(parts.data.task.gallery)},  # unreadable image is skipped
        "classes": {"seen": len(part.seen), "unseen": len(part.unseen),
                                           "unseen_names": [part.class_names[c] for c in part.unseen]},
        "class_names": part.class_names, "gzs_protocol": applied_gzs_protocol(cfg),
        "partition": training_partition(cfg.data, cfg.seed).identity(),
        **({"domains": protocol_record(cfg.data)} if parts.index.spec.domain_split is not None else {}),
        "weights_sha256": file_sha256(parts.backbone.weights_file) if parts.backbone.weights_file else None,
        "data_fingerprint": parts.index.fingerprint(),
        "model_selection": model_selection(cfg, run_stages(cfg)) if parts.method.trainable else {},
        "preprocess": parts.backbone.preprocess_cfg,
        "image_transforms": image_transforms_record(parts), "train": train_info, "val_metrics": val_metrics,
        "skipped_images": sum(skipped.values()) + train_info.get("skipped_images", 0),
        "skipped_by_stage": {**skipped, "train": train_info.get("skipped_images", 0)},
        "timings": timings, "device": str(device), "provenance": provenance(),
    }


def applied_gzs_protocol(cfg: RunConfig) -> Optional[str]:
    """The GZS protocol the run applied: its test set's composition in GZS, and in any setting a
    ``heldout`` partition (its training held seen photos out); None where it changed nothing."""
    held = training_partition(cfg.data, cfg.seed).heldout_fraction > 0
    return cfg.data.gzs_protocol if cfg.data.setting == "gzs" or held else None


def save_record(cfg: RunConfig, record: Dict[str, Any], emb: EmbeddedTask, res: RetrievalResult,
                parts: Optional[RunParts] = None, run_id: Optional[str] = None) -> None:
    """Write the model artifact (``parts`` of a trained run), embeddings, per-query values and the record
    (each atomically; the record last)."""
    out_dir = Path(cfg.output_dir)
    run_id = run_id or new_run_id(record["run_name"])
    record["run_id"] = run_id
    if parts is not None and parts.method.trainable:
        training = {"dataset": cfg.data.dataset, "split": record["split"], "setting": cfg.data.setting,
                    "counts": parts.part.counts, "data_fingerprint": record.get("data_fingerprint")}
        record["model"] = str(save_artifact(out_dir / run_id, parts.method, to_dict(cfg), parts.backbone,
                                            parts.part.class_names, parts.part.seen, training, run_id,
                                            training_identity(cfg), record["weights_sha256"]))
    if cfg.eval.save_embeddings:
        record["embeddings"] = str(save_embeddings(out_dir / run_id / "embeddings.npz", emb.query, emb.gallery,
                                                   emb.query_labels, emb.gallery_labels, emb.query_to_gallery,
                                                   emb.query_paths, emb.gallery_paths, emb.query_seen))
        record["per_query"] = str(save_per_query(out_dir / run_id / "per_query.npz", res))
    record["record_path"] = str(atomic_write_json(out_dir / f"{run_id}.json", record))
