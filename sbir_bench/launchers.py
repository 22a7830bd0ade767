"""Where ``reproduce`` runs its cells: one :class:`Launcher` per way, behind one interface.

* ``local`` (default): one cell after another in this process (:class:`InProcess`); ``--jobs N``
  runs N cells at once as ``sbir-bench run`` subprocesses (:class:`LocalJobs`), each on a GPU no
  other running cell holds (:class:`GpuSlots`) and an equal share of the CPU threads, so that N
  torch processes do not oversubscribe the cores.
* ``slurm``: one job per cell (method x dataset x seed) through submitit (imported only here, only
  when asked for); resources from the options; a cell with several GPUs runs under ``torchrun``
  inside its job. ``reproduce`` submits every cell that is not finished and returns, printing the
  job ids, unless ``--wait``.
* ``submitit-local``: the same job path through submitit's local executor (real subprocesses), so
  tests and a laptop exercise what the cluster runs.

:data:`LAUNCHERS` is the table the CLI's ``--launcher`` choices come from; ``reproduce`` plans, a
launcher runs or submits, and :mod:`sbir_bench.reporting.tables` writes the table.

Every cell keeps its state in ``<output>/.cells/``: a claim made atomically before it is submitted
(two ``reproduce`` commands on one folder never submit the same cell twice), and the state the job
itself writes (running / failed with its last error line). A job killed by the scheduler
(preemption, time limit) is requeued by submitit's checkpoint hook and resumes from the cell's last
checkpoint (the trainer's resume is bit-identical on CPU); a failed cell does not stop the others,
and running ``reproduce`` again resubmits only what is neither done nor running. The table is
written when the last cell ends, and on demand with ``--collect``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from .config import RunConfig, config_id, from_dict, to_dict
from .errors import ConfigError, SbirError
from .extras import require
from .fileio import atomic_write_bytes, atomic_write_json
from .log import configure_cli_logging, get_logger

log = get_logger(__name__)
CELLS = ".cells"


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


# ------------------------------------------------------------------------------------ cell state
def cell_id(planned) -> str:
    """A cell's file-name-safe id: setting, cell, method, seed."""
    return f"{planned.cell.setting}_{planned.cell.name}_{planned.cell.method}_seed{planned.seed}"


def state_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CELLS


def claim(output_dir: Path, cid: str, info: Dict[str, Any]) -> bool:
    """Atomically claim a cell for submission (False: another command claimed it first). The claim
    names the claiming command's process and host, so a claim left by a killed command is known."""
    folder = state_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / f"{cid}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the umask decides
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({**info, "claimed": time.time(), "pid": os.getpid(), "host": os.uname().nodename}, fh)
    return True


def hold_cell(output_dir: Path, cid: str) -> Optional[IO[str]]:
    """Hold a cell while this process runs it (the local launcher): the open lock file, or None when
    another process holds it. An ``flock``, so the kernel releases it however the holder ends
    (Ctrl-C, SIGKILL); closing the file releases it too."""
    import fcntl  # POSIX; the local launcher's one platform dependency
    folder = state_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / f"{cid}.lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


@contextlib.contextmanager
def running_here(output_dir: Path, cid: str) -> Iterator[bool]:
    """:func:`hold_cell` for the length of a ``with`` block: yields False when another process holds it."""
    fh = hold_cell(output_dir, cid)
    try:
        yield fh is not None
    finally:
        if fh is not None:
            fh.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


SLURM_ALIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
               "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED")


