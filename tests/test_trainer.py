"""The shared trainer: frozen backbone, bit-for-bit resume, and DDP (2 gloo processes) == 1 process."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import last_checkpoint, short_training
from interrupts import loss_interrupted_at

from sbir_bench.config import build_run_config
from sbir_bench.runner import build, run

FAST = {**short_training({"train.steps_per_epoch": 3}), "quiet": True}


def config(tmp_path: Path, method: str, **extra):
    return build_run_config({}, {"method": method, "output_dir": str(tmp_path / "runs"), **FAST, **extra})


@pytest.mark.parametrize("method", ["linear-probe", "coop", "maple"])
def test_backbone_is_bit_identical_after_training(tmp_path, method):
    cfg = config(tmp_path, method, **{"train.lr": 0.05})
    parts = build(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in parts.backbone.model.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in parts.method.trainable_state().items()}
    from sbir_bench.data.triplets import TripletDataset
    from sbir_bench.training.trainer import Trainer
    part = parts.part
    data = TripletDataset(part.train_sketches, part.train_photos, part.seen, parts.train_tf, 0, False)
    Trainer(parts.method, data, cfg.train, torch.device("cpu"), 0).fit()
    after = parts.backbone.model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"backbone tensor {key} changed"
    changed = [k for k, v in parts.method.trainable_state().items() if not torch.equal(v, trainable_before[k])]
    assert changed, "training changed no trainable parameter"
    assert all(not k.startswith("clip.") for k in trainable_before)


class Killed(Exception):
    pass


def test_resume_after_kill_is_bit_identical(tmp_path):
    straight = config(tmp_path / "a", "maple")
    run(straight)
    reference = last_checkpoint(tmp_path / "a" / "runs" / "checkpoints" / "maple_mini_zs_split1_seed0")

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    interrupted = config(tmp_path / "b", "maple")
    with pytest.raises(Killed):
        run(interrupted, on_epoch_end=kill)
    ckpt_dir = tmp_path / "b" / "runs" / "checkpoints" / "maple_mini_zs_split1_seed0"
    assert last_checkpoint(ckpt_dir)["epoch"] == 1
    record = run(config(tmp_path / "b", "maple", **{"train.resume": True}))
    assert record["train"]["resumed_from_epoch"] == 1
    resumed = last_checkpoint(ckpt_dir)
    assert resumed["epoch"] == 2
    for key, value in reference["trainable"].items():
        assert torch.equal(value, resumed["trainable"][key]), key
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    from sbir_bench.errors import SbirError
    ckpt_dir = tmp_path / "runs" / "checkpoints" / "coop_mini_zs_split1_seed0"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(SbirError, match="unreadable"):
        run(config(tmp_path, "coop", **{"train.resume": True}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAINED = {"train.epochs": 2, "train.steps_per_epoch": 3, "train.batch_size": 8, "train.lr": 0.05,
           "train.val_every": 1, "eval.save_embeddings": True}
# DDP == one process: every method whose loss is a mean of per-sample terms. SpLIP's jigsaw draws its
# permutations from each rank's own generator, so only its jigsaw-free variant can equal one process
# (ProS's stage-1 dropout likewise).
EQUAL = {"coop-accum": ("coop", {"train.grad_accum": 2}),   # no_sync on the first micro-batch of each step
         "maple": ("maple", {}), "linear-probe": ("linear-probe", {}), "clip-at": ("clip-at", {}),
         "cocoop": ("cocoop", {}), "splip-nojigsaw": ("splip", {"method_config.jigsaw": False}),
         # both stages, each wrapped in DDP in turn; stage 1's dropout draws per rank, so it is off here.
         # At the others' lr 0.05, Adam turns the rounding noise of the all-reduce in gradients near its
         # eps (the fresh generator has many) into steps of lr size; at ProS's own scale (1e-3) it cannot.
         "pros": ("pros", {"method_config.dropout": 0.0, "method_config.units_epochs": 1,
                           "method_config.units_batch_size": 8, "train.lr": 0.001}),
         # its own sampler's stream, each global batch of 16 images split between the ranks, stage 2
         # continuing the stream where stage 1 left it
         "pros-balanced": ("pros", {"method_config.dropout": 0.0, "method_config.units_epochs": 1,
                                    "method_config.units_batch_size": 8, "train.lr": 0.001,
                                    "train.sampler": "balanced"})}


def _plan(tmp_path: Path, nproc: int) -> Path:
    plan = [{"out": str(tmp_path / f"{name}-{nproc}"), "method": method, "set": {**TRAINED, **extra}}
            for name, (method, extra) in EQUAL.items()]
    # sharded evaluation alone, on a task with seen and unseen queries
    plan.append({"out": str(tmp_path / f"zs-gzs-{nproc}"), "method": "zeroshot-clip",
                 "set": {"data.setting": "gzs", "eval.feature_cache": False}})
    if nproc > 1:  # Ctrl-C in the second step of epoch 2 on both ranks, then --resume, against a straight run
        plan += [{"out": str(tmp_path / f"splip-{kind}"), "method": "splip", "set": TRAINED, **extra}
                 for kind, extra in (("straight", {}), ("resumed", {"interrupt_at": 3 + 2}))]
        # rank 1's first micro-batch all unreadable: both ranks skip that step (no hang, no lone step)
        plan.append({"out": str(tmp_path / "unreadable"), "method": "coop", "set": TRAINED, "unreadable_on_rank": 1})
    path = tmp_path / f"plan{nproc}.json"
    path.write_text(json.dumps(plan))
    return path


def _launch(tmp_path: Path, nproc: int) -> None:
    helper = str(Path(__file__).with_name("ddp_runs.py"))
    cmd = [sys.executable, helper] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", helper]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, str(_plan(tmp_path, nproc))], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _only_record(folder: Path) -> dict:
    (path,) = folder.glob("*.json")  # rank 0 alone writes the record
    return json.loads(path.read_text())


def _trainable(folder: Path, record: dict) -> dict:
    """The last trainable state: of the last stage, for a method trained in stages."""
    stages = record["train"].get("stages") or [{}]
    return last_checkpoint(folder / "checkpoints" / record["run_name"] / stages[-1].get("stage", ""))["trainable"]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process_and_resume_bit_identically(tmp_path):
    """Two launches (one process, two gloo processes) run every plan entry; see tests/ddp_runs.py."""
    _launch(tmp_path, 1)
    _launch(tmp_path, 2)
    for name in EQUAL:
        single, double = _only_record(tmp_path / f"{name}-1"), _only_record(tmp_path / f"{name}-2")
        assert (single["train"]["world_size"], double["train"]["world_size"]) == (1, 2), name
        for one, two in zip(single["train"]["history"], double["train"]["history"], strict=True):
            validated = "val_mAP@all" in one or one.get("stage") == "units"  # ProS's stage 1 does not validate
            assert set(one) == set(two) and validated, name  # validation ran on every epoch
            numbers = lambda row: {k: v for k, v in row.items() if k != "stage"}  # noqa: E731
            assert numbers(two) == pytest.approx(numbers(one), rel=1e-4, abs=1e-6) and \
                two.get("stage") == one.get("stage"), name
        assert double["metrics"] == pytest.approx(single["metrics"], abs=1e-4), name
        a, b = _trainable(tmp_path / f"{name}-1", single), _trainable(tmp_path / f"{name}-2", double)
        assert a.keys() == b.keys(), name
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-3, msg=f"{name}: {key}")
        with np.load(single["embeddings"]) as x, np.load(double["embeddings"]) as y:
            for part in ("query_paths", "gallery_paths"):  # every image once, in the one-process order
                assert x[part].tolist() == y[part].tolist(), (name, part)
            np.testing.assert_allclose(y["gallery"], x["gallery"], atol=1e-4)
    single, double = _only_record(tmp_path / "zs-gzs-1"), _only_record(tmp_path / "zs-gzs-2")
    assert (double["n_queries"], double["n_evaluated"]) == (single["n_queries"], single["n_evaluated"])
    assert double["metrics"] == pytest.approx(single["metrics"], abs=1e-6) and "mAP@all/H" in single["metrics"]
    with np.load(single["embeddings"]) as a, np.load(double["embeddings"]) as b:
        for part in ("query", "gallery"):  # each rank embeds a shard; rank 0 puts them back in order
            assert a[f"{part}_paths"].tolist() == b[f"{part}_paths"].tolist()
            np.testing.assert_allclose(a[part], b[part], atol=1e-6)
    straight, resumed = _only_record(tmp_path / "splip-straight"), _only_record(tmp_path / "splip-resumed")
    assert resumed["train"]["resumed_from_epoch"] == 1 and straight["train"]["resumed_from_epoch"] == 0
    assert resumed["train"]["history"] == straight["train"]["history"]
    assert resumed["metrics"] == straight["metrics"]
    a, b = _trainable(tmp_path / "splip-straight", straight), _trainable(tmp_path / "splip-resumed", resumed)
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    unreadable = _only_record(tmp_path / "unreadable")["train"]
    assert (unreadable["skipped_steps"], unreadable["skipped_images"]) == (2, 2 * 8 // 2)  # one rank's share, once
    assert len(unreadable["history"]) == 2 and all(math.isfinite(row["loss"]) for row in unreadable["history"])


@pytest.mark.parametrize("method,extra", [
    ("linear-probe", []),                                  # the frozen-feature path real runs use
    pytest.param("splip", [], marks=pytest.mark.slow),    # its jigsaw draws come back too (whole suite)
    ("coop", ["--set", "train.grad_accum=2"]),             # accumulation: the interruption falls between micro-steps
])
def test_interrupted_mid_epoch_with_ctrl_c_then_resumed_is_bit_identical(tmp_path, method, extra, monkeypatch):
    from click.testing import CliRunner

    from sbir_bench.cli import main
    from sbir_bench.methods import get_method
    args = ["run", method, "--epochs", "2", "--batch-size", "8", "--set", "train.steps_per_epoch=3", "--set",
            "train.val_every=0", "--set", "eval.save_embeddings=false", "--quiet", *extra]
    straight = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "a")])
    assert straight.exit_code == 0, straight.output
    name = f"{method}_mini_zs_split1_seed0"
    reference = last_checkpoint(tmp_path / "a" / "checkpoints" / name)
    cls = get_method(method)
    original = cls.loss
    accum = 2 if extra else 1
    monkeypatch.setattr(cls, "loss", loss_interrupted_at(cls, 3 * accum + 2))  # the second step of epoch 2
    out = str(tmp_path / "b")
    first = CliRunner().invoke(main, [*args, "--output-dir", out])
    assert first.exit_code == 130 and "rerun the same command with --resume" in first.output, first.output
    assert last_checkpoint(tmp_path / "b" / "checkpoints" / name)["epoch"] == 1
    monkeypatch.setattr(cls, "loss", original)
    resumed = CliRunner().invoke(main, [*args, "--output-dir", out, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    final = last_checkpoint(tmp_path / "b" / "checkpoints" / name)
    assert final["epoch"] == 2
    for key, value in reference["trainable"].items():
        assert torch.equal(value, final["trainable"][key]), key
    assert [h["loss"] for h in final["history"]] == [h["loss"] for h in reference["history"]]
    a, b = (json.loads(next(p.glob("*.json")).read_text())["metrics"] for p in (tmp_path / "a", tmp_path / "b"))
    assert a == b


def test_gradient_accumulation_takes_the_step_of_the_whole_batch(tmp_path):
    """batch 8 as 1 or as 4 micro-batches: the same SGD steps (plain SGD, unlike Adam, would show a
    gradient scaled by the number of micro-batches) and the same losses, to float rounding."""
    runs = {}
    for accum in (1, 4):
        cfg = config(tmp_path / str(accum), "coop", **{"train.grad_accum": accum, "train.lr": 0.1,
                                                       "train.optimizer": "sgd", "train.val_every": 0})
        record = run(cfg)
        runs[accum] = (record, last_checkpoint(tmp_path / str(accum) / "runs" / "checkpoints" / record["run_name"]))
    (ref, ref_ckpt), (record, ckpt) = runs[1], runs[4]
    assert [h["loss"] for h in record["train"]["history"]] == pytest.approx(
        [h["loss"] for h in ref["train"]["history"]], rel=1e-4)
    torch.testing.assert_close(ckpt["trainable"]["ctx"], ref_ckpt["trainable"]["ctx"], rtol=1e-3, atol=1e-4)
    assert record["train"]["steps_done"] == ref["train"]["steps_done"] == 2 * 3


def test_global_batchnorm_equals_batchnorm_inside_a_process_group(tmp_path):
    """The all-reduce branch (a one-process gloo group here; two processes in the DDP test): output,
    input gradient and running statistics as BatchNorm1d's over the same batch."""
    import torch.distributed as dist

    from sbir_bench.training.distributed import GlobalBatchNorm1d
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    plain, ours = torch.nn.BatchNorm1d(5, eps=1e-6), GlobalBatchNorm1d(5, eps=1e-6)
    ours.load_state_dict(plain.state_dict())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        outputs = []
        for module in (plain, ours):
            xi = x.clone().requires_grad_(True)
            y = module(xi)
            (y * torch.arange(5.0)).square().sum().backward()
            outputs.append((y.detach(), xi.grad))
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-4, atol=1e-5)
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)


