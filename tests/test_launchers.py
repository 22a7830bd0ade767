"""reproduce on a cluster: the submitit job path (local subprocesses give the same table as the local
launcher), what a SLURM submission asks for (a fake sbatch records the script), claims that keep two
commands from submitting one cell twice, status, and a requeued job that resumes its checkpoint."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from interrupts import loss_interrupted_at

from sbir_bench.cli import main

MINI = ["--dataset", "mini", "--set", "train.epochs=1", "--set", "train.val_every=0", "--quiet"]


def reproduce(*args: str):
    return CliRunner().invoke(main, ["reproduce", "zs", *MINI, *args])


@pytest.mark.slow  # submitit's local executor: a process per cell
def test_submitit_local_jobs_give_the_same_table_as_the_local_launcher(tmp_path, mini_root):
    methods = ["--method", "zeroshot-clip", "--method", "linear-probe"]
    local = reproduce(*methods, "--output-dir", str(tmp_path / "a"))
    assert local.exit_code == 0, local.output
    jobs = reproduce(*methods, "--launcher", "submitit-local", "--wait", "--output-dir", str(tmp_path / "b"))
    assert jobs.exit_code == 0, jobs.output
    assert jobs.output.count("submitted zs_mini_") == 2
    assert (tmp_path / "a" / "table_zs.csv").read_text() == (tmp_path / "b" / "table_zs.csv").read_text()
    status = reproduce(*methods, "--status", "--output-dir", str(tmp_path / "b"))
    assert status.output.count(" done") == 2, status.output


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An ``sbatch`` on PATH that keeps each submitted script and answers with a job id."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    seen.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f"#!/bin/sh\nfor a in \"$@\"; do last=\"$a\"; done\ncp \"$last\" {seen}/$(date +%s%N).sh\n"
                      "echo 'Submitted batch job 4242'\n")
    script.chmod(0o755)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return seen


def test_slurm_submission_asks_for_the_resources_and_runs_the_cell(fake_sbatch, tmp_path, mini_root):
    out = tmp_path / "out"
    args = ["--method", "zeroshot-clip", "--launcher", "slurm", "--partition", "gpu", "--time", "60",
            "--gpus-per-cell", "2", "--cpus-per-gpu", "4", "--mem", "64G", "--account", "acc", "--qos", "high",
            "--constraint", "h100", "--sbatch", "mail-type=END", "--output-dir", str(out)]
    result = reproduce(*args)
    assert result.exit_code == 0, result.output
    assert "submitted zs_mini_zeroshot-clip_seed0: job 4242" in result.output
    (script,) = fake_sbatch.glob("*.sh")
    text = script.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=60", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --account=acc", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "#SBATCH --mail-type=END", "submitit.core._submit"):
        assert line in text, line
    (pickled,) = (out / ".cells" / "jobs").rglob("*_submitted.pkl")
    with open(pickled, "rb") as fh:
        cell = pickle.load(fh).function
    assert cell.cid == "zs_mini_zeroshot-clip_seed0" and cell.gpus == 2
    assert cell.cfg_tree["method"] == "zeroshot-clip" and cell.cfg_tree["train"]["resume"] is True
    again = reproduce(*args)  # a second command on the same folder: the cell is claimed, nothing is submitted
    assert again.exit_code == 0 and "0 job(s) submitted" in again.output and len(list(fake_sbatch.glob("*.sh"))) == 1
    status = reproduce("--method", "zeroshot-clip", "--status", "--output-dir", str(out))
    assert "pending (job 4242)" in status.output


def test_a_failed_cell_is_submitted_again_and_a_running_one_is_not(fake_sbatch, tmp_path, mini_root):
    from sbir_bench.launchers import write_state
    out = tmp_path / "out"
    args = ["--method", "zeroshot-clip", "--method", "linear-probe", "--launcher", "slurm", "--output-dir", str(out)]
    assert reproduce(*args).exit_code == 0 and len(list(fake_sbatch.glob("*.sh"))) == 2
    write_state(out, "zs_mini_zeroshot-clip_seed0", status="failed", error="CUDA out of memory")
    write_state(out, "zs_mini_linear-probe_seed0", status="running", host="node7")
    status = reproduce(*args[:4], "--status", "--output-dir", str(out)).output
    assert "failed: CUDA out of memory (log" in status and "running on node7" in status
    again = reproduce(*args)
    assert "submitted zs_mini_zeroshot-clip_seed0" in again.output and "linear-probe" not in again.output
    assert len(list(fake_sbatch.glob("*.sh"))) == 3


@pytest.mark.slow  # three training runs through submitit's job class
def test_a_requeued_job_resumes_from_the_cells_checkpoint(tmp_path, mini_root, monkeypatch):
    """Preemption: the job dies mid-training; submitit's checkpoint hook requeues the same cell, which
    resumes from the last epoch's checkpoint and ends with the uninterrupted run's weights."""
    from sbir_bench.config import build_run_config, load_yaml, to_dict
    from sbir_bench.launchers import submitit_job_class
    from sbir_bench.methods import get_method
    tree = lambda out: to_dict(build_run_config(load_yaml(Path("configs/mini/coop.yaml")), {  # noqa: E731
        "method": "coop", "output_dir": str(out), "quiet": True, "train.epochs": 2, "train.steps_per_epoch": 2,
        "train.val_every": 0, "train.resume": True, "eval.save_embeddings": False}))
    job_class = submitit_job_class()
    job_class(tree(tmp_path / "a"), "a", "zs")()
    cls = get_method("coop")
    original = cls.loss
    monkeypatch.setattr(cls, "loss", loss_interrupted_at(cls, 3, "SIGUSR1: preempted"))  # epoch 2, step 1
    job = job_class(tree(tmp_path / "b"), "b", "zs")
    with pytest.raises(KeyboardInterrupt):
        job()
    assert json.loads((tmp_path / "b" / ".cells" / "b.state").read_text())["status"] == "failed"
    monkeypatch.setattr(cls, "loss", original)
    hook = getattr(job, "__submitit_checkpoint__", None) or job.checkpoint  # the name differs across submitit versions
    requeued = hook()
    requeued.function(*requeued.args, **requeued.kwargs)
    ckpt = lambda out: torch.load(out / "checkpoints" / "coop_mini_zs_split1_seed0" / "last.pt", weights_only=True)  # noqa: E731
    for key, value in ckpt(tmp_path / "a")["trainable"].items():
        assert torch.equal(value, ckpt(tmp_path / "b")["trainable"][key])
    record = json.loads(next((tmp_path / "b").glob("*.json")).read_text())
    assert record["train"]["resumed_from_epoch"] == 1


@pytest.mark.slow  # two cells as two processes
def test_local_jobs_run_cells_at_once_and_collect_writes_the_table(tmp_path, mini_root):
    out = tmp_path / "out"
    result = reproduce("--method", "zeroshot-clip", "--method", "linear-probe", "--jobs", "2", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.json"))) == 2
    (out / "table_zs.csv").unlink()
    collected = reproduce("--method", "zeroshot-clip", "--collect", "--output-dir", str(out))
    assert collected.exit_code == 0 and (out / "table_zs.csv").is_file()


# ------------------------------------------------------------------ GPU slots and failing cells
class _FakeCell:
    """A cell's process that finishes after ``polls`` looks, with ``code``."""

    def __init__(self, polls: int, code: int = 0) -> None:
        self.polls, self.code, self.returncode = polls, code, None

    def poll(self):
        self.polls -= 1
        if self.polls <= 0:
            self.returncode = self.code
        return self.returncode


