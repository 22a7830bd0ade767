"""The cell ledger: every cell's state in ``<output>/.cells/``, which ``reproduce --status`` reads.

A claim made atomically before a cell is submitted (two ``reproduce`` commands on one folder never submit
the same cell twice), a lock held while this machine runs it, the state the job itself writes (running /
failed with its last error line / requeued / done), the plan the last job reads before it writes the
table, and one status line per cell.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence

from ..config import config_id, to_dict
from ..errors import SbirError
from ..fileio import atomic_write_json

CELLS = ".cells"


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


def status_lines(runs: Sequence[Any], output_dir: Path) -> List[str]:
    """One line per cell: done / running / pending / failed (with its last error and log) / missing data."""
    lines = []
    for planned in runs:
        cid = cell_id(planned)
        state = read_state(output_dir, cid)
        if planned.status == "done" or state.get("status") == "done":
            what = "done"
        elif planned.skipped:
            what = planned.status
        elif state.get("status") == "failed":
            logs = state.get("log") or str(state_dir(output_dir) / f"{cid}.log")
            what = f"failed: {state.get('error', '')} (log {logs})"
        elif state.get("has.claim") and job_alive(state) is False:
            what = (f"vanished (job {state.get('job_id') or 'never submitted'}: cancelled, node lost or its command "
                    f"killed); the next reproduce submits it again")
        elif state.get("status") == "requeued":
            what = "requeued after a preemption or time limit" + (f" (job {state['job_id']})" if state.get("job_id") else "")
        elif state.get("status") == "running":
            what = f"running on {state.get('host', '?')}" + (f" (job {state['job_id']})" if state.get("job_id") else "")
        elif state.get("has.claim"):
            what = f"pending (job {state['job_id']})" if state.get("job_id") else "pending (being submitted)"
        else:
            what = f"not submitted ({planned.status})"
        lines.append(f"{planned.cell.setting}/{planned.cell.name:<15} {planned.cell.method:<14} seed {planned.seed}  {what}")
    return lines
