"""SpLIP's training-step cost relative to a frozen-CLIP forward on the same batch.

    python benchmarks/splip_step.py                      # sbir-tiny and ViT-B-32, random init, batch 16
    python benchmarks/splip_step.py --backbones ViT-B-32 --batch 32 --device cuda

The reference is what any CLIP-based SBIR method pays at least: one forward of the frozen image
encoder over the batch's sketches, positive and negative photos (3 x batch images, no gradients).
The SpLIP step is forward + backward + optimiser step of its full objective (classification over
the seen classes, adaptive-margin triplet, conditional jigsaw). Target (issue #6): <= 3.5x.
"""

from __future__ import annotations

import argparse
import time

import torch


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name: str, batch: int, n_classes: int, repeats: int, device: str) -> tuple[float, float]:
    from sbir_bench.methods import TripletBatch
    from sbir_bench.models import load_backbone
    from splip import SpLIP

    backbone = load_backbone(name, "random", device=device)
    size = backbone.image_size
    classes = [f"class {i}" for i in range(n_classes)]
    method = SpLIP(backbone, classes, list(range(n_classes))).to(device)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    images = lambda: torch.randn(batch, 3, size, size, generator=g).to(device)  # noqa: E731
    labels = torch.randint(0, n_classes, (batch,), generator=g).to(device)
    b = TripletBatch(images(), images(), images(), labels, (labels + 1) % n_classes)

    def frozen_forward() -> None:
        with torch.no_grad():
            backbone.model.encode_image(torch.cat([b.sketch, b.positive, b.negative]))

    def splip_step() -> None:
        opt.zero_grad(set_to_none=True)
        method.loss(b)["loss"].backward()
        opt.step()

    return median_time(frozen_forward, repeats), median_time(splip_step, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["sbir-tiny", "ViT-B-32"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=100, help="seen classes in the classification loss")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} seen classes={args.classes}")
    for name in args.backbones:
        forward, step = measure(name, args.batch, args.classes, args.repeats, args.device)
        ratio = step / forward
        print(f"{name:>10}: frozen forward {forward * 1e3:8.1f} ms   SpLIP step {step * 1e3:8.1f} ms   "
              f"ratio {ratio:4.2f}x  (target <= 3.5x: {'PASS' if ratio <= 3.5 else 'FAIL'})")


if __name__ == "__main__":
    main()