def _fake_local_jobs(monkeypatch, tmp_path, durations, gpus="3,5", codes=None):
    """Run ``launchers.local_jobs`` over fake cells; returns (the GPU each cell got, GPUs busy at each start)."""
    from types import SimpleNamespace

    from sbir_bench.launchers import local as launchers
    monkeypatch.setattr(launchers, "_cuda_count", lambda: len(gpus.split(",")))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    monkeypatch.setattr(launchers.time, "sleep", lambda s: None)
    got, busy, running = {}, [], {}

    def start(planned, gpu, threads):
        cid = planned.cell.method
        busy.append(sorted(g for c, g in running.items() if procs[c].returncode is None))
        got[cid], running[cid] = gpu, gpu
        log_file = open(tmp_path / f"{cid}.log", "w")
        log_file.write("CUDA out of memory. Tried to allocate 2 GiB\n" if (codes or {}).get(cid) else "")
        return cid, procs[cid], log_file
    procs = {name: _FakeCell(polls, (codes or {}).get(name, 0)) for name, polls in durations.items()}
    monkeypatch.setattr(launchers, "_start_cell", start)
    runs = [SimpleNamespace(cell=SimpleNamespace(setting="zs", name="mini", method=name), seed=0,
                            cfg=SimpleNamespace(output_dir=str(tmp_path))) for name in durations]
    return got, busy, runs


def test_a_cell_gets_a_free_gpu_of_those_given_never_one_in_use(monkeypatch, tmp_path):
    from sbir_bench.launchers import local as launchers
    got, busy, runs = _fake_local_jobs(monkeypatch, tmp_path, {"a": 9, "b": 2, "c": 9, "d": 1})
    assert launchers.local_jobs(runs, jobs=2) == []
    assert got == {"a": "3", "b": "5", "c": "5", "d": "3"}  # b ended first: c takes its GPU, not a's
    for start, taken in zip(["a", "b", "c", "d"], busy):
        assert got[start] not in taken, (start, busy)


