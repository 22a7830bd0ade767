"""The submitit launcher: one job per cell through submitit, on SLURM (``slurm``) or through submitit's
local executor (``submitit-local``: the same job path as real subprocesses, so tests and a laptop
exercise what the cluster runs). submitit is imported only here, only when asked for. A cell with several
GPUs runs under ``torchrun`` inside its job; a job killed by the scheduler (preemption, time limit) is
requeued by submitit's checkpoint hook and resumes from the cell's last checkpoint."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from ..config import RunConfig, from_dict, to_dict
from ..errors import ConfigError, SbirError
from ..extras import require
from ..fileio import atomic_write_json
from ..log import get_logger
from .base import Launcher, LauncherOption, LaunchRequest, Outcome
from .cells import CellFailed, CellRun, execute
from .ledger import (
    cell_id,
    claim,
    job_alive,
    read_state,
    release,
    save_plan,
    state_dir,
    write_state,
)
from .local import _cuda_count

log = get_logger(__name__)


@dataclass
class Resources:
    """What one cell's job asks the scheduler for (``reproduce --partition ... --sbatch KEY=VALUE``)."""

    partition: Optional[str] = None
    time_min: int = 24 * 60
    gpus_per_cell: int = 1
    cpus_per_gpu: int = 8
    mem: Optional[str] = None  # e.g. "64G"
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    sbatch: Dict[str, str] = field(default_factory=dict)

    def executor_parameters(self, name: str) -> Dict[str, Any]:
        """submitit ``update_parameters`` keywords for these resources."""
        params: Dict[str, Any] = {"name": name, "timeout_min": self.time_min, "nodes": 1, "tasks_per_node": 1,
                                  "gpus_per_node": self.gpus_per_cell,
                                  "cpus_per_task": self.cpus_per_gpu * max(1, self.gpus_per_cell)}
        if self.mem:
            params["mem_gb"] = _gigabytes(self.mem)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        if self.sbatch:
            params["slurm_additional_parameters"] = dict(self.sbatch)
        return params


def _gigabytes(text: str) -> float:
    """``"64G"`` / ``"500M"`` / ``"64"`` -> gigabytes."""
    t = text.strip().upper().rstrip("B")
    scale = {"T": 1024.0, "G": 1.0, "M": 1 / 1024}.get(t[-1:], None)
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        raise ConfigError(f"--mem {text!r}: give a size such as 64G or 500M") from None


def parse_sbatch(items: Sequence[str]) -> Dict[str, str]:
    """``["mail-type=END", "exclude=node1"]`` -> {"mail-type": "END", "exclude": "node1"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--sbatch {item!r} must look like KEY=VALUE (an sbatch option without its dashes)")
        out[key.strip().lstrip("-")] = value.strip()
    return out


def submitit_job_class():
    """:class:`CellRun` with submitit's checkpoint hook (a requeue resumes from the last checkpoint)."""
    submitit = require("submitit", "--launcher slurm/submitit-local")

    class CheckpointableCellRun(CellRun, submitit.helpers.Checkpointable):
        """Requeued after a preemption or time limit with the same cell: the run resumes its checkpoint.

        submitit calls ``checkpoint`` from its signal handler before it requeues the job and exits; the
        cell is then "requeued", not failed, so no second ``reproduce`` submits it again.
        """

        def checkpoint(self, *args: Any, **kwargs: Any):
            out = Path(from_dict(RunConfig, self.cfg_tree).output_dir)
            write_state(out, self.cid, status="requeued", host=os.uname().nodename)
            return super().checkpoint(*args, **kwargs)

    return CheckpointableCellRun


def executor(kind: str, folder: Path, resources: Resources, name: str):
    """A submitit executor: ``slurm`` or ``local`` (submitit's own subprocess executor)."""
    submitit = require("submitit", "--launcher slurm/submitit-local")
    if kind == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"--launcher slurm: {' and '.join(missing)} not found; run reproduce on a SLURM login "
                              f"node (or use --launcher local / submitit-local)")
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm" if kind == "slurm" else "local")
    params = resources.executor_parameters(name)
    if kind != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k != "mem_gb"}
        params["gpus_per_node"] = 0 if not _cuda_count() else min(params["gpus_per_node"], _cuda_count())
    ex.update_parameters(**params)
    return ex


