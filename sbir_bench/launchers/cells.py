"""What running a cell is, wherever it runs: in this process (:func:`execute`), or as a job
(:class:`CellRun`, which submitit pickles); either way its state goes to the ledger, and the last cell
of a table writes the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..config import RunConfig, from_dict
from ..errors import SbirError
from ..fileio import atomic_write_bytes
from ..log import configure_cli_logging, get_logger
from .ledger import (
    cell_id,
    exception_reason,
    read_state,
    release,
    running_here,
    state_dir,
    write_state,
)

log = get_logger(__name__)


class CellFailed(SbirError):
    """A cell that failed in another process; its exit code is that process's (docs/errors.md)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
        from ..runner import (  # lazy: the CLI imports this module's launcher table at start-up
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
        from ..reporting.tables import (
            write_table,  # pandas and scipy: only when a table is written
        )
        write_table(table, Path(output_dir), planned.get("configs"))


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
    from ..artifacts import (
        load_artifact,  # lazy, as in CellRun._run: the CLI's start-up
    )
    from ..runner import evaluate_model, finished_record
    from ..runner import run as run_one
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