def test_more_jobs_than_gpus_is_said_and_shared_only_when_asked(monkeypatch, tmp_path, caplog):
    import logging

    from sbir_bench.launchers import local as launchers
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("sbir_bench.launchers").addHandler(handler)
    try:
        got, busy, runs = _fake_local_jobs(monkeypatch, tmp_path, {"a": 5, "b": 5, "c": 5})
        launchers.local_jobs(runs, jobs=3)
        assert max(len(b) for b in busy) == 1 and len(seen) == 1 and "--share-gpus" in seen[0]
        got, busy, runs = _fake_local_jobs(monkeypatch, tmp_path, {"a": 5, "b": 5, "c": 5})
        launchers.local_jobs(runs, jobs=3, share_gpus=True)
    finally:
        logging.getLogger("sbir_bench.launchers").removeHandler(handler)
    assert busy[-1] == ["3", "5"] and sorted(got.values()) == ["3", "3", "5"] and len(seen) == 1


def test_a_failing_local_job_leaves_the_others_running_and_is_named_out_of_memory(monkeypatch, tmp_path):
    from sbir_bench.launchers import local as launchers
    got, busy, runs = _fake_local_jobs(monkeypatch, tmp_path, {"a": 1, "b": 3, "c": 2}, codes={"a": 1})
    failures = launchers.local_jobs(runs, jobs=2)
    assert set(got) == {"a", "b", "c"} and [cid for cid, _ in failures] == ["a"]
    assert "out of memory" in str(failures[0][1]) and "--batch-size" in str(failures[0][1])
    assert json.loads((tmp_path / ".cells" / "a.state").read_text())["status"] == "failed"


@pytest.mark.slow  # two cells, one training
def test_a_crashing_cell_does_not_stop_the_local_table(tmp_path, mini_root, monkeypatch):
    """Out of memory (or any crash) in one cell: the others run, the table is written from what finished,
    --status says why the cell failed, and the exit code is the failure's."""
    from sbir_bench.errors import OutOfMemoryError
    from sbir_bench.methods import get_method
    cls = get_method("linear-probe")

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(cls, "loss", out_of_memory)
    out = tmp_path / "out"
    methods = ["--method", "linear-probe", "--method", "zeroshot-clip"]
    result = reproduce(*methods, "--output-dir", str(out))
    assert result.exit_code == OutOfMemoryError.exit_code, result.output  # the documented out-of-memory code
    assert (out / "table_zs.csv").is_file() and "zeroshot" in (out / "table_zs.csv").read_text().lower()
    assert "1 run(s) failed" in result.output
    status = reproduce(*methods, "--status", "--output-dir", str(out))
    line = next(ln for ln in status.output.splitlines() if "linear-probe" in ln)
    assert "failed: out of memory" in line and "out of GPU memory at epoch 1, step 1" in line, status.output
    assert "train.memory_budget" in line and "text_chunk" in line, status.output


@pytest.mark.parametrize("flags", [["--partition", "gpu"], ["--sbatch", "mail-type=END"], ["--time", "60"],
                                   ["--wait"], ["--launcher", "slurm", "--share-gpus"]])
def test_scheduler_options_the_launcher_would_ignore_are_one_line(flags, tmp_path):
    result = reproduce("--method", "zeroshot-clip", *flags, "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o" / ".cells").exists()


# ------------------------------------------------------------------ preemption, vanished jobs, stale claims
@pytest.fixture
def fake_squeue(fake_sbatch, tmp_path):
    """An ``squeue`` answering with the contents of a file: a job state, or nothing (the job is gone)."""
    answer = tmp_path / "squeue-answer"
    answer.write_text("")
    script = tmp_path / "bin" / "squeue"
    script.write_text(f"#!/bin/sh\ncat {answer}\n")
    script.chmod(0o755)
    return answer


def test_a_requeued_cell_is_never_resubmitted_and_a_vanished_one_is(fake_squeue, fake_sbatch, tmp_path, mini_root):
    from sbir_bench.launchers import write_state
    out, cid = tmp_path / "out", "zs_mini_zeroshot-clip_seed0"
    args = ["--method", "zeroshot-clip", "--launcher", "slurm", "--output-dir", str(out)]
    fake_squeue.write_text("PENDING\n")
    assert "submitted " + cid in reproduce(*args).output
    write_state(out, cid, status="requeued", host="node3")  # what the preempted job's checkpoint hook writes
    again = reproduce(*args)
    assert "0 job(s) submitted" in again.output and len(list(fake_sbatch.glob("*.sh"))) == 1
    status = reproduce(*args[:2], "--status", "--output-dir", str(out)).output
    assert "requeued after a preemption or time limit (job 4242)" in status, status
    fake_squeue.write_text("")  # cancelled, or its node lost: the scheduler no longer knows the job
    status = reproduce(*args[:2], "--status", "--output-dir", str(out)).output
    assert "vanished (job 4242" in status, status
    third = reproduce(*args)
    assert "submitted " + cid in third.output and len(list(fake_sbatch.glob("*.sh"))) == 2
    fake_squeue.write_text("RUNNING\n")
    assert "0 job(s) submitted" in reproduce(*args).output


