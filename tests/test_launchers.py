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
