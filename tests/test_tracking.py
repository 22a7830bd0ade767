"""Training curves in the trackers: what each wrote is read back through its own reader (TensorBoard's
event reader, MLflow's client on the SQLite store, W&B's offline run file, the CSV); a tracker that
fails mid-run is a warning, never a lost run; `plot --kind curves` draws from the records alone."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import as_options, newest_record, short_training

from sbir_bench.cli import main

FAST = as_options(short_training({"train.steps_per_epoch": 3, "train.val_every": 1}))
STEPS = 6


def wandb_records(path: Path):
    """The protobuf records of a W&B offline run file (a LevelDB-style log after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4: pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""
        elif kind == 0:
            buf = b""


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mini_root):
    out = tmp_path_factory.mktemp("tracked")
    result = CliRunner().invoke(main, ["run", "linear-probe", *FAST, "--report-to", "csv,tensorboard,mlflow,wandb",
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") <= 8  # --quiet: the metrics table and the record line, no tracker chatter
    return out, newest_record(out)


@pytest.fixture(scope="module")
def csv_tracked(tmp_path_factory, mini_root):
    """A short run reported to the CSV tracker alone (no tracker library: the fast set reads it back)."""
    out = tmp_path_factory.mktemp("csv")
    result = CliRunner().invoke(main, ["run", "linear-probe", *FAST, "--report-to", "csv", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return out, newest_record(out)


def test_csv_holds_every_step_term_validation_and_test_metric(csv_tracked):
    out, record = csv_tracked
    with open(record["tracking"]["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    names = {r["name"] for r in rows}
    assert {"train/loss", "train/cls", "train/triplet", "train/lr", "train/grad_norm", "train/images_per_s",
            "val/mAP@all", "test/mAP@all"} <= names
    losses = [float(r["value"]) for r in rows if r["name"] == "train/loss"]
    assert len(losses) == STEPS
    assert float(next(r["value"] for r in rows if r["name"] == "test/mAP@all")) == pytest.approx(
        record["metrics"]["mAP@all"])


@pytest.mark.slow  # one training run reported to all four trackers (their imports: ~10 s)
def test_tensorboard_scalars_read_back(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, record = tracked
    acc = EventAccumulator(record["tracking"]["tensorboard"])
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert acc.Scalars("test/mAP@all")[0].value == pytest.approx(record["metrics"]["mAP@all"], abs=1e-6)
    assert len(acc.Scalars("val/mAP@all")) == 2


@pytest.mark.slow  # one training run reported to all four trackers (their imports: ~10 s)
def test_mlflow_run_in_the_local_sqlite_store_names_thenewest_record(tracked):
    from mlflow.tracking import MlflowClient
    out, record = tracked
    where = record["tracking"]["mlflow"]
    assert where["tracking_uri"] == f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=where["tracking_uri"])
    run = client.get_run(where["run_id"])
    assert run.data.tags["sbir_bench.run_id"] == record["run_id"] and run.info.run_name == record["run_id"]
    assert run.data.params["train.lr"] == str(record["config"]["train"]["lr"])
    history = client.get_metric_history(where["run_id"], "train/loss")
    assert len(history) == STEPS
    assert run.data.metrics["test/mAP_at_all"] == pytest.approx(record["metrics"]["mAP@all"])


@pytest.mark.slow  # one training run reported to all four trackers (their imports: ~10 s)
def test_wandb_offline_run_file_holds_the_curves(tracked):
    out, record = tracked
    (path,) = Path(record["tracking"]["wandb"]["dir"]).parent.glob("run-*.wandb")
    keys, steps = set(), 0
    for rec in wandb_records(path):
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key) for i in rec.history.item}
            keys |= items
            steps += "train/loss" in items
        if rec.WhichOneof("record_type") == "run":
            assert rec.run.display_name == record["run_id"]
    assert steps == STEPS and {"train/loss", "val/mAP@all", "test/mAP@all"} <= keys


def test_a_failing_tracker_is_a_warning_never_a_lost_run(tmp_path, mini_root, monkeypatch):
    from sbir_bench import tracking

    def disk_full(self, values, step):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tracking.CsvTracker, "log", disk_full)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "linear-probe", *FAST[:-1], "--report-to", "csv", "--output-dir",
                                       str(out)])
    assert result.exit_code == 0, result.output
    assert "tracker csv failed (OSError" in result.output and "goes on without it" in result.output
    assert newest_record(out)["metrics"]["mAP@all"] > 0


@pytest.mark.parametrize("report_to,fragment", [("tensorboard,nosuch", "unknown tracker 'nosuch'"),
                                                ("mlflow", "pip install 'sbir-bench[track]'")])
def test_a_tracker_that_cannot_be_used_is_one_line_before_any_work(report_to, fragment, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = CliRunner().invoke(main, ["run", "coop", "--report-to", report_to, "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and fragment in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # four training runs
def test_plot_curves_from_records_with_seeds_as_bands(tmp_path, mini_root):
    out = tmp_path / "runs"
    for seed in ("0", "1"):
        for variant in ([], ["--variant", "wd"]):
            args = ["run", "linear-probe", *FAST, "--seed", seed, "--output-dir", str(out), *variant]
            if variant:
                args += ["--set", "train.weight_decay=0.1"]
            assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, ["plot", "--results-dir", str(out), "--kind", "curves", "--output-dir",
                                       str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["curves_mini_split1_zs.pdf",
                                                                   "curves_mini_split1_zs.png"]
    from sbir_bench.reporting.collect import runs_frame
    from sbir_bench.reporting.plots import curve_series
    series = curve_series(runs_frame([], out))
    assert set(series) == {"linear-probe", "linear-probe [wd]"}
    epochs, mean, low, high = series["linear-probe"]["loss"]
    assert list(epochs) == [1, 2] and all(lo <= m <= hi for lo, m, hi in zip(low, mean, high))


def test_plot_curves_leaves_out_a_damaged_history_with_a_warning(tmp_path, caplog):
    """docs/errors.md: a record whose training history is damaged is skipped with a warning; the others draw."""
    import json

    from test_reporting import make_record
    out = tmp_path / "runs"
    good = make_record(out, "coop", 0, {"mAP@all": 0.5}, dataset="mini")
    bad = make_record(out, "splip", 0, {"mAP@all": 0.6}, dataset="mini")
    for path, history in ((good, [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]),
                          (bad, [{"loss": 1.0}, "not a row", {"epoch": "one", "loss": 3.0}])):
        record = json.loads(path.read_text())
        record["train"] = {"history": history}
        path.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["plot", "--results-dir", str(out), "--kind", "curves", "--output-dir",
                                       str(tmp_path / "fig")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "training history is damaged" in result.output + caplog.text
    assert (tmp_path / "fig" / "curves_mini_split1_zs.png").is_file()


def test_a_plug_in_tracker_is_one_registered_class(tmp_path, monkeypatch, mini_root):
    """A tracker is a registry entry like a method or a dataset: one class, and --report-to finds it."""
    from sbir_bench.plugins import TRACKERS
    from sbir_bench.tracking import Tracker
    seen = []

    class ListTracker(Tracker):
        def __init__(self, folder, run_id, config, uri) -> None:
            self.run_id = run_id

        def log(self, values, step) -> None:
            seen.append((step, dict(values)))

        def finish(self):
            return {"list": {"run_id": self.run_id, "values": len(seen)}}
    TRACKERS.names()  # the built-ins loaded first, as a plug-in's entry point would find them
    monkeypatch.setitem(TRACKERS._items, "list", ListTracker)
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "zeroshot-clip", "--report-to", "list", "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = newest_record(out)
    assert record["tracking"]["list"] == {"run_id": record["run_id"], "values": 1}
    assert seen[0][1]["test/mAP@all"] == pytest.approx(record["metrics"]["mAP@all"])