def slurm_job_state(job_id: str) -> Optional[str]:
    """The job's state as ``squeue`` says it ('' when the scheduler no longer knows the job; None when
    it cannot be asked: no squeue here, or the controller does not answer)."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return "" if "invalid job id" in done.stderr.lower() else None
    return done.stdout.strip().splitlines()[0].strip() if done.stdout.strip() else ""


def job_alive(claimed: Dict[str, Any]) -> Optional[bool]:
    """Whether the job a claim names still exists: True, False (vanished: cancelled, node lost, the
    submitting command killed before it submitted), or None (cannot tell from here: keep waiting)."""
    job, here = claimed.get("job_id"), claimed.get("host") == os.uname().nodename
    if not job:  # claimed but never submitted: alive only while the claiming command is
        return _pid_alive(int(claimed["pid"])) if here and claimed.get("pid") else None
    if claimed.get("launcher") == "slurm":
        state = slurm_job_state(job)
        return None if state is None else state.split()[0] in SLURM_ALIVE if state else False
    if here and str(job).isdigit():  # submitit's local executor: the job id is the process id
        return _pid_alive(int(job))
    return None


def release(output_dir: Path, cid: str) -> None:
    """Drop a cell's claim and state (it failed: the next ``reproduce`` may submit it again)."""
    for suffix in (".claim", ".state"):
        (state_dir(output_dir) / f"{cid}{suffix}").unlink(missing_ok=True)


def read_state(output_dir: Path, cid: str) -> Dict[str, Any]:
    """The claim and the job's own state of a cell ({} when never submitted)."""
    out: Dict[str, Any] = {}
    for suffix in (".claim", ".state"):
        path = state_dir(output_dir) / f"{cid}{suffix}"
        try:
            out.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        out["has" + suffix] = True
    return out


def write_state(output_dir: Path, cid: str, **state: Any) -> None:
    atomic_write_json(state_dir(output_dir) / f"{cid}.state", {**state, "time": time.time()})


# ------------------------------------------------------------------------------------ the job
class CellRun:
    """What a job runs: one cell's run (resuming its checkpoint), its state kept in ``.cells/``; when it
    is the last unfinished cell of its table, the table is written."""

    def __init__(self, cfg_tree: Dict[str, Any], cid: str, table: str, gpus: int = 1) -> None:
        self.cfg_tree, self.cid, self.table, self.gpus = cfg_tree, cid, table, gpus

    def __call__(self) -> Optional[str]:
        cfg = from_dict(RunConfig, self.cfg_tree)
        configure_cli_logging(cfg.quiet)  # a job's entry point is an application: it says what it does
        out = Path(cfg.output_dir)
        write_state(out, self.cid, status="running", pid=os.getpid(), host=os.uname().nodename)
        try:
            path = self._run(cfg)
        except BaseException as exc:  # a user error, a crash or a preemption: say so, then let the scheduler see it
            if read_state(out, self.cid).get("status") != "requeued":  # a preemption's checkpoint said requeued
                write_state(out, self.cid, status="failed", error=exception_reason(exc))
            raise
        write_state(out, self.cid, status="done", record=path)
        write_table_when_complete(out, self.table)
        return path

    def _run(self, cfg) -> Optional[str]:
        from .runner import (  # lazy: the CLI imports this module's launcher table at start-up
            finished_record,
            run,
        )
        if self.gpus > 1:  # several GPUs: DDP under torchrun inside the job
            cfg_file = state_dir(Path(cfg.output_dir)) / f"{self.cid}.yaml"
            _write_yaml(cfg_file, self.cfg_tree)
            subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.gpus}",
                            "-m", "sbir_bench", "run", cfg.method, "--config", str(cfg_file), "--quiet"], check=True)
            done = finished_record(cfg)
            return str(done) if done else None
        return run(cfg).get("record_path")


def _write_yaml(path: Path, tree: Dict[str, Any]) -> None:
    atomic_write_bytes(path, yaml.safe_dump(tree, sort_keys=False).encode())


def write_table_when_complete(output_dir: Path, table: str) -> None:
    """Write the table once every planned cell of it is done or cannot run (the last job does it)."""
    plan_file = state_dir(output_dir) / "plan.json"
    try:
        planned = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        return
    if all(read_state(output_dir, cid).get("status") == "done" for cid in planned["runnable"]):
        from .reporting.tables import write_table  # pandas and scipy: only when a table is written
        write_table(table, Path(output_dir), planned.get("configs"))


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