def test_early_stopping_counts_validations_without_a_gain_and_keeps_the_best():
    from sbir_bench.training.trainer import EarlyStopping

    class Weights:
        value = 0.0

        def trainable_state(self):
            return {"w": torch.tensor(self.value)}
    method, early = Weights(), EarlyStopping(patience=2)
    for epoch, value in enumerate([0.30, 0.50, 0.45, 0.50, 0.40], start=1):  # a tie is not a gain
        method.value = epoch
        early.update(epoch, {"mAP@all": value, "P@100": 1.0}, method)
        if early.stopped:
            break
    assert (early.best, early.best_epoch, early.stopped, epoch) == (0.50, 2, True, 4)
    assert float(early.state["w"]) == 2  # the state of the best epoch, not of the last
    again = EarlyStopping(patience=2)
    again.load(early.to_payload())  # what a checkpoint carries
    assert (again.best_epoch, again.waited, again.stopped) == (2, 2, True)
    with pytest.raises(Exception, match="early stopping needs mAP@all or Acc@1"):
        EarlyStopping(patience=1).update(1, {"P@100": 0.2}, method)


def test_early_stopping_run_keeps_and_reports_the_best_epoch_then_resumes_as_stopped(tmp_path, monkeypatch):
    """Validations scripted 0.3, 0.5, 0.4 with patience 1: training stops after epoch 3 of 8 and keeps
    epoch 2's model, which scores on the test set exactly as a straight 2-epoch run's."""
    from sbir_bench.runner import Scorer
    constant = {"train.schedule": "constant"}  # the first two epochs alike, whatever the run's length
    two = run(config(tmp_path / "two", "coop", **constant, **{"train.epochs": 2, "train.val_every": 0}))
    script = iter([{"mAP@all": v} for v in (0.3, 0.5, 0.4)])
    monkeypatch.setattr(Scorer, "validation_metrics", lambda self, task: next(script))
    early = {**constant, "train.epochs": 8, "train.val_every": 1, "train.early_stop": 1}
    record = run(config(tmp_path, "coop", **early))
    train = record["train"]
    assert (train["best_epoch"], train["stopped_early"], len(train["history"])) == (2, True, 3)
    assert record["val_metrics"] == {"mAP@all": 0.5}  # the kept model's validation, not the last epoch's
    assert record["metrics"] == two["metrics"]
    again = run(config(tmp_path, "coop", **early, **{"train.resume": True}))
    assert again.get("already_finished")  # a stopped run is finished: resume writes no second record


