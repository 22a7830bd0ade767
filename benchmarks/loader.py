"""Does the loader keep the model busy? Decoding + preprocessing images/s vs the backbone's forward images/s.

    python benchmarks/loader.py                          # 512 JPEG/PNG images of 256 px, ViT-B-32 forward
    python benchmarks/loader.py --images 2048 --device cuda

Measures, on a generated tree of JPEG photos and PNG sketches: the evaluation loader's images/s with
``workers: 0``, with the automatic worker count (``data.workers`` unset: the cores available minus
one for the main process, at most 8, and none below 4 cores) and with one worker per core, and, on
the same machine, the frozen backbone's forward images/s with data already in memory. The loader
should not be the slower of the two. Run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_images(root: Path, n: int, size: int) -> list:
    from sbir_bench.data.discovery import Sample
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = root / (f"{i}.jpg" if i % 2 else f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), 0))
    return samples


def loader_rate(samples, transform, batch: int, workers) -> float:
    from sbir_bench.data.images import image_loader
    loader = image_loader(samples, transform, batch, workers)
    start = time.perf_counter()
    count = sum(len(pos) for _, pos, _ in loader)
    return count / (time.perf_counter() - start)


def forward_rate(model, size: int, batch: int, device: str, repeats: int = 3) -> float:
    images = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad():
        model.encode_image(images)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model.encode_image(images)
        if device == "cuda":
            torch.cuda.synchronize()
    return repeats * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--backbone", default="ViT-B-32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from sbir_bench.data.images import available_cores, resolve_workers
    from sbir_bench.log import set_quiet
    from sbir_bench.models import load_backbone
    from sbir_bench.models.preprocess import eval_transform, preprocess_config
    set_quiet(True)
    backbone = load_backbone(args.backbone, "random", device=args.device)
    transform = eval_transform(preprocess_config(backbone.preprocess_cfg))
    auto, cores = resolve_workers(None, args.images, args.batch), available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        samples = make_images(Path(tmp), args.images, args.size)
        single = loader_rate(samples, transform, args.batch, 0)
        automatic = loader_rate(samples, transform, args.batch, None)
        per_core = loader_rate(samples, transform, args.batch, cores)
    model = forward_rate(backbone.model, backbone.image_size, args.batch, args.device)
    print(f"{args.images} images of {args.size} px; device={args.device}, torch threads={torch.get_num_threads()}")
    print(f"loader, workers 0:          {single:8.1f} images/s")
    print(f"loader, automatic ({auto} workers): {automatic:8.1f} images/s  ({automatic / single:.2f}x workers 0)")
    print(f"loader, {cores} workers:          {per_core:8.1f} images/s  ({per_core / single:.2f}x workers 0)")
    print(f"{args.backbone} forward:       {model:8.1f} images/s  (loader / forward = {automatic / model:.2f})")


if __name__ == "__main__":
    main()