def _cuda_count() -> int:
    """GPUs torch sees here (0 without a CUDA runtime; a broken driver reads as none)."""
    import torch  # lazy: start-up time of the CLI, which imports the launcher table
    try:
        return torch.cuda.device_count()
    except RuntimeError:
        return 0


class CellFailed(SbirError):
    """A cell that failed in another process; its exit code is that process's (docs/errors.md)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def failure_reason(text: str) -> str:
    """A failed cell's last error line, with out-of-memory named as such and the knob that helps."""
    first = (text.strip().splitlines() or ["failed"])[-1][:400]
    if "out of memory" in text.lower() or "out of gpu memory" in text.lower():
        knob = "" if "memory_budget" in first else (" (lower --memory-budget or --batch-size: micro-batches keep the "
                                                    "optimiser step the whole batch's)")
        return f"out of memory: {first}{knob}"
    return first


def exception_reason(exc: BaseException) -> str:
    """:func:`failure_reason` of an exception raised in this process: a user error's own line, else
    the exception's type and message (a crash)."""
    return failure_reason(str(exc) if isinstance(exc, SbirError) else f"{type(exc).__name__}: {exc}")


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


# ------------------------------------------------------------------------------------ the launchers
@dataclass
class LaunchRequest:
    """What ``reproduce`` asks of a launcher: a table's planned runs and how to run them."""

    table: str
    output_dir: Path
    resources: Resources = field(default_factory=Resources)
    jobs: int = 1  # local: cells at once
    share_gpus: bool = False  # local: more cells than GPUs share them
    wait: bool = False  # cluster: wait for every job, then write the table


@dataclass
class Outcome:
    """What a launch did: failures (cell, error), one line per submitted job, and whether jobs are still
    out (the last one writes the table)."""

    failures: List[Tuple[str, SbirError]] = field(default_factory=list)
    submitted: List[str] = field(default_factory=list)
    pending: bool = False


class Launcher:
    """A way to run a table's cells. ``launch`` runs or submits every runnable planned run (each has
    ``cell``, ``seed``, ``cfg``, ``status``, ``model``, ``runnable`` and ``describe()``); it never stops
    at a failing cell, and never runs a cell another command holds."""

    name = ""

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        raise NotImplementedError


class InProcess(Launcher):
    """One cell after another in this process (``--launcher local``)."""

    name = "local"

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        return Outcome(failures=execute(runs))


class LocalJobs(Launcher):
    """N cells at once as ``sbir-bench run`` subprocesses (``--launcher local --jobs N``); reuse cells,
    an evaluation each, run here first."""

    name = "local"

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        parallel = [p for p in runs if p.status in ("run", "resume")]
        failures = execute([p for p in runs if p not in parallel])
        return Outcome(failures=failures + local_jobs(parallel, request.jobs, request.share_gpus))


class Submitit(Launcher):
    """One job per cell through submitit: SLURM (``slurm``) or its local executor (``submitit-local``)."""

    def __init__(self, name: str, cluster: str) -> None:
        self.name, self.cluster = name, cluster

    def launch(self, runs: Sequence[Any], request: LaunchRequest) -> Outcome:
        executor(self.cluster, state_dir(request.output_dir) / "jobs", request.resources, "sbir-check")  # before claims
        reused = execute([p for p in runs if p.status == "reuse"])  # an evaluation of an existing model: here, now
        submitted, failures = submit(runs, self, request)
        return Outcome(failures=reused + failures, submitted=submitted, pending=not request.wait)


LAUNCHERS: Dict[str, Launcher] = {"local": InProcess(), "slurm": Submitit("slurm", "slurm"),
                                  "submitit-local": Submitit("submitit-local", "local")}


