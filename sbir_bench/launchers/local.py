"""The local launcher: cells on this machine, one after another in this process, or ``--jobs N`` at once
as ``sbir-bench run`` subprocesses, each on a GPU no other running cell holds and with an equal share of
the CPU threads, so that N torch processes do not oversubscribe the cores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from ..config import to_dict
from ..log import get_logger
from .base import Launcher, LauncherOption, LaunchRequest, Outcome
from .cells import CellFailed, _write_yaml, execute
from .ledger import cell_id, failure_reason, hold_cell, state_dir, write_state

log = get_logger(__name__)


def _cuda_count() -> int:
    """GPUs torch sees here (0 without a CUDA runtime; a broken driver reads as none)."""
    import torch  # lazy: start-up time of the CLI, which imports the launcher table
    try:
        return torch.cuda.device_count()
    except RuntimeError:
        return 0


def visible_gpus() -> List[str]:
    """The GPUs this process was given, as the ids its children must be given: the entries of
    ``CUDA_VISIBLE_DEVICES`` (``3,5`` under SLURM or on a shared workstation: a cell goes to 3 or 5,
    never to 0), else ``0 .. n-1``."""
    count = _cuda_count()
    given = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return given[:count] if given else [str(i) for i in range(count)]


class GpuSlots:
    """Hands each starting cell a GPU no running cell holds (the one freed first is reused first).

    With ``share`` (``--share-gpus``), more cells than GPUs share them, each new cell going to the
    least-used GPU; without it, at most one cell runs per GPU.
    """

    def __init__(self, gpus: Sequence[str], share: bool = False) -> None:
        self.users: Dict[str, int] = {g: 0 for g in gpus}
        self.share = share

    def capacity(self, jobs: int) -> int:
        """How many cells may run at once: ``jobs``, capped at one per GPU unless shared."""
        return jobs if self.share or not self.users else min(jobs, len(self.users))

    def take(self) -> Optional[str]:
        """A GPU for a starting cell (None on a machine without GPUs)."""
        if not self.users:
            return None
        gpu = min(self.users, key=lambda g: self.users[g])  # dicts keep order: ties go to the first free
        if self.users[gpu] and not self.share:
            raise RuntimeError("no free GPU: capacity() bounds the cells started")  # a bug, not a user error
        self.users[gpu] += 1
        return gpu

    def give_back(self, gpu: Optional[str]) -> None:
        if gpu is not None:
            self.users[gpu] -= 1


def local_jobs(runs: List[Any], jobs: int, share_gpus: bool = False) -> List[tuple]:
    """Run cells ``jobs`` at a time as ``sbir-bench run`` subprocesses, each on a GPU no other running
    cell holds; returns (cell, error) per failure. Every cell runs whatever the others do."""
    slots = GpuSlots(visible_gpus(), share_gpus)
    at_once = slots.capacity(jobs)
    if at_once < jobs:
        log.warning(f"--jobs {jobs} but {at_once} GPU(s) ({', '.join(slots.users)}): running {at_once} cell(s) at a "
                    f"time, one per GPU (--share-gpus puts several cells on one GPU)")
    threads = max(1, (os.cpu_count() or 1) // at_once)
    queue, active, failures = list(runs), [], []
    while queue or active:
        while queue and len(active) < at_once:
            planned = queue.pop(0)
            held = hold_cell(Path(planned.cfg.output_dir), cell_id(planned))
            if held is None:
                log.warning(f"{cell_id(planned)} is being run by another reproduce command on this folder: skipped here")
                continue
            gpu = slots.take()
            active.append((planned, gpu, held, *_start_cell(planned, gpu, threads)))
        time.sleep(0.2)
        for item in [a for a in active if a[4].poll() is not None]:
            planned, gpu, held, cid, proc, log_file = item
            log_file.close()
            held.close()
            active.remove(item)
            slots.give_back(gpu)
            if proc.returncode != 0:
                why = failure_reason(Path(log_file.name).read_text(errors="replace"))
                out = Path(planned.cfg.output_dir)
                write_state(out, cid, status="failed", error=why, log=log_file.name)
                failures.append((cid, CellFailed(f"{why} (exit {proc.returncode}, log {log_file.name})",
                                                 proc.returncode if proc.returncode > 0 else 1)))
    return failures


def _start_cell(planned, gpu: Optional[str], threads: int) -> tuple:
    """(cell id, process, log file) of one cell started as ``sbir-bench run`` on ``gpu``."""
    cid = cell_id(planned)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    folder = state_dir(Path(planned.cfg.output_dir))
    cfg_file = folder / f"{cid}.yaml"
    _write_yaml(cfg_file, to_dict(planned.cfg))
    cmd = [sys.executable, "-m", "sbir_bench", "run", planned.cell.method, "--config", str(cfg_file), "--quiet"]
    log_file = open(folder / f"{cid}.log", "w")
    return cid, subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT), log_file


class LocalLauncher(Launcher):
    """Cells on this machine (``--launcher local``): in this process, or ``--jobs N`` subprocesses at once
    (evaluations of reused models run here first)."""

    name = "local"
    options = (
        LauncherOption("--jobs", "jobs", 1, "local: cells run at once, each on a GPU no other cell holds (from "
                       "CUDA_VISIBLE_DEVICES), CPU threads shared out; at most one per GPU unless --share-gpus.",
                       type=click.IntRange(min=1)),
        LauncherOption("--share-gpus", "share_gpus", False, "local: with more --jobs than GPUs, share them (the "
                       "least-used GPU takes the next cell).", is_flag=True),
    )

    def __init__(self, jobs: int = 1, share_gpus: bool = False) -> None:
        self.jobs, self.share_gpus = jobs, share_gpus

    def configure(self, values: Dict[str, Any]) -> "LocalLauncher":
        return LocalLauncher(values.get("jobs", 1), values.get("share_gpus", False))

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        if self.jobs == 1:
            return Outcome(failures=execute(runs))
        parallel = [p for p in runs if p.status in ("run", "resume")]
        failures = execute([p for p in runs if p not in parallel])
        return Outcome(failures=failures + local_jobs(parallel, self.jobs, self.share_gpus))
