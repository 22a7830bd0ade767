"""What the frozen-feature cache saves: embedding a task again, and a linear-probe epoch.

    python benchmarks/feature_cache_speed.py                   # ViT-B-32 (random weights saved to a file), 400 images
    python benchmarks/feature_cache_speed.py --classes 20 --per-class 20

On a generated Sketchy-layout tree (JPEG photos, PNG sketches, 256 pixels), with the weights of a
randomly initialised ViT-B-32 saved to a file (random weights that are not a file are never cached):

1. the embedding phase of a zero-shot run (sketches and photos of the test task) with an empty cache,
   then again with the cache filled: target >= 10x;
2. one linear-probe epoch on cached features against the same epoch through the backbone
   (``method_config.augment=true``): target >= 20x.

Ratios are measured in the same run; run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_tree(root: Path, classes: int, per_class: int) -> Path:
    """Sketchy-layout tree: ``classes`` x ``per_class`` photos (JPEG) and one sketch (PNG) each."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for k in range(per_class):
            photo = root / "Sketchy" / "EXTEND_image_sketchy" / f"class{c}" / f"n{c:03d}_{k}.jpg"
            sketch = root / "Sketchy" / "256x256" / "sketch" / "tx_000000000000" / f"class{c}" / f"n{c:03d}_{k}-1.png"
            for path, image in ((photo, rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)),
                                (sketch, np.where(rng.random((256, 256, 1)) > 0.97, 0, 255).repeat(3, 2).astype(np.uint8))):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
    return root


def split_file(root: Path, classes: int) -> Path:
    path = root / "split.txt"
    path.write_text("\n".join(f"class{c}" for c in range(classes // 2)) + "\n")
    return path


def config(method: str, root: Path, weights: Path, split: Path, out: Path, **extra):
    from sbir_bench.config import build_run_config
    return build_run_config({}, {"method": method, "data.dataset": "sketchy", "data.data_root": str(root),
                                 "data.split_file": str(split), "backbone.name": "ViT-B-32",
                                 "backbone.pretrained": str(weights), "output_dir": str(out), "device": "cpu",
                                 "quiet": True, "eval.batch_size": 32, "data.workers": 0, **extra})


def time_embedding(cfg) -> float:
    """Seconds to embed the test task's sketches and photos (the cache filled or read as it is)."""
    from sbir_bench.embedding import embed_task
    from sbir_bench.runner import build
    parts = build(cfg, torch.device("cpu"))
    start = time.perf_counter()
    embed_task(parts.data.task, parts.method, parts.eval_tf, torch.device("cpu"), 32, 0, cache=parts.cache)
    return time.perf_counter() - start


def time_linear_probe_epoch(cfg) -> float:
    """Seconds of one training epoch (features read before the clock starts, as a cached run would)."""
    from sbir_bench.data.triplets import FeatureTriplets, TripletDataset
    from sbir_bench.training.trainer import Trainer
    from sbir_bench.runner import Scorer, build
    from sbir_bench.retrieval import Protocol
    parts = build(cfg, torch.device("cpu"))
    part = parts.part
    if parts.method.trains_on_frozen_features():
        features = Scorer(cfg, parts, torch.device("cpu"), Protocol()).frozen_features(part.train_sketches + part.train_photos)
        data = FeatureTriplets(part.train_sketches, part.train_photos, part.seen, features, 0)
    else:
        data = TripletDataset(part.train_sketches, part.train_photos, part.seen, parts.train_tf, 0)
    trainer = Trainer(parts.method, data, cfg.train, torch.device("cpu"), 0, workers=0)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=20)
    args = ap.parse_args()
    import os

    from sbir_bench.log import set_quiet
    from sbir_bench.models import load_backbone
    set_quiet(True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["SBIR_BENCH_CACHE"] = str(tmp / "cache")
        root = make_tree(tmp / "data", args.classes, args.per_class)
        split = split_file(tmp, args.classes)
        weights = tmp / "vit-b-32-random.pt"
        torch.save(load_backbone("ViT-B-32", "random").model.state_dict(), weights)
        n_images = 2 * args.classes * args.per_class
        print(f"tree: {n_images} images ({args.classes} classes), ViT-B-32 random weights from a file, "
              f"threads={torch.get_num_threads()}")
        zs = config("zeroshot-clip", root, weights, split, tmp / "runs")
        cold, warm = time_embedding(zs), time_embedding(zs)
        print(f"zero-shot embedding phase: empty cache {cold:6.2f} s, filled cache {warm:6.3f} s  ->  {cold / warm:6.1f}x "
              f"(target >= 10x: {'PASS' if cold / warm >= 10 else 'FAIL'})")
        lp = dict(**{"train.epochs": 1, "train.batch_size": 16, "train.val_every": 0})
        through = time_linear_probe_epoch(config("linear-probe", root, weights, split, tmp / "runs",
                                                 **{**lp, "method_config.augment": True}))
        cached = time_linear_probe_epoch(config("linear-probe", root, weights, split, tmp / "runs", **lp))
        print(f"linear-probe epoch: through the backbone {through:6.2f} s, on cached features {cached:6.3f} s  ->  "
              f"{through / cached:6.1f}x (target >= 20x: {'PASS' if through / cached >= 20 else 'FAIL'})")


if __name__ == "__main__":
    main()
