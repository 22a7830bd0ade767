"""One run end to end: data -> method -> (training) -> embedding -> metrics -> JSON record.

This is the only place that wires the pieces together; it knows nothing method-specific.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torchvision import transforms as T

from .config import RunConfig, from_dict, to_dict
from .data.catalog import index_dataset
from .data.splits import load_split
from .data.triplets import TripletDataset
from .engine import distributed as dist_utils
from .engine.trainer import Trainer
from .evaluation import embed_task
from .methods import get_method
from .models import load_backbone
from .progress import info, set_quiet
from .records import SCHEMA, atomic_write_json, provenance, run_name
from .retrieval import Protocol
from .retrieval.embeddings import save_embeddings
from .settings import build_task, build_val_task, partition


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms where torch offers them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_transform(size: int, mean, std) -> T.Compose:
    """Light augmentation shared by sketches and photos."""
    return T.Compose([T.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(size: int, mean, std) -> T.Compose:
    return T.Compose([T.Resize(size, antialias=True), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def _norm_stats(model) -> tuple:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


def build(cfg: RunConfig, device: torch.device) -> Dict[str, Any]:
    """Everything a run needs before training: backbone, data partition, tasks, method."""
    backbone = load_backbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.cache_dir, device)
    index = index_dataset(cfg.data.dataset, cfg.data.data_root)
    unseen = load_split(index.spec, index.class_names, cfg.data.split, cfg.data.split_file)
    part = partition(index, unseen, cfg.seed, cfg.data.val_fraction, cfg.data.gzs_seen_photo_fraction,
                     cfg.data.max_per_class)
    method_cls = get_method(cfg.method)
    method_cfg = from_dict(method_cls.config_class, cfg.method_config, f"method_config ({cfg.method})")
    method = method_cls(backbone, index.class_names, part.seen, method_cfg).to(device)
    size = cfg.data.image_size or backbone.image_size
    mean, std = _norm_stats(backbone.model)
    return {"backbone": backbone, "index": index, "part": part, "method": method,
            "train_tf": train_transform(size, mean, std), "eval_tf": eval_transform(size, mean, std),
            "fine": index.spec.fine_grained}


def _final_validation(train_info: Dict[str, Any], val_task, score) -> Dict[str, float]:
    """Seen-class validation metrics of the final model: from the last epoch's validation if the
    trainer ran one, else computed now (so zero-shot runs report them too)."""
    history = train_info.get("history") or []
    if history and any(k.startswith("val_") for k in history[-1]):
        return {k[4:]: v for k, v in history[-1].items() if k.startswith("val_")}
    if not val_task.evaluable:
        return {}
    return dict(score(val_task, "validation")[1].metrics)


def run(cfg: RunConfig, on_epoch_end=None) -> Dict[str, Any]:
    """Execute one run and return its record (also written under ``cfg.output_dir``)."""
    set_quiet(cfg.quiet)
    device = dist_utils.local_device(cfg.device)
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    parts = build(cfg, device)
    method, part, fine = parts["method"], parts["part"], parts["fine"]
    name = run_name(cfg.method + (f"-{cfg.variant}" if cfg.variant else ""), cfg.data.dataset, cfg.data.setting,
                    cfg.data.split, cfg.seed)
    out_dir = Path(cfg.output_dir)
    protocol = Protocol.from_eval_config(cfg.eval)
    task = build_task(cfg.data.setting, part, fine)
    val_task = build_val_task(cfg.data.setting, part, fine)
    info(f"{name}: {len(part.seen)} seen / {len(part.unseen)} unseen classes; test {len(task.queries)} queries x "
         f"{len(task.gallery)} gallery; method {cfg.method} ({method.n_trainable():,} trainable parameters)")

    def score(task_, desc: str):
        method.prepare_eval([parts["index"].class_names[c] for c in sorted({s.label for s in task_.gallery})])
        emb = embed_task(task_, method.embed_sketches, method.embed_photos, parts["eval_tf"], device,
                         cfg.eval.batch_size, cfg.data.workers, amp=cfg.train.amp)
        return emb, emb.evaluate(protocol, cfg.eval.memory, device, desc)

    train_info: Dict[str, Any] = {"epochs": 0}
    if method.trainable and cfg.train.epochs > 0:
        instance_triplets = fine and cfg.data.setting == "fg"  # category settings train on category triplets
        dataset = TripletDataset(part.train_sketches, part.train_photos, part.seen, parts["train_tf"], cfg.seed,
                                 instance_triplets)
        ckpt_dir = Path(cfg.train.checkpoint_dir) if cfg.train.checkpoint_dir else out_dir / "checkpoints" / name
        validate = None
        if val_task.evaluable:
            validate = lambda m: score(val_task, "validation")[1].metrics  # noqa: E731
        elif cfg.train.val_every:
            info("no seen-class validation: the split leaves no validation photos (raise data.val_fraction)")
        trainer = Trainer(method, dataset, cfg.train, device, cfg.seed, ckpt_dir, cfg.data.workers,
                          cfg.data.pin_memory, validate, on_epoch_end)
        result = trainer.fit()
        train_info = {"epochs": cfg.train.epochs, "steps_per_epoch": trainer.steps, "history": result.history,
                      "seconds": result.seconds, "resumed_from_epoch": result.resumed_from_epoch,
                      "skipped_images": result.skipped_images, "checkpoint_dir": str(ckpt_dir),
                      "world_size": trainer.world}
    val_metrics = _final_validation(train_info, val_task, score)
    t_eval = time.perf_counter()
    emb, res = score(task, "test")
    eval_seconds = time.perf_counter() - t_eval
    record = {
        "schema": SCHEMA, "run_name": name, "method": cfg.method, "variant": cfg.variant, "dataset": cfg.data.dataset, "setting": cfg.data.setting,
        "split": cfg.data.split if not cfg.data.split_file else f"file:{cfg.data.split_file}",
        "backbone": cfg.backbone.name, "pretrained": parts["backbone"].pretrained, "seed": cfg.seed,
        "config": to_dict(cfg), "method_config_resolved": to_dict(method.config),
        **res.to_json(), "counts": part.counts, "classes": {"seen": len(part.seen), "unseen": len(part.unseen),
                                                            "unseen_names": [part.class_names[c] for c in part.unseen]},
        "class_names": part.class_names,
        "train": train_info, "val_metrics": val_metrics, "skipped_images": emb.skipped + train_info.get("skipped_images", 0),
        "timings": {"total_seconds": time.perf_counter() - t_start, "eval_seconds": eval_seconds},
        "device": str(device), "provenance": provenance(),
    }
    if dist_utils.is_main():
        run_id = f"{name}_{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"  # unique even within a second
        record["run_id"] = run_id
        if cfg.eval.save_embeddings:
            emb_path = out_dir / run_id / "embeddings.npz"
            save_embeddings(emb_path, emb.query, emb.gallery, emb.query_labels, emb.gallery_labels, emb.query_to_gallery,
                            emb.query_paths, emb.gallery_paths)
            np.savez_compressed(out_dir / run_id / "per_query.npz", query_index=res.query_index,
                                **{k.replace("@", "_at_"): v for k, v in res.per_query.items()})
            record["embeddings"] = str(emb_path)
            record["per_query"] = str(out_dir / run_id / "per_query.npz")
        record["record_path"] = str(atomic_write_json(out_dir / f"{run_id}.json", record))
    return record