def test_a_preempted_job_is_requeued_not_failed(tmp_path, mini_root, monkeypatch):
    """submitit's signal handler calls the job's ``checkpoint`` and then exits the process: the cell must
    stay "requeued" through that exit, or a second reproduce would submit it beside the requeued job."""
    from sbir_bench.config import build_run_config, load_yaml, to_dict
    from sbir_bench.launchers import read_state, submitit_job_class
    from sbir_bench.methods import get_method
    tree = to_dict(build_run_config(load_yaml(Path("configs/mini/coop.yaml")), {
        "method": "coop", "output_dir": str(tmp_path), "quiet": True, "train.epochs": 1, "train.steps_per_epoch": 2,
        "train.val_every": 0, "train.resume": True, "eval.save_embeddings": False}))
    job = submitit_job_class()(tree, "cell", "zs")

    def preempted(self, batch):
        job.checkpoint()  # submitit: checkpoint_and_try_requeue -> _checkpoint -> requeue -> exit
        raise SystemExit(-1)
    monkeypatch.setattr(get_method("coop"), "loss", preempted)
    with pytest.raises(SystemExit):
        job()
    assert read_state(tmp_path, "cell")["status"] == "requeued"


def test_slurm_without_sbatch_leaves_no_plan_or_claim(tmp_path, mini_root, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}{os.path.dirname(os.path.realpath(os.sys.executable))}")
    out = tmp_path / "out"
    result = reproduce("--method", "zeroshot-clip", "--launcher", "slurm", "--output-dir", str(out))
    assert result.exit_code == 2 and "sbatch" in result.output
    assert not (out / ".cells" / "plan.json").exists() and not list(out.glob(".cells/*.claim"))


@pytest.mark.slow  # a submitit-local job
def test_a_claim_whose_command_was_killed_is_submitted_again(tmp_path, mini_root):
    """A reproduce killed (SIGKILL) between claiming a cell and submitting it left a claim with no job:
    with its process gone the cell is "vanished", and the next command submits it."""
    import subprocess
    import sys

    from sbir_bench.launchers import claim
    out, cid = tmp_path / "out", "zs_mini_zeroshot-clip_seed0"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim(out, cid, {"launcher": "local"})
    path = out / ".cells" / f"{cid}.claim"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pid": dead.pid}))
    status = reproduce("--method", "zeroshot-clip", "--status", "--output-dir", str(out)).output
    assert "vanished (job never submitted" in status, status
    result = reproduce("--method", "zeroshot-clip", "--launcher", "submitit-local", "--wait", "--output-dir", str(out))
    assert result.exit_code == 0 and f"submitted {cid}" in result.output, result.output


def test_two_local_reproduce_commands_never_run_one_cell_twice(tmp_path, mini_root):
    """The first command holds the cell it runs (a lock the kernel drops when it ends): the second skips it."""
    from sbir_bench.launchers import hold_cell
    out, cid = tmp_path / "out", "zs_mini_zeroshot-clip_seed0"
    first = hold_cell(out, cid)
    try:
        second = CliRunner().invoke(main, ["reproduce", "zs", "--dataset", "mini", "--method", "zeroshot-clip",
                                           "--output-dir", str(out)])
    finally:
        first.close()
    assert f"{cid} is being run by another reproduce command" in second.output, second.output
    assert not list(out.glob("*.json"))


def test_every_launcher_declares_its_options_and_reproduce_offers_each_once():
    """The command line adds every launcher's declared options by looping over the table; an option of another
    launcher than the chosen one is refused, naming the launchers that take it."""
    from sbir_bench.errors import ConfigError
    from sbir_bench.launchers import LAUNCHERS, launcher_for, launcher_options
    text = CliRunner().invoke(main, ["reproduce", "--help"]).output
    options = launcher_options()
    assert options and len({o.dest for o in options}) == len(options)
    for launcher in LAUNCHERS.values():
        for option in launcher.options:
            assert text.count(f"{option.flag} ") + text.count(f"{option.flag}\n") >= 1, option.flag
    with pytest.raises(ConfigError, match="--jobs only apply to --launcher local"):
        launcher_for("slurm", {"jobs": 3})
    configured = launcher_for("slurm", {"partition": "gpu", "time_min": 60, "sbatch": ("mail-type=END",)})
    assert configured.resources.partition == "gpu" and configured.resources.sbatch == {"mail-type": "END"}
    assert LAUNCHERS["slurm"].resources.partition is None  # the table's launcher is not changed