def test_an_epoch_whose_summary_line_was_printed_survives_a_ctrl_c_right_after_it(tmp_path, mini_root, monkeypatch):
    """The epoch line is printed once the epoch's checkpoint is written: Ctrl-C on the line keeps the epoch."""
    from click.testing import CliRunner
    from conftest import as_options

    from sbir_bench.cli import main
    from sbir_bench.training import trainer as trainer_module
    real_info = trainer_module.log.info

    def info(message, *args, **kwargs):
        real_info(message, *args, **kwargs)
        if str(message).startswith("epoch=1"):
            raise KeyboardInterrupt
    monkeypatch.setattr(trainer_module.log, "info", info)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "coop", *as_options(short_training()), "--output-dir", str(out)])
    assert result.exit_code == 130, result.output
    assert last_checkpoint(out / "checkpoints" / "coop_mini_zs_split1_seed0")["epoch"] == 1


SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
import sbir_bench.runner as runner
from sbir_bench.cli import main

def waiting(cfg, on_epoch_end=None):
    Path(sys.argv[1]).write_text("started")
    while True:
        time.sleep(0.05)

runner.run = waiting  # the command imports run from the runner when it runs
main(["run", "zeroshot-clip", "--output-dir", sys.argv[2]])
"""


@pytest.mark.slow  # the quick loop stays under 3 minutes; CI runs it (the whole suite)
def test_sigterm_ends_a_run_with_a_line_that_says_so(tmp_path):
    """A scheduler's SIGTERM unwinds the command as Ctrl-C does and says so, with exit code 143."""
    import signal
    import time
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(marker), str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # the import of torch takes seconds on a loaded machine: wait for the run itself
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); rerun the same command with --resume" in err and "Traceback" not in err