def launcher_for(name: str, jobs: int = 1) -> Launcher:
    """The launcher ``--launcher name`` means (``local`` with ``--jobs`` above 1: :class:`LocalJobs`)."""
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; choose one of: {', '.join(LAUNCHERS)}")
    return LocalJobs() if name == "local" and jobs > 1 else LAUNCHERS[name]


def save_plan(runs: Sequence[Any], output_dir: Path) -> None:
    """The cells of this table the last job waits for before writing the table."""
    for p in runs:
        if p.status == "done":
            write_state(output_dir, cell_id(p), status="done")
    runnable = [cell_id(p) for p in runs if p.runnable or p.status == "done"]
    atomic_write_json(state_dir(output_dir) / "plan.json", {"runnable": runnable, "configs": planned_configs(runs)})


def planned_configs(runs: Sequence[Any]) -> List[str]:
    """The config ids of the planned cells: what the table answers (:func:`write_table`'s ``configs``)."""
    return sorted({config_id(to_dict(p.cfg)) for p in runs if p.cfg is not None})


def execute(runs: Sequence[Any]) -> List[Tuple[str, SbirError]]:
    """Run every runnable entry (resuming checkpoints); returns (run, error) for each run that failed.

    Any failure of one cell (a user error, out of memory, a crash) is recorded in the cell's state
    for ``--status`` and the next cell runs; only Ctrl-C stops the table.
    """
    failures: List[Tuple[str, SbirError]] = []
    for planned in runs:
        if not planned.runnable:
            continue
        out, cid = Path(planned.cfg.output_dir), cell_id(planned)
        with running_here(out, cid) as mine:
            if not mine:
                log.warning(f"{cid} is being run by another reproduce command on this folder: skipped here")
                continue
            failure = _execute_one(planned, out, cid)
        if failure:
            failures.append(failure)
    return failures


def _execute_one(planned: Any, out: Path, cid: str) -> Optional[Tuple[str, SbirError]]:
    """Run one cell in this process; (cell, error) when it failed (its state says why)."""
    from .artifacts import load_artifact  # lazy, as in CellRun._run: the CLI's start-up
    from .runner import evaluate_model, finished_record
    from .runner import run as run_one
    if planned.status != "reuse" and finished_record(planned.cfg) is not None:
        return None  # another command finished it since the plan was made
    log.info(f"reproduce: {planned.describe()}")
    write_state(out, cid, status="running", pid=os.getpid(), host=os.uname().nodename)
    try:
        if planned.status == "reuse":
            evaluate_model(planned.cfg, load_artifact(planned.model))
        else:
            run_one(planned.cfg)
    except KeyboardInterrupt:
        release(out, cid)  # not failed, not running: the next reproduce resumes it
        raise
    except Exception as exc:  # noqa: BLE001 - one cell's crash must not cost the others; it is reported
        why = exception_reason(exc)
        trace = state_dir(out) / f"{cid}.log"  # the traceback, for a bug report
        atomic_write_bytes(trace, "".join(traceback.format_exception(exc)).encode())
        write_state(out, cid, status="failed", error=why, log=str(trace))
        return cid, exc if isinstance(exc, SbirError) else CellFailed(f"{why} (log {trace})")
    write_state(out, cid, status="done")
    return None


def submit(runs: Sequence[Any], launcher: Submitit, request: LaunchRequest
           ) -> Tuple[List[str], List[Tuple[str, SbirError]]]:
    """Submit every runnable cell that is neither claimed nor running through submitit; returns (one
    line per submitted job, failures when ``request.wait``). A failed or vanished cell is submitted
    again; a pending, requeued or running one never is."""
    output_dir, resources, table = request.output_dir, request.resources, request.table
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
    if request.wait:
        for cid, job in jobs:
            try:
                job.result()
            except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the job's traceback
                state = read_state(output_dir, cid)
                why = state.get("error") or (str(exc).strip().splitlines() or ["failed"])[-1][:300]
                failures.append((cid, CellFailed(f"{why} (log {state.get('log', job.paths.stderr)})")))
    return submitted, failures