class SubmititLauncher(Launcher):
    """One job per cell through submitit: SLURM (``slurm``) or its local executor (``submitit-local``)."""

    options = (
        LauncherOption("--partition", "partition", None, "slurm: partition."),
        LauncherOption("--time", "time_min", 24 * 60, "slurm: time limit per cell, in minutes (a job at its limit "
                       "is requeued and resumes).", type=click.IntRange(min=1)),
        LauncherOption("--gpus-per-cell", "gpus_per_cell", 1, "slurm: GPUs per cell (more than one: torchrun "
                       "inside the job).", type=click.IntRange(min=0)),
        LauncherOption("--cpus-per-gpu", "cpus_per_gpu", 8, "slurm: CPUs per GPU.", type=click.IntRange(min=1)),
        LauncherOption("--mem", "mem", None, "slurm: memory per cell, e.g. 64G."),
        LauncherOption("--account", "account", None, "slurm: account."),
        LauncherOption("--qos", "qos", None, "slurm: quality of service."),
        LauncherOption("--constraint", "constraint", None, "slurm: node constraint, e.g. a100."),
        LauncherOption("--sbatch", "sbatch", (), "slurm: any other sbatch option, KEY=VALUE.", multiple=True),
        LauncherOption("--wait", "wait", False, "slurm / submitit-local: wait for every job, then write the table.",
                       is_flag=True),
    )

    def __init__(self, name: str, cluster: str, resources: Optional[Resources] = None, wait: bool = False) -> None:
        self.name, self.cluster = name, cluster
        self.resources, self.wait = resources or Resources(), wait

    def configure(self, values: Dict[str, Any]) -> "SubmititLauncher":
        resources = Resources(**{k: values[k] for k in ("partition", "time_min", "gpus_per_cell", "cpus_per_gpu", "mem",
                                                       "account", "qos", "constraint") if k in values},
                              sbatch=parse_sbatch(values.get("sbatch", ())))
        if resources.mem:
            _gigabytes(resources.mem)  # a malformed --mem is one line now, not at submission
        return SubmititLauncher(self.name, self.cluster, resources, values.get("wait", False))

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        executor(self.cluster, state_dir(request.output_dir) / "jobs", self.resources, "sbir-check")  # before claims
        reused = execute([p for p in runs if p.status == "reuse"])  # an evaluation of an existing model: here, now
        submitted, failures = submit(runs, self, request)
        return Outcome(failures=reused + failures, submitted=submitted, pending=not self.wait)


def submit(runs: Sequence[Any], launcher: "SubmititLauncher", request: LaunchRequest
           ) -> Tuple[List[str], List[Tuple[str, SbirError]]]:
    """Submit every runnable cell that is neither claimed nor running through submitit; returns (one
    line per submitted job, failures when ``request.wait``). A failed or vanished cell is submitted
    again; a pending, requeued or running one never is."""
    output_dir, resources, table = request.output_dir, launcher.resources, request.table
    folder = state_dir(output_dir)
    save_plan(runs, output_dir)
    job_class, submitted, jobs = submitit_job_class(), [], []
    for planned in runs:
        if not planned.runnable:
            continue
        cid = cell_id(planned)
        state = read_state(output_dir, cid)
        if state.get("status") == "failed":
            release(output_dir, cid)  # a failed cell is submitted again
        elif state.get("has.claim") and state.get("status") != "done" and job_alive(state) is False:
            log.warning(f"{cid}: job {state.get('job_id') or '(never submitted)'} vanished (cancelled, node lost or "
                        f"its command killed): submitting it again")
            release(output_dir, cid)
        if not claim(output_dir, cid, {"launcher": launcher.name}):
            continue  # claimed by this or another reproduce command: pending, requeued, running or done
        ex = executor(launcher.cluster, folder / "jobs", resources, f"sbir-{cid}")
        job = ex.submit(job_class(to_dict(planned.cfg), cid, table, resources.gpus_per_cell))
        atomic_write_json(folder / f"{cid}.claim", {"launcher": launcher.name, "job_id": str(job.job_id),
                                                     "log": str(job.paths.stderr), "claimed": time.time(),
                                                     "host": os.uname().nodename})
        submitted.append(f"submitted {cid}: job {job.job_id} (logs {job.paths.folder})")
        jobs.append((cid, job))
    failures: List[Tuple[str, SbirError]] = []
    if launcher.wait:
        for cid, job in jobs:
            try:
                job.result()
            except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback
                state = read_state(output_dir, cid)
                why = state.get("error") or (str(exc).strip().splitlines() or ["failed"])[-1][:300]
                failures.append((cid, CellFailed(f"{why} (log {state.get('log', job.paths.stderr)})")))
    return submitted, failures