def test_progress_output_and_the_validation_schedule_never_change_a_trained_model(tmp_path, monkeypatch):
    """ProS's stage-1 dropout and SpLIP's jigsaw draw from torch's global generator. Nothing a run does not
    state may move those draws: quiet, progress lines (a log file) or a progress bar (a terminal) give one
    ProS model, validating every epoch or never (no early stopping) one SpLIP model. (tqdm.auto's bar
    opened a second iterator over the loader, and every loader iterator, the validation's too, drew its
    workers' seed from that generator: a terminal and a SLURM log gave two models of one run.)"""
    from sbir_bench import log as sblog
    from sbir_bench.runner import run
    states = {}
    for method, mode, val_every in (("pros", "quiet", 1), ("pros", "lines", 1), ("pros", "bar", 1),
                                    ("splip", "quiet", 1), ("splip", "quiet", 0)):
        sblog.set_quiet(mode == "quiet")
        monkeypatch.setattr(sys.stderr, "isatty", lambda: mode == "bar", raising=False)
        cfg = config(tmp_path / f"{method}-{mode}-{val_every}", method, **{
            "train.epochs": 2, "train.steps_per_epoch": 2, "train.batch_size": 4, "train.val_every": val_every,
            "eval.save_embeddings": False, **({"method_config.units_epochs": 1, "method_config.units_batch_size": 4}
                                              if method == "pros" else {})})
        record = run(cfg)
        states[method, mode, val_every] = _trainable(Path(record["record_path"]).parent, record)
    sblog.set_quiet(True)
    for key, state in states.items():
        reference = states[key[0], "quiet", 1]
        assert all(torch.equal(state[k], reference[k]) for k in reference), key
