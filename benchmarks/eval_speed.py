"""Exact evaluation at QuickDraw-Ext scale: the engine against its floor (the bare blocked matmul).

    python benchmarks/eval_speed.py                     # full 92,291 x 54,151, d=512, 30 classes, CPU
    python benchmarks/eval_speed.py --queries 5000      # a quicker look
    python benchmarks/eval_speed.py --device cuda       # on a GPU (also checks it against the CPU result)
    python benchmarks/eval_speed.py --loop-queries 200  # also time CLIP-AT's per-query torchmetrics loop

Prints, from the same run: the engine's time for mAP@all + mAP@200 + P@100 + P@200 (the default
protocol), the time of the bare blocked similarity matmul with the same blocks (nothing any exact
evaluation can skip), and their ratio (target <= 1.5x on CPU), the peak memory, and the time for every
preset at once. With ``--device cuda`` it checks the GPU metrics against a CPU evaluation of a
slice (within 1e-6) and reports peak GPU memory (target <= 5 s for the full problem). Without a GPU,
``--device cuda`` says so and exits. Run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import torch


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic(n_query: int, n_gallery: int, dim: int, classes: int, separation: float = 0.3, seed: int = 0):
    """Class-clustered random embeddings, float32.

    Class centres have norm ~``separation`` against unit-norm noise; 0.3 gives mAP@all ~0.4, the
    difficulty of QuickDraw-Ext for current methods (relevant items spread through the ranking).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32) * (separation / np.sqrt(dim))
    ql, gl = rng.integers(0, classes, n_query), rng.integers(0, classes, n_gallery)
    q = centres[ql] + rng.standard_normal((n_query, dim), dtype=np.float32) / np.sqrt(dim)
    g = centres[gl] + rng.standard_normal((n_gallery, dim), dtype=np.float32) / np.sqrt(dim)
    return q, g, ql, gl


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_floor(q, g, ql, gl, memory: str, device: torch.device) -> float:
    """The blocked similarity matmul the engine does, with its blocks, and nothing else."""
    from sbir_bench.retrieval.scoring import block_rows, unit_rows
    qt, gt = unit_rows(q, device), unit_rows(g, device)
    rows = block_rows(len(g), memory, device)
    order = np.argsort(ql, kind="stable")
    _sync(device)
    start = time.perf_counter()
    for s in range(0, len(order), rows):
        block = qt[torch.from_numpy(order[s: s + rows]).to(device)] @ gt.T
        if device.type == "cpu":
            block.numpy()  # materialised, as the engine's rows are
    _sync(device)
    return time.perf_counter() - start


def time_engine(q, g, ql, gl, memory: str, device: torch.device, protocols):
    from sbir_bench.retrieval import evaluate_many
    _sync(device)
    start = time.perf_counter()
    results = evaluate_many(q, g, ql, gl, protocols=protocols, memory=memory, device=device)
    _sync(device)
    return time.perf_counter() - start, results


def time_torchmetrics_loop(q, g, ql, gl, n: int) -> float:
    """The per-query loop of CLIP-AT's released code (Sketch_LVM ``validation_epoch_end``), mAP@all only."""
    try:
        from torchmetrics.functional.retrieval import retrieval_average_precision
    except ImportError:
        sys.exit("torchmetrics is not installed: pip install -e '.[dev]'")
    qt, gt = torch.from_numpy(q[:n]), torch.from_numpy(g)
    start = time.perf_counter()
    for i in range(n):
        distance = -(1.0 - torch.nn.functional.cosine_similarity(qt[i].unsqueeze(0), gt))
        target = torch.zeros(len(gt), dtype=torch.bool)
        target[np.where(gl == ql[i])] = True
        retrieval_average_precision(distance, target)
    return time.perf_counter() - start


def check_gpu_against_cpu(q, g, ql, gl, n: int = 3000) -> float:
    """Largest metric difference between GPU and CPU evaluations of the first ``n`` queries."""
    from sbir_bench.retrieval import Protocol, evaluate
    idx = np.arange(min(n, len(ql)))
    cpu = evaluate(q[idx], g, ql[idx], gl, protocol=Protocol(), device="cpu")
    gpu = evaluate(q[idx], g, ql[idx], gl, protocol=Protocol(), device="cuda")
    return max(abs(cpu.metrics[k] - gpu.metrics[k]) for k in cpu.metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=92291)
    ap.add_argument("--gallery", type=int, default=54151)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=30)
    ap.add_argument("--separation", type=float, default=0.3, help="class-centre norm vs unit noise")
    ap.add_argument("--loop-queries", type=int, default=0, help="also time CLIP-AT's loop on this many queries")
    ap.add_argument("--memory", default=None, help="block memory budget (default: 1GiB on CPU, auto on GPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU on this machine; the GPU benchmark was NOT run")
        return
    from sbir_bench.log import set_quiet
    from sbir_bench.retrieval import PRESETS, Protocol
    set_quiet(True)
    device = torch.device(args.device)
    memory = args.memory or ("auto" if device.type == "cuda" else "1GiB")
    q, g, ql, gl = synthetic(args.queries, args.gallery, args.dim, args.classes, args.separation)
    print(f"problem: {args.queries} queries x {args.gallery} gallery, d={args.dim}, {args.classes} classes; "
          f"device={device}, torch threads={torch.get_num_threads()}, memory={memory}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_engine, results = time_engine(q, g, ql, gl, memory, device, [Protocol()])
    t_floor = time_floor(q, g, ql, gl, memory, device)
    t_all, _ = time_engine(q, g, ql, gl, memory, device, list(PRESETS.values()))
    print("engine metrics:", {k: round(v, 4) for k, v in results[0].metrics.items()})
    print(f"engine (default protocol): {t_engine:8.1f} s   floor (blocked matmul): {t_floor:8.1f} s   "
          f"ratio {t_engine / t_floor:5.2f}x (target <= 1.5x: {'PASS' if t_engine / t_floor <= 1.5 else 'FAIL'})")
    print(f"all {len(PRESETS)} presets in one pass: {t_all:8.1f} s ({t_all / t_engine:.2f}x one protocol); "
          f"peak RSS {peak_rss_gib():.2f} GiB")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB; "
              f"target <= 5 s: {'PASS' if t_engine <= 5 else 'FAIL'}; "
              f"largest |GPU - CPU| metric difference: {check_gpu_against_cpu(q, g, ql, gl):.2e}")
    if args.loop_queries:
        t_loop = time_torchmetrics_loop(q, g, ql, gl, args.loop_queries)
        rate = args.loop_queries / t_loop
        print(f"CLIP-AT's per-query loop: {rate:.1f} queries/s; the engine is {args.queries / t_engine / rate:.0f}x faster")


if __name__ == "__main__":
    main()
